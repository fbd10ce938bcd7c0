"""What the speed benchmark's peers cost in accuracy: each post-training int8 and bf16 peer of ``int8_cpu.py`` applied
to a task's fine-tuned FP32 model, scored on the whole dev set beside that FP32 model.

    python benchmarks/peer_accuracy.py --checkpoint runs/checkpoints/qbert/sst2/fp32-seed0.safetensors [--task sst2]

CKPT is an FP32 model kept by a Baseline run (``qlib.deploy.checkpoint.save_float``; the protocol keeps Q-BERT's:
``runs/checkpoints/qbert/<task>/fp32-seed<N>.safetensors``, the model Q8BERT's FP32 and DQ rows of that seed score).
The peers (``PEERS``) are built exactly as the speed benchmark builds them (``int8_cpu.VARIANTS``), and ONNX Runtime's
static int8 also with its default op types (``ort_qdq_static_all_ops``, not timed by the speed benchmark); those that
calibrate (ONNX Runtime static QDQ, PT2E, OpenVINO int8 by NNCF) see ``--calibration-batches`` batches of 32 training
examples, a seeded random draw (NNCF's default subset is 300 examples). Every batch is padded to ``--max-length``
tokens, so a compiled peer compiles once. A peer that cannot run here is reported as skipped with why. qbook's own
int8 route is scored against its QAT model by ``int8_agreement.py``; the speed chapter puts both beside the latencies.
Accuracy only: no timing, so a busy CPU changes nothing but the wall time."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_agreement import add_dev_set_arguments, compared  # noqa: E402
from int8_cpu import VARIANTS, Setup, logits_of, ort_static, variants  # noqa: E402

sys.path.pop(0)
from qlib.deploy.checkpoint import load_float  # noqa: E402
from qlib.experiments.data import file_sha256, get_task, glue_provenance, load_glue, loader, tokenize  # noqa: E402
from qlib.experiments.metrics import glue_metrics  # noqa: E402
from qlib.experiments.models import load_classifier  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402

PEERS = ("ao_dynamic", "ort_int8", "ort_qdq_static", "ort_qdq_static_all_ops", "pt2e_inductor", "openvino_int8",
         "torch_bf16", "openvino_bf16")
CALIBRATION_BATCH = 32


def ort_qdq_static_all_ops(setup: Setup) -> Callable:
    """ONNX Runtime's static int8 with its default op types (every op it can quantize, the attention mask's path
    too): not a speed peer, scored here to show what the speed benchmark's ``ort_qdq_static`` (GEMMs only) avoids."""
    return ort_static(setup, None, "model.qdq-all-ops.onnx")


BUILDERS = VARIANTS | {"ort_qdq_static_all_ops": ort_qdq_static_all_ops}


@torch.inference_mode()
def peer_logits(forward, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``forward``'s logits over ``batches`` (inputs only), concatenated in order."""
    return torch.cat([logits_of(forward(batch)) for batch in batches])


def padded_batches(encoded, tokenizer, max_length: int, batch_size: int) -> tuple[list[dict], torch.Tensor]:
    """``encoded`` in its order as batches of model inputs padded to ``max_length`` tokens, and the labels."""
    collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    batches = [dict(b) for b in loader(encoded, tokenizer, batch_size, shuffle=False, collator=collator)]
    labels = torch.cat([b.pop("labels") for b in batches])
    return batches, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a fine-tuned FP32 model (save_float)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="draws the calibration examples")
    add_dev_set_arguments(parser)
    args = parser.parse_args(argv)
    peers = args.peers.split(",")
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; allowed: {list(PEERS)}")
    if args.calibration_batches < 1:
        parser.error(f"--calibration-batches must be at least 1, got {args.calibration_batches}")
    out = args.out or benchmark_path(f"peer_accuracy-{args.task}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = get_task(args.task)
    model, tokenizer = load_classifier(args.model, info.num_labels)
    load_float(model, args.checkpoint).eval()
    dev, labels = padded_batches(tokenize(load_glue(info.name, "dev"), tokenizer, info.name, args.max_length),
                                 tokenizer, args.max_length, 64)
    train = load_glue(info.name, "train", max_examples=args.calibration_batches * CALIBRATION_BATCH, seed=args.seed)
    calibration, _ = padded_batches(tokenize(train, tokenizer, info.name, args.max_length), tokenizer,
                                    args.max_length, CALIBRATION_BATCH)
    fp32 = peer_logits(lambda b: model(**b), dev)
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(model, dev[0], Path(folder), calibration=calibration)
        built, skipped = variants(setup, peers, BUILDERS)
        scored: dict[str, dict] = {name: {"skipped": why} for name, why in skipped.items()}
        for name, forward in built.items():
            scored[name] = compared(peer_logits(forward, dev), fp32, labels, info.name)
    metric = info.metrics[0]
    report = {
        "task": info.name, "checkpoint": args.checkpoint.name, "checkpoint_sha256": file_sha256(args.checkpoint),
        "examples": len(labels), "metric": metric,
        "fp32_scores": glue_metrics(info.name, fp32.argmax(-1).numpy(), labels.numpy()),
        "peers": {name: scored[name] for name in peers}, "settings": setup.settings,
        "params": vars(args) | {"checkpoint": args.checkpoint.name, "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=glue_provenance(info.name, ("train", "dev"))),
    }
    write_json(out, report)
    print(f"{info.name} dev ({len(labels)} examples), FP32 {metric} {100 * report['fp32_scores'][metric]:.2f}")
    for name, peer in report["peers"].items():
        print(f"  {name}: skipped: {peer['skipped']}" if "skipped" in peer else
              f"  {name}: {metric} {100 * peer['scores'][metric]:.2f} "
              f"({100 * (peer['scores'][metric] - report['fp32_scores'][metric]):+.2f} points), "
              f"same prediction {peer['same_prediction']:.2%}, max |Δlogit| {peer['max_abs_logit_diff']:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
