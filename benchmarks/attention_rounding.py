"""Which rounding in the attention products moves the int8 model away from the fake-quantized one, and by how much?

    python benchmarks/attention_rounding.py --checkpoint CKPT [--task sst2] [--out FILE]

The int8 export keeps the attention products, Q·Kᵀ and P·V (P = softmax of the scaled, masked scores), in float32
by default: the fake-quantized model's arithmetic. Running them in bf16 (``to_int8(..., attention_dtype=bfloat16)``)
is faster on AMX and AVX-512 BF16 CPUs but misses the export's 0.2-point accuracy target on SST-2 dev
(``benchmarks/int8_agreement.py``). This benchmark asks why, and whether another split would keep it: it exports the
QAT model ``CKPT`` (a packed Q8BERT SST-2 QAT checkpoint, as for ``int8_agreement.py``) with float32 attention and
swaps its attention function for one that rounds the *inputs* of each product (Q and K; P and V) to a chosen format
and multiplies them exactly in float32 (``ROUNDINGS``, ``qlib.experiments.speed.ATTENTION_ROUNDINGS``):

* ``float32``: no rounding (the export's own route);
* ``bfloat16``: each input rounded to bf16, as a bf16 kernel reads it (its float32 sums and output kept: what a bf16
  GEMM writing float32 would give, and no worse than one writing bf16);
* ``int8``: each input on a symmetric 8-bit grid with the tensor's own largest |value| (dynamic, per tensor; P, which
  is never negative, on 255 steps of [0, max P]), as an int8 attention kernel without trained attention scales reads it.

Every pair (Q·Kᵀ rounding, P·V rounding) is scored on the whole dev set against the fake-quantized model: accuracy,
its gap in points, prediction flips and |Δlogit|. Where the CPU computes bf16 natively the export's real bf16 route
(bf16 GEMM outputs, SDPA or eager attention as ``to_int8`` picks) is scored beside them. Accuracy only, on one
model: no timing. The result names the CPU class (the float32 sums' order is the CPU's)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, eager_mask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_agreement import TARGET_POINTS, add_dev_set_arguments, compared, load_fake_quantized, logits_over  # noqa: E402

sys.path.pop(0)
from qlib.bert.convert import find_bert  # noqa: E402
from qlib.common.cpu import has_bf16  # noqa: E402
from qlib.deploy.int8 import to_int8  # noqa: E402
from qlib.experiments.data import file_sha256, get_task, glue_provenance, loader  # noqa: E402
from qlib.experiments.metrics import glue_metrics  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.spec import RunSpec  # noqa: E402
from qlib.experiments.speed import ATTENTION_ROUNDINGS as ROUNDINGS  # noqa: E402


def rounded(x: torch.Tensor, rounding: str, nonnegative: bool = False) -> torch.Tensor:
    """``x`` as a kernel reading it in ``rounding`` sees it, back in float32: unchanged, rounded to bf16, or
    ``s·round(x / s)`` with ``s = max|x| / 127`` (``/ 255`` for a ``nonnegative`` tensor: uint8 codes)."""
    if rounding == "float32":
        return x
    if rounding == "bfloat16":
        return x.to(torch.bfloat16).to(x.dtype)
    if rounding == "int8":
        scale = x.abs().amax().clamp_min(torch.finfo(x.dtype).tiny) / (255 if nonnegative else 127)
        return torch.round(x / scale) * scale
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def rounding_attention(scores_rounding: str, values_rounding: str):
    """An attention function in transformers' interface: ``softmax(round(Q)·round(K)ᵀ·scale + mask)``, then
    ``round(P)·round(V)``, products and softmax in float32. Q, K, V [B, H, T, d]; mask additive [B, 1, T, T];
    returns ([B, T, H, d], None)."""

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        scores = rounded(query, scores_rounding) @ rounded(key, scores_rounding).transpose(-1, -2) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = scores.softmax(-1)
        output = rounded(weights, values_rounding, nonnegative=True) @ rounded(value, values_rounding)
        return output.transpose(1, 2).contiguous(), None

    return attention


def route_name(scores_rounding: str, values_rounding: str) -> str:
    return f"QK:{scores_rounding} PV:{values_rounding}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a packed Q8BERT QAT checkpoint")
    add_dev_set_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or benchmark_path(f"attention_rounding-{args.task}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    spec = RunSpec(args.task, "qat")
    fake, tokenizer, encoded = load_fake_quantized(args.checkpoint, spec, args.model, args.max_length)
    batches = list(loader(encoded, tokenizer, 64, shuffle=False))
    fake_logits, labels = logits_over(fake, batches)
    int8 = to_int8(fake)
    routes = {}
    for scores_rounding in ROUNDINGS:
        for values_rounding in ROUNDINGS:
            name = route_name(scores_rounding, values_rounding)
            AttentionInterface.register(name, rounding_attention(scores_rounding, values_rounding))
            AttentionMaskInterface.register(name, eager_mask)  # the additive float mask the function adds
            find_bert(int8).set_attn_implementation(name)
            routes[name] = compared(logits_over(int8, batches)[0], fake_logits, labels, spec.task) | {
                "scores_inputs": scores_rounding, "values_inputs": values_rounding}
    if has_bf16():
        native = to_int8(fake, attention_dtype=torch.bfloat16)
        routes["native bf16 (to_int8)"] = compared(logits_over(native, batches)[0], fake_logits, labels, spec.task)
    else:
        routes["native bf16 (to_int8)"] = {"skipped": "this CPU has no native bf16 (AVX-512 BF16 or AMX)"}
    report = {
        "task": spec.task, "checkpoint": args.checkpoint.name, "checkpoint_sha256": file_sha256(args.checkpoint),
        "examples": len(labels), "metric": get_task(spec.task).metrics[0],
        "fake_quant_scores": glue_metrics(spec.task, fake_logits.argmax(-1).numpy(), labels.numpy()),
        "target_points": TARGET_POINTS, "routes": routes,
        "params": vars(args) | {"checkpoint": args.checkpoint.name, "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=glue_provenance(spec.task, ("dev",))),
    }
    write_json(out, report)
    for name, route in routes.items():
        if "skipped" in route:
            print(f"{name}: skipped: {route['skipped']}")
            continue
        print(f"{name:28s} gap {route['gap_points']:.2f} points, flips {1 - route['same_prediction']:.2%}, "
              f"mean |Δlogit| {route['mean_abs_logit_diff']:.4f}, max {route['max_abs_logit_diff']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
