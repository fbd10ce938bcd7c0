"""Does the int8 model say what the fake-quantized QAT model says? Max |Δlogit| and accuracy on a GLUE dev set.

    python benchmarks/int8_agreement.py --checkpoint CKPT [--task sst2] [--out FILE]
    python benchmarks/int8_agreement.py --train-examples 8000 [--seed 0] [--task sst2] [--out ...]
    add --compiled to score the compiled, autotuned route too (minutes of compiling)

CKPT is a Q8BERT QAT model kept by ``run_glue(..., method="qat", checkpoint_dir=...)`` (bit-packed, with its EMA input
ranges; the protocol keeps SST-2's: ``runs/checkpoints/q8bert/sst2/qat-seed<N>.safetensors``); with ``--train-examples
N`` the script first trains one itself (``run_glue``, QAT, N training examples, 1 epoch) and records that run in its
report. It loads the model into a Q8BERT-converted model, exports it with ``qlib.deploy.int8.to_int8`` and runs both on
the whole dev set on the CPU: the issue's target is accuracy equal within 0.2 points. It also runs the export's other
routes on the same model (``ROUTES``): 7-bit inputs and 7-bit weights per output channel (the routes CPUs without VNNI
can take; target 0.5 points) and attention products in bf16 (target 0.2 points); each route's scores, gap and logit
differences are reported under ``routes``. With ``--integer-nonlinearities`` the model is trained (or loaded) with
I-BERT's integer GELU, softmax and LayerNorm, which the export runs between its int8 GEMMs; a route the export refuses
for such a model (bf16 attention: the integer softmax takes float32 scores) is reported as skipped with why. With
``--weight-bits 7`` the QAT model has 7-bit weights (``q8bert_config(weight_bits=7)``): the model for CPUs whose int8
kernels saturate with two 8-bit operands (AVX2), where its 7-bit-weight route is its own arithmetic. With
``--compiled`` it also scores ``COMPILED_ROUTES``, the speed benchmark's fastest route (``to_int8(..., compile=True,
autotune=True)``, attention in ``native_attention_dtype()``): Inductor compiles one graph per input shape, so that route
and the fake-quantized model it is compared with both see the dev set padded to ``--max-length`` tokens (a batch shape
or two, not one per batch)."""

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
from transformers import DataCollatorWithPadding  # noqa: E402

from qlib import convert_bert  # noqa: E402
from qlib.deploy.checkpoint import load_quantized  # noqa: E402
from qlib.deploy.int8 import CodeWidths, native_attention_dtype, to_int8  # noqa: E402
from qlib.experiments.data import file_sha256, get_task, glue_provenance, load_glue, loader, tokenize  # noqa: E402
from qlib.experiments.experiment import run_glue  # noqa: E402
from qlib.experiments.metrics import glue_metrics  # noqa: E402
from qlib.experiments.models import DEFAULT_MODEL, load_classifier  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.spec import QAT_WEIGHT_BITS, RunSpec  # noqa: E402

TARGET_POINTS = 0.2
ROUTES = {  # name: (to_int8 keyword arguments, target in points)
    "int8": ({}, TARGET_POINTS),
    "int8_7bit_inputs": ({"widths": CodeWidths(inputs=7)}, 0.5),
    "int8_7bit_weights": ({"widths": CodeWidths(weights=7)}, 0.5),
    "int8_bf16_attention": ({"attention_dtype": torch.bfloat16}, TARGET_POINTS),
}
COMPILED_ROUTES = {  # with --compiled, scored on batches padded to --max-length
    "int8_compiled_autotuned": ({"compile": True, "autotune": True, "attention_dtype": native_attention_dtype()},
                                TARGET_POINTS),
}


def add_dev_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every dev-set agreement benchmark takes: the task, the model, the tokens per input, the threads
    and the result file."""
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per input (the padded length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)


def load_fake_quantized(checkpoint: Path, spec: RunSpec, model: str, max_length: int):
    """The Q8BERT QAT model of ``spec`` loaded from its packed ``checkpoint`` (eval mode), its tokenizer and the task's
    dev set tokenized to ``max_length``."""
    fake, tokenizer = load_classifier(model, get_task(spec.task).num_labels)
    load_quantized(convert_bert(fake, spec.quant_config()), checkpoint).eval()
    return fake, tokenizer, tokenize(load_glue(spec.task, "dev"), tokenizer, spec.task, max_length)


@torch.inference_mode()
def logits_over(model: torch.nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, labels = [], []
    for batch in batches:
        outputs.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float())
        labels.append(batch["labels"])
    return torch.cat(outputs), torch.cat(labels)


def score_routes(fake: torch.nn.Module, routes: dict, batches, task: str) -> tuple[dict, int, dict]:
    """The fake-quantized model's dev scores on ``batches``, how many examples, and per route of ``routes`` (name:
    ``(to_int8 options, target in points)``) its scores, its gap to the fake-quantized model's main metric and the
    logits' differences, or why it was skipped."""
    fake_logits, labels = logits_over(fake, batches)
    fake_score = glue_metrics(task, fake_logits.argmax(-1).numpy(), labels.numpy())
    scored = {}
    for name, (options, target) in routes.items():
        try:
            real_logits, _ = logits_over(to_int8(fake, **options), batches)
        except (RuntimeError, ValueError) as err:  # a route this CPU cannot run exactly (8-bit inputs without
            scored[name] = {"skipped": str(err)}  # VNNI), or one the model refuses (bf16 scores, integer softmax)
            continue
        scored[name] = compared(real_logits, fake_logits, labels, task) | {
            "target_points": target, "options": {k: str(v) for k, v in options.items()}}
    return fake_score, len(labels), scored


def compared(logits: torch.Tensor, fake_logits: torch.Tensor, labels: torch.Tensor, task: str) -> dict:
    """One route's dev ``logits`` [N, classes] against the fake-quantized model's: its scores, the gap of its main
    metric in points, how far the logits move and how often the predicted class is the same."""
    metric = get_task(task).metrics[0]
    score = glue_metrics(task, logits.argmax(-1).numpy(), labels.numpy())
    fake_score = glue_metrics(task, fake_logits.argmax(-1).numpy(), labels.numpy())
    return {"scores": score, "gap_points": 100 * abs(score[metric] - fake_score[metric]),
            "max_abs_logit_diff": float((logits - fake_logits).abs().max()),
            "mean_abs_logit_diff": float((logits - fake_logits).abs().mean()),
            "same_prediction": float((logits.argmax(-1) == fake_logits.argmax(-1)).float().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a packed Q8BERT QAT checkpoint")
    source.add_argument("--train-examples", type=int, help="train a QAT model on this many examples first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --train-examples run")
    parser.add_argument("--weight-bits", type=int, choices=QAT_WEIGHT_BITS, default=8,
                        help="the QAT model's weight bits: 8 (Q8BERT) or 7 (trained for CPUs without VNNI, AVX2)")
    parser.add_argument("--integer-nonlinearities", action="store_true",
                        help="the QAT model computes GELU, softmax and LayerNorm with I-BERT's integer kernels")
    parser.add_argument("--compiled", action="store_true",
                        help="also score the compiled, autotuned route (COMPILED_ROUTES), on padded batches")
    add_dev_set_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or benchmark_path(f"int8_agreement-{args.task}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = get_task(args.task)
    folder = tempfile.TemporaryDirectory()
    checkpoint, trained = args.checkpoint, None
    spec = RunSpec(info.name, "qat", args.seed, weight_bits=args.weight_bits,
                   integer_nonlinearities=args.integer_nonlinearities)
    if args.train_examples is not None:
        trained = run_glue(info.name, "qat", args.seed, args.model, epochs=1, max_train_examples=args.train_examples,
                           weight_bits=args.weight_bits, integer_nonlinearities=args.integer_nonlinearities,
                           results_dir=folder.name, checkpoint_dir=folder.name, device="cpu", progress=False)[0]
        checkpoint = Path(folder.name) / info.name / f"{spec.label}-seed{args.seed}.safetensors"
    fake, tokenizer, encoded = load_fake_quantized(checkpoint, spec, args.model, args.max_length)
    metric = info.metrics[0]
    fake_score, examples, routes = score_routes(fake, ROUTES, loader(encoded, tokenizer, 64, shuffle=False), info.name)
    if args.compiled:
        padded = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=args.max_length)
        fake_padded, _, compiled = score_routes(fake, COMPILED_ROUTES, loader(encoded, tokenizer, 64, shuffle=False,
                                                                              collator=padded), info.name)
        routes |= {name: route | {"batches": f"padded to {args.max_length} tokens", "fake_quant_scores": fake_padded}
                   for name, route in compiled.items()}
    # the route to_int8 takes by default on this CPU (qlib.deploy.int8.WIDTHS' order)
    main_route = next(routes[n] for n in ("int8", "int8_7bit_weights", "int8_7bit_inputs") if "scores" in routes[n])
    gap = main_route["gap_points"]
    # The checkpoint by its file name and its bytes' SHA-256, which identify the model on any machine (its path names
    # this machine's folders only).
    kept = {"checkpoint": args.checkpoint.name, "checkpoint_sha256": file_sha256(args.checkpoint)} \
        if args.checkpoint else {"checkpoint": "trained by this run"}
    report = {
        "task": info.name, **kept, "examples": examples,
        "nonlinearities": "integer (I-BERT)" if args.integer_nonlinearities else "float",
        "weight_bits": args.weight_bits,
        "metric": metric, "trained": trained,
        "scores": {"fake_quant": fake_score, "int8": main_route["scores"]}, "gap_points": gap,
        "target_points": main_route["target_points"],
        **{k: main_route[k] for k in ("max_abs_logit_diff", "mean_abs_logit_diff", "same_prediction")},
        "routes": routes,
        "params": vars(args) | {"checkpoint": kept["checkpoint"], "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=glue_provenance(info.name, ("dev",))),
    }
    folder.cleanup()
    write_json(out, report)
    for name, route in routes.items():
        if "skipped" in route:
            print(f"{name}: skipped: {route['skipped']}")
            continue
        fake = route.get("fake_quant_scores", fake_score)  # a compiled route's: on its padded batches
        print(f"{info.name} dev ({examples} examples), {name}: fake-quant {metric} "
              f"{100 * fake[metric]:.2f}, int8 {100 * route['scores'][metric]:.2f}: "
              f"gap {route['gap_points']:.2f} points "
              f"({'meets' if route['gap_points'] <= route['target_points'] else 'MISSES'} the "
              f"{route['target_points']}-point target); max |Δlogit| {route['max_abs_logit_diff']:.4f}, "
              f"same prediction {route['same_prediction']:.2%}; batches {route.get('batches', 'padded per batch')}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
