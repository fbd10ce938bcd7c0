"""BERT inference latency on this CPU: qbook int8 against FP32 eager and the int8/bf16 engines a user would try.

Variants (``VARIANTS``, each built by its own function; one that cannot run here is skipped with why):
FP32 eager; torch.ao dynamic int8; ONNX Runtime dynamic int8 and static QDQ int8 (calibrated); PyTorch's maintained int8
route (PT2E with torchao's X86 Inductor quantizer, ``torch.compile``); torch bf16 (CPUs with AVX-512 BF16 or AMX);
OpenVINO bf16 and OpenVINO int8 (NNCF post-training quantization); qbook int8 (``qlib.deploy.int8.to_int8``: 8-bit codes
where the CPU computes them exactly, else a 7-bit operand), eager and compiled whole by Inductor, the compiled one also
with its attention products in bf16 where the CPU has bf16 and with Inductor's GEMM autotuning (``autotune=True``), and
eager with I-BERT's integer GELU, softmax and LayerNorm;
and qbook's QDQ export (``qlib.deploy.onnx_export``, the learned scales) run by ONNX Runtime and by OpenVINO.
Post-training peers calibrate on ``CALIBRATION``, none of which is timed.

    python benchmarks/int8_cpu.py [--threads 2] [--repeats 7] [--out results/benchmarks/int8_cpu-<class>-<time>.json]

All variants run in one process, interleaved (one forward of each in turn, ``repeats`` rounds after warm-up),
on the BERT-base shape (random weights: speed does not depend on them) and on the packaged model, at batch 1
and 8, sequence 128; then, on the packaged model, over a grid of batch sizes and sequence lengths. Before timing,
each variant's logits are compared with the fake-quantized model's and FP32's on one batch (max |Δ|). The CPU's
limits are measured too: a large int8 GEMM (oneDNN, u8·s8) and a large FP32 GEMM, in operations per second, beside
what qbook's GEMMs and whole forward reach. Prints each median and the ratios against the issue's targets; writes
the measurements with provenance to a file named after the CPU class (``qlib.common.cpu.cpu_class``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from qlib import convert_bert, q8bert_config  # noqa: E402
from qlib.bert.integer_modules import use_integer_nonlinearities  # noqa: E402
from qlib.common.cpu import cpu_class, cpu_model, has_bf16  # noqa: E402
from qlib.deploy.checkpoint import save_float, save_quantized  # noqa: E402
from qlib.deploy.int8 import exact_widths, native_attention_dtype, to_int8  # noqa: E402
from qlib.deploy.onnx_export import export_onnx, in_forward_order  # noqa: E402
from qlib.experiments.models import DEFAULT_MODEL, load_classifier  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.speed import QBOOK_ROUTES, TARGETS, judge, point_name  # noqa: E402

TORCH_VARIANTS = ("fp32", "ao_dynamic", "torch_bf16", "pt2e_inductor", "qbook_int8", "qbook_int8_compiled",
                  "qbook_int8_compiled_bf16_attention", "qbook_int8_autotuned")
"""The variants that run inside PyTorch, so its profiler can split their time."""
CALIBRATION = ((2, 128), (3, 64), (4, 96), (6, 128))  # post-training peers' calibration inputs: none is timed


def bert_base() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2)).eval()


def packaged() -> BertForSequenceClassification:
    return load_classifier(DEFAULT_MODEL, num_labels=2)[0].eval()


def inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, 30000, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Skip(Exception):
    """A variant that cannot run here, with why."""


@dataclass
class Setup:
    """What every variant builder reads: the FP32 model, one example batch, calibration batches, a scratch folder,
    and the Q8BERT fake-quantized copy whose scales qbook's variants use (EMA ranges set as QAT leaves them)."""

    model: torch.nn.Module
    example: dict[str, torch.Tensor]
    folder: Path
    calibration: list[dict[str, torch.Tensor]] = field(default_factory=lambda: [inputs(b, s) for b, s in CALIBRATION])
    fake: torch.nn.Module | None = None
    settings: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    openvino_models: dict[str, Any] = field(default_factory=dict)  # each OpenVINO variant's model, to profile it

    def __post_init__(self) -> None:
        self.fake = convert_bert(copy.deepcopy(self.model), q8bert_config()).train()
        with torch.no_grad():
            for _ in range(3):
                self.fake(**self.example)
        self.fake.eval()

    def fp32_onnx(self) -> Path:
        path = self.folder / "model.onnx"
        if not path.exists():
            example = in_forward_order(self.model, self.example)
            torch.onnx.export(self.model, (), str(path), kwargs=example, input_names=list(example),
                              output_names=["logits"], dynamic_axes={k: {0: "batch", 1: "seq"} for k in self.example},
                              dynamo=False)
        return path


def needs_bf16() -> None:
    if not has_bf16():
        raise Skip("this CPU has neither AVX-512 BF16 nor AMX")


def ort_session(path: Path, profile_prefix: Path | None = None):
    """An ONNX Runtime CPU session with the benchmark's threads; with ``profile_prefix``, its own profiler on."""
    try:
        import onnxruntime
    except ImportError as err:
        raise Skip(f"onnxruntime not installed ({err}); pip install -e '.[bench]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, str(profile_prefix)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(path: Path) -> Callable:
    session = ort_session(path)
    return lambda batch: session.run(None, {k: v.numpy() for k, v in batch.items()})


def openvino_run(model, setup: Setup, precision: str, name: str) -> Callable:
    """``model`` (an OpenVINO model or an ONNX file) compiled for the CPU with the benchmark's threads at inference
    precision ``precision`` ("bf16", or "" for OpenVINO's default, recorded under ``name``)."""
    try:
        import openvino as ov
    except ImportError as err:
        raise Skip(f"openvino not installed ({err}); pip install -e '.[bench]'") from None
    core = ov.Core()
    model = core.read_model(str(model)) if isinstance(model, Path) else model
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()} | (
        {"INFERENCE_PRECISION_HINT": precision} if precision else {})
    compiled = core.compile_model(model, "CPU", config)
    setup.openvino_models[name] = (model, config)
    setup.settings[f"{name}_precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    request = compiled.create_infer_request()
    return lambda batch: request.infer({k: v.numpy() for k, v in batch.items()})


def fp32(setup: Setup) -> Callable:
    setup.sizes["fp32_safetensors"] = save_float(setup.model, setup.folder / "fp32.safetensors").stat().st_size
    return lambda b: setup.model(**b)


def ao_dynamic(setup: Setup) -> Callable:
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(setup.model), {torch.nn.Linear}, dtype=torch.qint8)
    return lambda b: dynamic(**b)


def ort_int8(setup: Setup) -> Callable:
    """ONNX Runtime's dynamic int8 (``quantize_dynamic``: int8 weights, inputs quantized per batch)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        raise Skip(f"onnxruntime not installed ({err}); pip install -e '.[bench]'") from None
    path = setup.folder / "model.int8.onnx"
    quantize_dynamic(str(setup.fp32_onnx()), str(path), weight_type=QuantType.QInt8)
    return ort_run(path)


def ort_static(setup: Setup, op_types: list[str] | None, file: str) -> Callable:
    """ONNX Runtime's static int8 (``quantize_static``, QDQ format, uint8 inputs and int8 weights as ONNX Runtime
    advises for x86, MinMax ranges from the calibration batches) of the ops of ``op_types`` (None: every op type it
    can quantize, its default), written to ``file`` in the scratch folder."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as err:
        raise Skip(f"onnxruntime not installed ({err}); pip install -e '.[bench]'") from None

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{k: v.numpy() for k, v in b.items()} for b in setup.calibration])

        def get_next(self):
            return next(self.batches, None)

    path = setup.folder / file
    quantize_static(str(setup.fp32_onnx()), str(path), Batches(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return ort_run(path)


def ort_qdq_static(setup: Setup) -> Callable:
    """ONNX Runtime's static int8 of the GEMMs (``MatMul``, ``Gemm``) only (``ort_static``). Its default, every op
    type, also quantizes the path of BERT's attention mask, whose padded positions hold the float minimum: a MinMax
    range that holds them leaves no resolution for the attention scores. ``benchmarks/peer_accuracy.py`` scores both
    on padded dev batches."""
    return ort_static(setup, ["MatMul", "Gemm"], "model.qdq.onnx")


def pt2e_inductor(setup: Setup) -> Callable:
    """PyTorch's maintained int8 route: ``torch.export``, torchao's PT2E ``prepare``/``convert`` with the X86
    Inductor quantizer's default (static, per-channel weights) config, calibration, ``torch.compile`` (freezing on,
    as the quantizer's docs ask: Inductor folds the weights into oneDNN's int8 kernels)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as err:
        raise Skip(f"torchao not installed ({err}); pip install -e '.[bench]'") from None
    import torch._inductor.config

    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=512)
    dims = {name: {0: batch, 1: seq} for name in setup.example}
    exported = torch.export.export(setup.model, (), kwargs=setup.calibration[0], dynamic_shapes=dims,
                                   strict=False).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for batch in setup.calibration:
        prepared(**batch)
    torch._inductor.config.freezing = True
    compiled = torch.compile(convert_pt2e(prepared), dynamic=False)
    return lambda b: compiled(**b)


def torch_bf16(setup: Setup) -> Callable:
    needs_bf16()
    half = copy.deepcopy(setup.model).to(torch.bfloat16)
    return lambda b: half(**b)


def openvino_bf16(setup: Setup) -> Callable:
    needs_bf16()
    import openvino as ov

    return openvino_run(ov.convert_model(setup.model, example_input=setup.example), setup, "bf16", "openvino_bf16")


def openvino_int8(setup: Setup) -> Callable:
    """OpenVINO int8: NNCF post-training quantization (transformer preset) on the calibration batches, OpenVINO's
    default inference precision for what stays float (recorded)."""
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise Skip(f"openvino/nncf not installed ({err}); pip install -e '.[bench]'") from None
    ov_model = ov.convert_model(setup.model, example_input=setup.example)
    dataset = nncf.Dataset([{k: v.numpy() for k, v in b.items()} for b in setup.calibration])
    ov_model = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(setup.calibration))
    return openvino_run(ov_model, setup, "", "openvino_int8")


def qbook_int8(setup: Setup) -> Callable:
    try:
        real = to_int8(setup.fake)
    except RuntimeError as err:
        raise Skip(str(err)) from None
    setup.settings["qbook_int8_widths"] = str(exact_widths()[0])
    setup.sizes["qbook_int8_safetensors"] = save_quantized(setup.fake, setup.folder / "int8.safetensors").stat().st_size
    return lambda b: real(**b)


def qbook_int8_compiled(setup: Setup) -> Callable:
    """qbook int8 compiled whole by Inductor (``to_int8(..., compile=True)``)."""
    compiled = to_int8(setup.fake, compile=True)
    return lambda b: compiled(**b)


def qbook_int8_compiled_bf16_attention(setup: Setup) -> Callable:
    """The same, with the attention products in bf16 (CPUs with native bf16 only)."""
    needs_bf16()
    compiled = to_int8(setup.fake, attention_dtype=torch.bfloat16, compile=True)
    return lambda b: compiled(**b)


def qbook_int8_autotuned(setup: Setup) -> Callable:
    """qbook int8 compiled whole with Inductor's GEMM autotuning (``to_int8(..., compile=True, autotune=True)``), its
    attention products in bf16 where the CPU has native bf16, else in float32 (recorded in the settings)."""
    attention = native_attention_dtype()
    setup.settings["qbook_int8_autotuned_attention"] = str(attention).removeprefix("torch.")
    compiled = to_int8(setup.fake, attention_dtype=attention, compile=True, autotune=True)
    return lambda b: compiled(**b)


def qbook_int8_integer(setup: Setup) -> Callable:
    """qbook int8 of the Q8BERT model with I-BERT's integer GELU, softmax and LayerNorm (``RunSpec(...,
    integer_nonlinearities=True)``): the same int8 GEMMs, the nonlinearities on int64 codes in torch integer ops, as
    that model trains; its input ranges set like ``Setup.fake``'s."""
    fake = use_integer_nonlinearities(convert_bert(copy.deepcopy(setup.model), q8bert_config())).train()
    with torch.no_grad():
        for _ in range(3):
            fake(**setup.example)
    try:
        real = to_int8(fake.eval())
    except RuntimeError as err:
        raise Skip(str(err)) from None
    return lambda b: real(**b)


def qbook_qdq_export(setup: Setup) -> Path:
    path = setup.folder / "qbook.qdq.onnx"
    if not path.exists():
        try:
            export_onnx(setup.fake, path, setup.example)
        except ImportError as err:
            raise Skip(f"onnx not installed ({err}); pip install -e '.[bench]'") from None
    return path


def qbook_qdq_ort(setup: Setup) -> Callable:
    """qbook's QDQ export (the learned scales) run by ONNX Runtime."""
    return ort_run(qbook_qdq_export(setup))


def qbook_qdq_openvino(setup: Setup) -> Callable:
    """qbook's QDQ export (the learned scales) read and run by OpenVINO."""
    return openvino_run(qbook_qdq_export(setup), setup, "", "qbook_qdq_openvino")


VARIANTS: dict[str, Callable[[Setup], Callable]] = {
    "fp32": fp32, "ao_dynamic": ao_dynamic, "ort_int8": ort_int8, "ort_qdq_static": ort_qdq_static,
    "pt2e_inductor": pt2e_inductor, "torch_bf16": torch_bf16, "openvino_bf16": openvino_bf16,
    "openvino_int8": openvino_int8, "qbook_int8": qbook_int8, "qbook_int8_compiled": qbook_int8_compiled,
    "qbook_int8_compiled_bf16_attention": qbook_int8_compiled_bf16_attention,
    "qbook_int8_autotuned": qbook_int8_autotuned, "qbook_int8_integer": qbook_int8_integer,
    "qbook_qdq_ort": qbook_qdq_ort, "qbook_qdq_openvino": qbook_qdq_openvino,
}


def variants(setup: Setup, names: list[str], builders: dict[str, Callable[[Setup], Callable]] = VARIANTS
             ) -> tuple[dict[str, Callable], dict[str, str]]:
    """(forward per variant of ``names`` that runs here, by its builder in ``builders``; skipped variants with why). A
    builder that fails for another reason is reported as skipped with its error, so the rest of the benchmark still
    runs."""
    runs, skipped = {}, {}
    for name in names:
        try:
            runs[name] = builders[name](setup)
        except Skip as why:
            skipped[name] = str(why)
        except Exception as err:  # noqa: BLE001 - a peer's failure is reported, not fatal
            skipped[name] = f"failed to build: {type(err).__name__}: {str(err)[:300]}"
    return runs, skipped


def logits_of(output) -> torch.Tensor:
    """The logits of any variant's output: a transformers output, ONNX Runtime's list, OpenVINO's result."""
    if hasattr(output, "logits"):
        return output.logits.float()
    return torch.as_tensor(output[0]).float()


def agreement(runs: dict[str, Callable], setup: Setup, batch: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per variant, max |Δlogit| against the fake-quantized Q8BERT model and against FP32 on ``batch``, and
    whether the predicted classes agree with each."""
    with torch.inference_mode():
        reference = {"fake_quantized": setup.fake(**batch).logits, "fp32": setup.model(**batch).logits}
        out = {}
        for name, run in runs.items():
            logits = logits_of(run(batch))
            out[name] = {f"max_abs_diff_vs_{ref}": float((logits - r).abs().max()) for ref, r in reference.items()}
            out[name] |= {f"same_class_vs_{ref}": float((logits.argmax(-1) == r.argmax(-1)).float().mean())
                          for ref, r in reference.items()}
    return out


def gemm_peaks(m: int = 1024, k: int = 4096, n: int = 4096, repeats: int = 7) -> dict[str, Any]:
    """This CPU's measured limits with the benchmark's threads: GOP/s of a large int8 GEMM (oneDNN's u8·s8
    ``qlinear_pointwise``, float output, as qbook's Linears call it) and of a large FP32 GEMM (``torch.mm``),
    medians of ``repeats`` after one warm-up; 2·m·k·n operations each, recorded as ``gemm_shape`` [m, k, n]."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    x = torch.randint(1, 256, (m, k), generator=generator).to(torch.uint8)
    w = torch.randint(-127, 128, (n, k), generator=generator).to(torch.int8)
    runs = {"fp32_gemm_gops": lambda: torch.mm(a, b)}
    try:
        packed = torch.ops.onednn.qlinear_prepack(w, [m, k])
        scales, zeros = torch.ones(n), torch.zeros(n, dtype=torch.long)
        runs["int8_gemm_gops"] = lambda: torch.ops.onednn.qlinear_pointwise(
            x, 1.0, 128, packed, scales, zeros, None, 1.0, 0, torch.float32, "none", [], "")
    except (AttributeError, RuntimeError):
        pass
    peaks: dict[str, Any] = {"gemm_shape": [m, k, n]}
    for name, run in runs.items():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        peaks[name] = 2 * m * k * n / statistics.median(times) / 1e9
    return peaks


def linear_ops(model: torch.nn.Module, tokens: int) -> int:
    """Operations (2 per multiply-add) of ``model``'s Linear layers over ``tokens`` tokens (the classifier and
    pooler counted once per sequence would be noise: counted per token here)."""
    return 2 * tokens * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


HOST_PROBE_SHAPE = 512  # the host probe: an FP32 GEMM of two n×n matrices, about a millisecond on 2 threads


def measure(runs: dict[str, Callable], batch: dict[str, torch.Tensor], repeats: int, warmup: int,
            pause: float, seed: int = 0) -> dict:
    """Each variant's forward once per round, ``warmup + repeats`` rounds, the variants in a new random order each
    round (``seed``). Before each call a host probe (an FP32 GEMM of ``HOST_PROBE_SHAPE``) is timed, so each call's
    record shows how fast the machine was just then (``probe_ms``, one per call). After each call the CPU is left
    idle (untimed) for ``pause`` s times a random factor in [0.5, 1.5]: thread pools keep spinning for a while after
    their work (ONNX Runtime's by default, OpenMP's briefly), and on a 2-core machine those spinning threads would
    slow whichever variant runs next. Order and pause are drawn at random because the host itself slows this machine
    in bursts (a cloud VM's neighbours): a fixed order and period can meet those bursts at the same variant round
    after round."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(HOST_PROBE_SHAPE, HOST_PROBE_SHAPE, generator=generator) for _ in range(2))
    times: dict[str, list[float]] = {name: [] for name in runs}
    probes: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                torch.mm(a, b)
                probed = time.perf_counter()
                runs[name](batch)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - probed)
                    probes[name].append(probed - start)
                time.sleep(pause * rng.uniform(0.5, 1.5))
    return {name: {"median_ms": 1000 * statistics.median(t), "runs_ms": [round(1000 * x, 2) for x in t],
                   "probe_ms": [round(1000 * x, 3) for x in probes[name]]} for name, t in times.items()}


PROFILE_GROUPS = {"GEMM": ("addmm", "linear", "aten::mm"), "attention": ("scaled_dot_product", "bmm", "softmax"),
                  "LayerNorm": ("layer_norm",), "input quantization": ("round",)}
"""Profiler ranges by kind of work, each counted in the first group a key names: the eager ops, and the kernels of
an Inductor graph (``cpp_fused_…``, named after the ops fused in them: a LayerNorm that also rounds its output to
the next GEMM's codes counts as LayerNorm; the rounding fused elsewhere, as input quantization)."""
COMPILED_QBOOK = ("qbook_int8_compiled", "qbook_int8_compiled_bf16_attention", "qbook_int8_autotuned")
"""qbook's compiled routes: Inductor's C++ wrapper hides their kernels from PyTorch's profiler, so ``profile`` times
a second copy compiled with ``cpp.enable_kernel_profile``, which makes each kernel a profiler range."""


def profile_group(key: str) -> str | None:
    return next((group for group, names in PROFILE_GROUPS.items() if any(n in key for n in names)), None)


def profile(runs: dict[str, Callable], batch: dict[str, torch.Tensor], setup: Setup, rounds: int = 3) -> dict:
    """Per PyTorch variant, ms per forward by kind of work (PyTorch profiler, self CPU time; ``PROFILE_GROUPS``):
    GEMM (Linear layers, with whatever their kernels fuse), attention products, LayerNorm, qbook's input
    quantization (the ``qlib::quantize_input`` ranges; compiled, the kernels that round), and the rest. The
    compiled qbook routes are profiled on a copy compiled with kernel ranges (``COMPILED_QBOOK``). ONNX Runtime
    runs outside PyTorch's profiler: its own profiler measures it (``ort_profile``)."""
    shares = {}
    for name, run in runs.items():
        if name not in TORCH_VARIANTS:  # outside PyTorch's profiler
            continue
        with torch.inference_mode():
            if name in COMPILED_QBOOK:  # a second copy, compiled on this call with its kernels as profiler ranges
                run = VARIANTS[name](setup)
                with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
                    run(batch)
            run(batch)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(rounds):
                    run(batch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        ms = dict.fromkeys(PROFILE_GROUPS, 0.0)
        for event in events:
            if event.key == "qlib::quantize_input":  # eager: its range holds the ops that quantize
                ms["input quantization"] += event.cpu_time_total
            elif (group := profile_group(event.key)) is not None:
                ms[group] += event.self_cpu_time_total
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


OPENVINO_GROUPS = {"GEMM": ("FullyConnected", "FullyConnectedQuantizedLegacy"),
                   "attention": ("ScaledDotProductAttention", "MatMul", "Softmax"),
                   "LayerNorm": ("MVN",), "input quantization": ("FakeQuantize",)}
"""OpenVINO's CPU node types by group, as ``PROFILE_GROUPS``: a MatMul with constant weights becomes a
FullyConnected, so a MatMul left is an attention product; a ``Subgraph`` (a fused kernel) counts as attention when it
comes from the model's attention (its node name), else as the rest."""


def openvino_profile(name: str, setup: Setup, batch: dict[str, torch.Tensor], rounds: int = 3) -> dict:
    """The OpenVINO variant ``name`` under OpenVINO's own per-node counters (``PERF_COUNT``, the same model and
    settings compiled again): ms per forward by group (as ``profile``) and by node type with the kernel it ran
    (``exec_type``: e.g. ``brgemm_avx512_amx_I8``), the mean of ``rounds`` runs after one untimed run."""
    import openvino as ov

    model, config = setup.openvino_models[name]
    request = ov.Core().compile_model(model, "CPU", config | {"PERF_COUNT": True}).create_infer_request()
    feed = {k: v.numpy() for k, v in batch.items()}
    request.infer(feed)
    by_node: dict[str, float] = {}
    group_ms = dict.fromkeys([*OPENVINO_GROUPS, "rest"], 0.0)
    for _ in range(rounds):
        request.infer(feed)
        for node in request.get_profiling_info():  # the last inference's counters
            ms = node.real_time.total_seconds() * 1000 / rounds
            kind = node.node_type
            by_node[f"{kind} ({node.exec_type})"] = by_node.get(f"{kind} ({node.exec_type})", 0.0) + ms
            if kind == "Subgraph" and "attention" in node.node_name:
                kind = "ScaledDotProductAttention"
            group = next((g for g, kinds in OPENVINO_GROUPS.items() if kind in kinds), "rest")
            group_ms[group] += ms
    return {"groups": group_ms | {"total": sum(group_ms.values())},
            "by_node": dict(sorted(by_node.items(), key=lambda kv: -kv[1]))}


def profile_all(runs: dict[str, Callable], setup: Setup, batch: dict[str, torch.Tensor],
                folder: Path) -> tuple[dict, dict]:
    """Every variant's ms per forward by kind of work at one input (``profile``; ONNX Runtime's and OpenVINO's int8
    by their own profilers), and those two peers' tables by op and by node (``ort_profile_by_op_ms``,
    ``openvino_profile_by_node_ms``)."""
    groups, tables = profile(runs, batch, setup), {}
    if "ort_int8" in runs:
        ort = ort_profile(folder / "model.int8.onnx", batch, folder)
        groups["ort_int8"], tables["ort_profile_by_op_ms"] = ort["groups"], ort["by_op"]
    if "openvino_int8" in runs:
        peer = openvino_profile("openvino_int8", setup, batch)
        groups["openvino_int8"], tables["openvino_profile_by_node_ms"] = peer["groups"], peer["by_node"]
    return groups, tables


def achieved(model: torch.nn.Module, profile_ms: dict, latency: dict, tokens: int) -> dict:
    """GOP/s of each profiled variant's GEMMs (Linear operations over their GEMM time) and of its whole forward
    (the same operations over the forward's median time): what the chapter sets beside the CPU's peaks."""
    ops = linear_ops(model, tokens)
    return {name: {"gemm_gops": ops / (ms["GEMM"] / 1000) / 1e9 if ms["GEMM"] else None,
                   "forward_gops": ops / (latency[name]["median_ms"] / 1000) / 1e9}
            for name, ms in profile_ms.items() if name in latency}


def print_verdicts(cpu: str, timing: dict) -> None:
    targets = TARGETS.get(cpu, {})  # qlib.experiments.speed's: the chapter reads the same
    for route in (r for r in QBOOK_ROUTES if r in timing):
        for other in (name for name in timing if name not in QBOOK_ROUTES):
            judged = judge(timing[other], timing[route], targets.get(other))
            verdict = ""
            if "verdict" in judged:
                settled = "" if judged["every round agrees"] else "; not settled: rounds on both sides"
                verdict = f" ({judged['verdict'].replace('misses', 'MISSES')} the {judged['target']}x target on {cpu}" \
                    f"{settled})"
            calm = judged.get("calm speed-up")
            calm = f"; outside host bursts {calm:.2f}x" if calm else ""
            print(f"  {route} vs {other}: {judged['speed-up']:.2f}x "
                  f"(rounds {judged['lowest round']:.2f}-{judged['highest round']:.2f}x{calm}){verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sweep-batches", type=int, nargs="*", default=[1, 8, 32],
                        help="batch sizes of the packaged model's sweep (none: no sweep)")
    parser.add_argument("--sweep-seqs", type=int, nargs="*", default=[32, 128, 512])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help=f"variants to run (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--pause", type=float, default=0.2, help="idle seconds after each timed call (see measure)")
    parser.add_argument("--profile-batches", type=int, nargs="+", default=[8, 1],
                        help="batches of the BERT-base profiles (seq: --seq); the first is also the agreement's and "
                             "the achieved GOP/s' batch, and the only one whose peers' kernel tables are kept")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default: results/benchmarks/int8_cpu-<CPU class>-<UTC time>.json)")
    args = parser.parse_args(argv)
    if args.repeats < 7:
        parser.error(f"--repeats must be at least 7 (medians of >= 7 runs), got {args.repeats}")
    import torch._dynamo.config

    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # compiled variants: one graph per (batch, seq) point of the sweep
    start = time.perf_counter()
    cpu = cpu_class()
    out = args.out or benchmark_path("int8_cpu")
    report = {"params": vars(args) | {"out": str(out)}, "shapes": {},
              "cpu": {"class": cpu, "model": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "exact_int8_widths": [str(w) for w in exact_widths()]},
              "limits": gemm_peaks()}
    print(f"CPU class {cpu or 'unknown'} ({cpu_model()}): " +
          ", ".join(f"{k} {v:.0f}" for k, v in report["limits"].items() if k.endswith("_gops")))
    main_grid = [(b, args.seq) for b in args.batches]
    sweep = [(b, s) for b in args.sweep_batches for s in args.sweep_seqs if (b, s) not in main_grid]
    for shape, build, grid in (("bert-base", bert_base, main_grid), ("packaged", packaged, main_grid + sweep)):
        with tempfile.TemporaryDirectory() as folder:
            setup = Setup(build(), inputs(1, args.seq), Path(folder))
            runs, skipped = variants(setup, args.variants)
            shape_report = {"skipped": skipped, "sizes_bytes": setup.sizes, "engine_settings": setup.settings,
                            "agreement": agreement(runs, setup, inputs(args.profile_batches[0], args.seq)),
                            "latency": {}}
            for batch, seq in grid:
                timing = measure(runs, inputs(batch, seq), args.repeats, args.warmup, args.pause)
                shape_report["latency"][point_name(batch, seq)] = timing
                print(f"{shape} batch {batch} seq {seq}: " +
                      ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in timing.items()))
                print_verdicts(cpu, timing)
            for name, reason in skipped.items():
                print(f"  {shape}: {name} skipped: {reason}")
            if shape == "bert-base":
                first, *others = args.profile_batches
                profiled = {b: profile_all(runs, setup, inputs(b, args.seq), Path(folder)) for b in (first, *others)}
                groups, tables = profiled[first]  # the peers' op and node tables: the first batch's only
                shape_report |= {"profile_ms": groups, **tables,
                                 "profile_ms_at": {point_name(b, args.seq): profiled[b][0] for b in others}}
                for b, (by_kind, _) in profiled.items():
                    for name, ms in by_kind.items():
                        print(f"  profile batch {b} {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
                at = shape_report["latency"].get(point_name(first, args.seq), {})
                shape_report["achieved_gops"] = achieved(setup.model, groups, at, first * args.seq)
            if "qbook_int8_safetensors" in setup.sizes:
                share = setup.sizes["qbook_int8_safetensors"] / setup.sizes["fp32_safetensors"]
                print(f"  {shape}: int8 checkpoint {share:.1%} of FP32 ({'meets' if share <= 0.26 else 'MISSES'} "
                      "the 26 % target)")
            report["shapes"][shape] = shape_report
    report["provenance"] = provenance(time.perf_counter() - start, data=None)  # random token ids: no data file
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
