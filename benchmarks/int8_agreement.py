"""Does the int8 model say what the fake-quantized QAT model says? Max |Δlogit| and accuracy on a GLUE dev set.

    python benchmarks/int8_agreement.py --checkpoint CKPT [--task sst2] [--out FILE]
    python benchmarks/int8_agreement.py --train-examples 8000 [--seed 0] [--task sst2] [--out ...]

CKPT is a Q8BERT QAT model kept by ``run_glue(..., method="qat", checkpoint_dir=...)`` (bit-packed, with its EMA
input ranges); with ``--train-examples N`` the script first trains one itself (``run_glue``, QAT, N training
examples, 1 epoch) and records that run in its report. It loads the model into a Q8BERT-converted model, exports it
with ``qlib.int8.to_int8`` and runs both on the whole dev set on the CPU: the issue's target is accuracy equal
within 0.2 points.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from qlib import convert_bert, q8bert_config  # noqa: E402
from qlib.checkpoint import load_quantized  # noqa: E402
from qlib.data import get_task, glue_batches, glue_provenance  # noqa: E402
from qlib.experiment import run_glue  # noqa: E402
from qlib.int8 import to_int8  # noqa: E402
from qlib.metrics import glue_metrics  # noqa: E402
from qlib.models import DEFAULT_MODEL, load_classifier  # noqa: E402
from qlib.results import provenance, write_json  # noqa: E402

TARGET_POINTS = 0.2


@torch.inference_mode()
def logits_over(model: torch.nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, labels = [], []
    for batch in batches:
        outputs.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float())
        labels.append(batch["labels"])
    return torch.cat(outputs), torch.cat(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a packed Q8BERT QAT checkpoint")
    source.add_argument("--train-examples", type=int, help="train a QAT model on this many examples first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --train-examples run")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(f"results/benchmarks/int8_agreement-{args.task}.json")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = get_task(args.task)
    folder = tempfile.TemporaryDirectory()
    checkpoint, trained = args.checkpoint, None
    if args.train_examples is not None:
        trained = run_glue(info.name, "qat", args.seed, args.model, epochs=1, max_train_examples=args.train_examples,
                           results_dir=folder.name, checkpoint_dir=folder.name, device="cpu", progress=False)[0]
        checkpoint = Path(folder.name) / info.name / f"qat-seed{args.seed}.safetensors"
    fake, tokenizer = load_classifier(args.model, info.num_labels)
    load_quantized(convert_bert(fake, q8bert_config()), checkpoint).eval()
    real = to_int8(fake)
    batches = glue_batches(info.name, tokenizer, "dev", 64, 128)
    fake_logits, labels = logits_over(fake, batches)
    real_logits, _ = logits_over(real, batches)
    scores = {name: glue_metrics(info.name, logits.argmax(-1).numpy(), labels.numpy())
              for name, logits in (("fake_quant", fake_logits), ("int8", real_logits))}
    metric = info.metrics[0]
    gap = 100 * abs(scores["int8"][metric] - scores["fake_quant"][metric])
    report = {
        "task": info.name, "checkpoint": str(args.checkpoint or "trained by this run"), "examples": len(labels),
        "metric": metric, "trained": trained,
        "scores": scores, "gap_points": gap, "target_points": TARGET_POINTS,
        "max_abs_logit_diff": float((real_logits - fake_logits).abs().max()),
        "mean_abs_logit_diff": float((real_logits - fake_logits).abs().mean()),
        "same_prediction": float((real_logits.argmax(-1) == fake_logits.argmax(-1)).float().mean()),
        "params": vars(args) | {"checkpoint": str(args.checkpoint), "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=glue_provenance(info.name, ("dev",))),
    }
    folder.cleanup()
    write_json(out, report)
    print(f"{info.name} dev ({len(labels)} examples): fake-quant {metric} {100 * scores['fake_quant'][metric]:.2f}, "
          f"int8 {100 * scores['int8'][metric]:.2f}: gap {gap:.2f} points "
          f"({'meets' if gap <= TARGET_POINTS else 'MISSES'} the {TARGET_POINTS}-point target); "
          f"max |Δlogit| {report['max_abs_logit_diff']:.4f}, same prediction {report['same_prediction']:.2%}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
