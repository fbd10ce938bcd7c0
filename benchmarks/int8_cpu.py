"""BERT inference latency on this CPU: qbook int8 against FP32 eager and the int8/bf16 engines a user would try.

Variants: FP32 eager; torch.ao dynamic int8; ONNX Runtime dynamic int8; torch bf16 weights (CPUs with AVX-512
BF16 or AMX); OpenVINO bf16 and OpenVINO int8 (NNCF post-training quantization, calibrated on a few batches of the
same inputs; OpenVINO's own default inference precision, recorded); qbook int8.

    python benchmarks/int8_cpu.py [--threads 2] [--repeats 7] [--out results/benchmarks/int8_cpu.json]

All variants run in one process, interleaved (one forward of each in turn, ``repeats`` rounds after warm-up),
on the BERT-base shape (random weights: speed does not depend on them) and on the packaged model, at batch 1
and 8, sequence 128; then, on the packaged model, over a grid of batch sizes and sequence lengths (the
speed-up's dependence on the GEMM sizes). Prints each median and the ratios against the issue's targets; writes
the measurements with provenance. A variant that cannot run here (a peer not installed: ``pip install -e
".[bench]"``; a CPU without VNNI for qbook int8, without bf16 for the bf16 rows) is reported as skipped with its
reason, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from qlib import convert_bert, q8bert_config  # noqa: E402
from qlib.checkpoint import save_float, save_quantized  # noqa: E402
from qlib.int8 import cpu_has_vnni, to_int8  # noqa: E402
from qlib.models import DEFAULT_MODEL, load_classifier  # noqa: E402
from qlib.results import provenance, write_json  # noqa: E402

TARGETS = {"fp32": 3.7, "ao_dynamic": 1.15, "ort_int8": 1.25}  # qbook int8 speedup wanted over each


def bert_base() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2)).eval()


def packaged() -> BertForSequenceClassification:
    return load_classifier(DEFAULT_MODEL, num_labels=2)[0].eval()


def inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, 30000, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def qbook_int8(model: torch.nn.Module, example: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Q8BERT conversion, EMA ranges set by a few training-mode forwards (as QAT leaves them), int8 export."""
    fake = convert_bert(copy.deepcopy(model), q8bert_config())
    fake.train()
    with torch.no_grad():
        for _ in range(3):
            fake(**example)
    return to_int8(fake.eval()), fake


def ort_int8(model: torch.nn.Module, example: dict[str, torch.Tensor], folder: Path) -> Callable:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = folder / "model.onnx", folder / "model.int8.onnx"
    torch.onnx.export(model, (), str(fp32_path), kwargs=example, input_names=list(example), output_names=["logits"],
                      dynamic_axes={k: {0: "batch", 1: "seq"} for k in example}, dynamo=False)
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    session = ort_session(int8_path)
    return lambda batch: session.run(None, {k: v.numpy() for k, v in batch.items()})


def ort_session(path: Path, profile_prefix: Path | None = None):
    """An ONNX Runtime CPU session with the benchmark's threads; with ``profile_prefix``, its own profiler on."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, str(profile_prefix)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 rows mean something."""
    from qlib.results import cpu_features

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def openvino_model(model: torch.nn.Module, example: dict[str, torch.Tensor], precision: str,
                   calibration: list[dict[str, torch.Tensor]] | None = None) -> tuple[Callable, str]:
    """``model`` converted to OpenVINO (``ov.convert_model``), int8 by NNCF post-training quantization on
    ``calibration`` batches when given, compiled for the CPU with the benchmark's threads at inference precision
    ``precision`` ("bf16", or "" for OpenVINO's default); returns the forward and the precision it ran at."""
    import openvino as ov

    ov_model = ov.convert_model(model, example_input=example)
    if calibration is not None:
        import nncf

        ov_model = nncf.quantize(ov_model, nncf.Dataset([{k: v.numpy() for k, v in b.items()} for b in calibration]),
                                 model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()} | (
        {"INFERENCE_PRECISION_HINT": precision} if precision else {})
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    return (lambda batch: request.infer({k: v.numpy() for k, v in batch.items()}),
            compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())


CALIBRATION = ((2, 128), (3, 64), (4, 96), (6, 128))  # NNCF's calibration inputs: none of them is timed


def variants(model: torch.nn.Module, example, folder: Path) -> tuple[dict[str, Callable], dict[str, str], dict, dict]:
    """(forward per variant, skipped variants with why, checkpoint sizes in bytes, engine settings recorded)."""
    runs: dict[str, Callable] = {"fp32": lambda b: model(**b)}
    skipped: dict[str, str] = {}
    settings: dict[str, str] = {}
    sizes: dict[str, int] = {"fp32_safetensors": save_float(model, folder / "fp32.safetensors").stat().st_size}
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    runs["ao_dynamic"] = lambda b: dynamic(**b)
    try:
        runs["ort_int8"] = ort_int8(model, example, folder)
    except ImportError as err:
        skipped["ort_int8"] = f"onnxruntime not installed ({err}); pip install onnxruntime onnx"
    if has_bf16():
        half = copy.deepcopy(model).to(torch.bfloat16)
        runs["torch_bf16"] = lambda b: half(**b)
    else:
        skipped["torch_bf16"] = skipped["openvino_bf16"] = "this CPU has neither AVX-512 BF16 nor AMX"
    try:
        calibration = [inputs(b, s) for b, s in CALIBRATION]
        runs["openvino_int8"], settings["openvino_int8_precision"] = openvino_model(model, example, "", calibration)
        if has_bf16():
            runs["openvino_bf16"], _ = openvino_model(model, example, "bf16")
    except ImportError as err:
        skipped["openvino_int8"] = skipped["openvino_bf16"] = (f"openvino/nncf not installed ({err}); "
                                                               "pip install openvino nncf")
    try:
        real, fake = qbook_int8(model, example)
        runs["qbook_int8"] = lambda b: real(**b)
        sizes["qbook_int8_safetensors"] = save_quantized(fake, folder / "int8.safetensors").stat().st_size
    except RuntimeError as err:
        skipped["qbook_int8"] = str(err)
    return runs, skipped, sizes, settings


def point(batch: int, seq: int) -> str:
    return f"batch{batch}-seq{seq}"


def measure(runs: dict[str, Callable], batch: dict[str, torch.Tensor], repeats: int, warmup: int,
            pause: float) -> dict:
    """Each variant's forward in turn, ``warmup + repeats`` rounds. After each call the CPU is left idle for
    ``pause`` s (untimed): thread pools keep spinning for a while after their work (ONNX Runtime's by default,
    OpenMP's briefly), and on a 2-core machine those spinning threads would slow whichever variant runs next."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run(batch)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
                time.sleep(pause)
    return {name: {"median_ms": 1000 * statistics.median(t), "runs_ms": [round(1000 * x, 2) for x in t]}
            for name, t in times.items()}


PROFILE_GROUPS = {"GEMM": ("addmm", "linear", "aten::mm"), "attention": ("scaled_dot_product", "bmm", "softmax"),
                  "LayerNorm": ("layer_norm",)}


def profile(runs: dict[str, Callable], batch: dict[str, torch.Tensor], rounds: int = 3) -> dict:
    """Per PyTorch variant, ms per forward by kind of op (PyTorch profiler, self CPU time): GEMM (Linear layers,
    with whatever their kernels fuse), attention products, LayerNorm, qbook's input quantization (the
    ``qlib::quantize_input`` ranges), and the rest. ONNX Runtime runs outside PyTorch's profiler: its own
    profiler measures it (``ort_profile``)."""
    shares = {}
    for name, run in runs.items():
        if name == "ort_int8" or name.startswith("openvino"):  # outside PyTorch's profiler
            continue
        with torch.inference_mode():
            run(batch)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(rounds):
                    run(batch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        ms = {group: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
              for group, keys in PROFILE_GROUPS.items()}
        ms["input quantization"] = sum(e.cpu_time_total for e in events if e.key == "qlib::quantize_input")
        ms["rest"] = total - sum(ms.values())
        shares[name] = {group: t / 1000 / rounds for group, t in ms.items()} | {"total": total / 1000 / rounds}
    return shares


ORT_GROUPS = {"GEMM": ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"),
              "attention": ("MatMul", "FusedMatMul", "Softmax", "Attention"),
              "LayerNorm": ("LayerNormalization", "SkipLayerNormalization"),
              "input quantization": ("DynamicQuantizeLinear",)}


def ort_profile(path: Path, batch: dict[str, torch.Tensor], folder: Path, rounds: int = 3) -> dict:
    """ONNX Runtime's int8 model under its own profiler: ms per forward by group (as ``profile``; the float
    ``MatMul``s left after ``quantize_dynamic`` are the attention products, which have no constant weight) and by
    op type. A first, untimed run warms the session up; only node events after it count."""
    session = ort_session(path, folder / "ort-profile")
    feed = {k: v.numpy() for k, v in batch.items()}
    for _ in range(rounds + 1):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    first_run = min((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                    key=lambda e: e["ts"])
    warm = first_run["ts"] + first_run["dur"]
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warm:
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000 / rounds
    groups = {group: sum(ms for op, ms in by_op.items() if op in ops) for group, ops in ORT_GROUPS.items()}
    groups["rest"] = sum(by_op.values()) - sum(groups.values())
    return {"groups": groups | {"total": sum(by_op.values())},
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sweep-batches", type=int, nargs="*", default=[1, 8, 32],
                        help="batch sizes of the packaged model's sweep (none: no sweep)")
    parser.add_argument("--sweep-seqs", type=int, nargs="*", default=[32, 64, 128, 256])
    parser.add_argument("--pause", type=float, default=0.2, help="idle seconds after each timed call (see measure)")
    parser.add_argument("--profile-batch", type=int, default=8, help="batch of the BERT-base profile (seq: --seq)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/int8_cpu.json"))
    args = parser.parse_args(argv)
    if args.repeats < 7:
        parser.error(f"--repeats must be at least 7 (medians of >= 7 runs), got {args.repeats}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = {"params": vars(args) | {"out": str(args.out)}, "shapes": {},
              "cpu": {"capability": torch.backends.cpu.get_cpu_capability(), "vnni": cpu_has_vnni()}}
    main_grid = [(b, args.seq) for b in args.batches]
    sweep = [(b, s) for b in args.sweep_batches for s in args.sweep_seqs if (b, s) not in main_grid]
    for shape, build, grid in (("bert-base", bert_base, main_grid), ("packaged", packaged, main_grid + sweep)):
        model = build()
        with tempfile.TemporaryDirectory() as folder:
            runs, skipped, sizes, settings = variants(model, inputs(1, args.seq), Path(folder))
            shape_report = {"skipped": skipped, "sizes_bytes": sizes, "engine_settings": settings, "latency": {}}
            for batch, seq in grid:
                timing = measure(runs, inputs(batch, seq), args.repeats, args.warmup, args.pause)
                shape_report["latency"][point(batch, seq)] = timing
                line = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in timing.items())
                print(f"{shape} batch {batch} seq {seq}: {line}")
                if "qbook_int8" in timing:
                    for other in (name for name in timing if name != "qbook_int8"):
                        ratio = timing[other]["median_ms"] / timing["qbook_int8"]["median_ms"]
                        want = TARGETS.get(other)
                        verdict = f" ({'meets' if ratio >= want else 'MISSES'} the {want}x target)" if want else ""
                        print(f"  qbook int8 vs {other}: {ratio:.2f}x{verdict}")
            for name, reason in skipped.items():
                print(f"  {shape}: {name} skipped: {reason}")
            if shape == "bert-base":
                shape_report["profile_ms"] = profile(runs, inputs(args.profile_batch, args.seq))
                if "ort_int8" in runs:
                    ort = ort_profile(Path(folder) / "model.int8.onnx", inputs(args.profile_batch, args.seq),
                                      Path(folder))
                    shape_report["profile_ms"]["ort_int8"] = ort["groups"]
                    shape_report["ort_profile_by_op_ms"] = ort["by_op"]
                for name, ms in shape_report["profile_ms"].items():
                    print(f"  profile {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
            if "qbook_int8_safetensors" in sizes:
                share = sizes["qbook_int8_safetensors"] / sizes["fp32_safetensors"]
                print(f"  {shape}: int8 checkpoint {share:.1%} of FP32 ({'meets' if share <= 0.26 else 'MISSES'} "
                      "the 26 % target)")
            report["shapes"][shape] = shape_report
    report["provenance"] = provenance(time.perf_counter() - start, data=None)  # random token ids: no data file
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
