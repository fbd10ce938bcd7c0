"""What the int8 benchmark's result files say (``benchmarks/int8_cpu.py``): its targets per CPU class, and the
tables the speed chapter shows, one row per committed run or per CPU class."""

from __future__ import annotations

import functools
import re
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from qlib.common.cpu import cpu_class
from qlib.experiments.results import read_json, read_result, read_results, records_its_data
from qlib.experiments.spec import RunSpec

TARGETS: dict[str, dict[str, float]] = {
    "AMX": {"openvino_int8": 1.0, "ort_int8": 1.25, "ort_qdq_static": 1.25, "torch_bf16": 1.5},
    "AVX-512 VNNI": {"fp32": 3.7, "ort_int8": 1.25, "ort_qdq_static": 1.25, "openvino_int8": 1.0},
    "AVX2": {"ao_dynamic": 1.0},
}
"""qbook int8's speed-up wanted over each variant, per CPU class (issue 21: BERT-base shape, sequence 128, batch 1
and 8, ratios of medians from one run of the benchmark, 2 threads, quiet CPU)."""

QBOOK_ROUTES = ("qbook_int8", "qbook_int8_compiled", "qbook_int8_compiled_bf16_attention", "qbook_int8_autotuned",
                "qbook_int8_compiled_bf16_gemm_attention")
"""qbook's own int8 routes in the benchmark: eager, compiled whole by Inductor, compiled with bf16 attention, and
compiled with Inductor's GEMM autotuning (bf16 attention where the CPU has native bf16, else float32)
(``qlib.deploy.int8.to_int8``'s ``compile``, ``attention_dtype`` and ``autotune``). The last one, bf16 attention by two
batched GEMMs instead of SDPA, is kept here for the one committed run that measured it (AVX-512 VNNI): it gained only
at batch 1 of the BERT-base shape and came no closer to the fake-quantized model, so it left ``to_int8``."""


def run_class(run: dict[str, Any]) -> str:
    """A benchmark run's CPU class: recorded by the run, else read from its provenance's ISA features; the first
    runs recorded neither, only whether the CPU had VNNI: on an AMD CPU (no AMX in any EPYC so far) that is the
    AVX-512 VNNI class, elsewhere it stays unknown ("")."""
    machine = run["provenance"]["machine"]
    if run.get("cpu", {}).get("class") or machine.get("cpu_features"):
        return run.get("cpu", {}).get("class") or cpu_class(machine["cpu_features"])
    vnni_amd = run.get("cpu", {}).get("vnni") and "AMD" in machine.get("cpu", "")
    return "AVX-512 VNNI" if vnni_amd else ""


def benchmark_runs(folder: str | Path, pattern: str = "int8_cpu*.json") -> list[dict[str, Any]]:
    """Every committed run of the benchmark in ``folder``, oldest first, each with its ``path``, ``class`` and the
    ``notes`` attached to it in ``results/notes.toml``."""
    runs = [r | {"class": run_class(r)} for r in map(read_result, sorted(Path(folder).glob(pattern)))]
    return sorted(runs, key=lambda r: r["provenance"]["date"])


def latest_per_class(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest full run of each CPU class (one with the sweep: a short run that tries a few variants is left to
    the table of every run), else its newest run; runs that recorded no class are left out.

    Args:
        runs: benchmark runs oldest first (``benchmark_runs``).

    Returns:
        CPU class -> its run.
    """
    newest = {r["class"]: r for r in runs if r["class"]}
    full = {r["class"]: r for r in runs if r["class"] and is_full(r)}
    return newest | full


def is_full(run: dict[str, Any]) -> bool:
    """Whether a benchmark run is a full one: it ran the sweep over batch sizes and sequence lengths (a short run
    tries a few variants at the targets' points)."""
    return bool(run.get("params", {}).get("sweep_batches"))


def sweep_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose sweep the speed chapter plots: ``run_for`` among the full runs (``is_full``), i.e. the newest
    full run of this machine's CPU class, else the newest full run of any class; None when no run is full."""
    return run_for([r for r in runs if is_full(r)])


def run_for(runs: list[dict[str, Any]], of_class: str | None = None) -> dict[str, Any] | None:
    """The run a one-CPU table reads (``latest_per_class``'s run): of CPU class ``of_class`` (``AMX``,
    ``AVX-512 VNNI`` or ``AVX2``; a class with no committed run is a ``ValueError`` naming those that have one), or
    by default of this machine's class where one is committed, else the newest of any class; None when there is no
    run.

    Args:
        runs: benchmark runs oldest first (``benchmark_runs``).
        of_class: the class to read, or None.
    """
    latest = latest_per_class(runs)
    if of_class is not None:
        if of_class not in latest:
            raise ValueError(f"no committed run of CPU class {of_class!r}; runs exist for {sorted(latest)}")
        return latest[of_class]
    return latest.get(cpu_class()) or max(latest.values(), key=lambda r: r["provenance"]["date"], default=None)

def point_name(batch: int, seq: int) -> str:
    """The name a benchmark gives the point (``batch``, ``seq``) in its result file: ``"batch8-seq128"``."""
    return f"batch{batch}-seq{seq}"


def batch_and_seq(point: str) -> tuple[int, int]:
    """A benchmark point's batch and sequence length from its name (``point_name``): ``"batch8-seq128"`` -> (8, 128)."""
    batch, seq = (int(part.lstrip("batchseq")) for part in point.split("-"))
    return batch, seq


def latency_frame(benchmark: dict[str, Any]) -> pd.DataFrame:
    """A ``benchmarks/int8_cpu.py`` result as one row per (shape, batch, seq, variant) with its median ms."""
    rows = []
    for shape, report in benchmark["shapes"].items():
        for point, timings in report["latency"].items():
            batch, seq = batch_and_seq(point)
            rows += [{"shape": shape, "batch": batch, "seq": seq, "variant": variant, "median ms": t["median_ms"]}
                     for variant, t in timings.items()]
    return pd.DataFrame(rows, columns=["shape", "batch", "seq", "variant", "median ms"])


def classes_side_by_side(runs: dict[str, dict[str, Any]], shape: str = "bert-base", seq: int = 128) -> pd.DataFrame:
    """Median ms of every variant (columns) per CPU class and batch (rows) at ``shape`` and ``seq``: one run per
    class, as ``latest_per_class`` gives them."""
    frames = []
    for cls, run in runs.items():
        frame = latency_frame(run).query("shape == @shape and seq == @seq").assign(**{"CPU class": cls})
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames).pivot_table(index=["CPU class", "batch"], columns="variant", values="median ms")


def round_speedups(other_ms: Sequence[float], route_ms: Sequence[float]) -> tuple[float, float]:
    """The spread of a speed-up over one run's rounds: the lowest and highest ``other_ms[i] / route_ms[i]``.

    The benchmark times every variant once per round (``measure``). A slow stretch of the machine that lasts a whole
    round slows its variants alike and drops out of their ratio; the host's shorter bursts (``BURST_FACTOR``) do not,
    and widen this range. A target inside it is not settled by the run: a second run can put the ratio of medians
    on its other side.

    Args:
        other_ms: the other variant's time in each round (ms).
        route_ms: qbook's route's time in the same rounds (ms).

    Returns:
        (lowest, highest) per-round speed-up.

    Shapes: two sequences of one time per round, of the same length (at least one).
    """
    if len(other_ms) != len(route_ms) or not route_ms:
        raise ValueError(f"per-round times must pair up one to one, got {len(other_ms)} and {len(route_ms)} rounds")
    ratios = [other / route for other, route in zip(other_ms, route_ms)]
    return min(ratios), max(ratios)


BURST_FACTOR = 1.3
"""A timed call ran in a burst of the host when the host probe just before it (``probe_ms``: a small FP32 GEMM,
``benchmarks/int8_cpu.py``'s ``measure``) took more than this times the fastest probe of the two variants compared.
On the AMX virtual machine where the bursts were found (int8_cpu-amx-2026-12-06T1704 and the probes before it) a
GEMM ran at two speeds, the slower one in bursts of a fraction of a second, and a short call after a slow probe
took longer by a similar factor: this one lies between the two speeds."""


def calm_times(timing: Mapping[str, Any], fastest_probe: float) -> list[float]:
    """A variant's times (ms) of the calls whose host probe ran outside a burst (``BURST_FACTOR``)."""
    return [ms for ms, probe in zip(timing["runs_ms"], timing["probe_ms"]) if probe <= BURST_FACTOR * fastest_probe]


def calm_speedup(other: Mapping[str, Any], route: Mapping[str, Any]) -> dict[str, Any]:
    """A speed-up measured outside the host's bursts: median(other's calm times) / median(route's calm times)
    (``calm_times``, against the fastest probe of either), and the share of the two variants' calls that ran in a
    burst. Empty for a run that recorded no probes (before they were added); the speed-up is None where either
    variant had no calm call."""
    if "probe_ms" not in other or "probe_ms" not in route:
        return {}
    fastest = min(other["probe_ms"] + route["probe_ms"])
    calm = [calm_times(t, fastest) for t in (other, route)]
    return {"calm speed-up": statistics.median(calm[0]) / statistics.median(calm[1]) if all(calm) else None,
            "calls in bursts": burst_share([other, route])}


def burst_share(timings: Sequence[Mapping[str, Any]]) -> float:
    """The share of the calls of ``timings`` (variants timed with probes) whose probe ran in a host burst, against the
    fastest probe among them (``calm_times``)."""
    fastest = min(p for t in timings for p in t["probe_ms"])
    calls = sum(len(t["runs_ms"]) for t in timings)
    return 1 - sum(len(calm_times(t, fastest)) for t in timings) / calls


def judge(other: Mapping[str, Any], route: Mapping[str, Any], target: float | None) -> dict[str, Any]:
    """One qbook route's speed-up over another variant, timed side by side in one run, judged against a target.

    speed-up = median(other) / median(route); the verdict is "meets" when speed-up >= target. The run settles the
    verdict only when every round's own speed-up (``round_speedups``) falls on the same side of the target. Where
    the run probed the host before each call, the speed-up outside its bursts too (``calm_speedup``).

    Args:
        other: the other variant's timing (``median_ms``, per-round ``runs_ms`` and, in newer runs, ``probe_ms``).
        route: qbook's route's timing in the same run (same keys, same rounds).
        target: the speed-up wanted (``TARGETS``), or ``None`` where its CPU class sets none.

    Returns:
        ``speed-up``, ``lowest round`` and ``highest round``; with a target also ``target``, ``verdict`` ("meets" or
        "misses") and ``every round agrees``; with probes also ``calm speed-up`` and ``calls in bursts``.
    """
    ratio = other["median_ms"] / route["median_ms"]
    low, high = round_speedups(other["runs_ms"], route["runs_ms"])
    judged: dict[str, Any] = {"speed-up": ratio, "lowest round": low, "highest round": high}
    if target is not None:
        judged |= {"target": target, "verdict": "meets" if ratio >= target else "misses",
                   "every round agrees": (low >= target) == (high >= target)}
    return judged | calm_speedup(other, route)


VERDICT_COLUMNS = ["CPU class", "batch", "qbook route", "vs", "verdict", "speed-up", "target", "lowest round",
                   "highest round", "every round agrees", "calm speed-up", "calls in bursts"]


def verdicts(runs: dict[str, dict[str, Any]], shape: str = "bert-base", seq: int = 128) -> pd.DataFrame:
    """Per CPU class, batch and qbook route (``QBOOK_ROUTES``), its speed-up over each variant its class has a
    target for, the target, and whether the run meets it (ratios of medians measured side by side in that run);
    beside them the speed-up's spread over the run's rounds (``round_speedups``) and whether every round falls on
    the verdict's side of the target (if not, the run does not settle it); for runs that probed the host, the
    speed-up outside its bursts and the share of calls in them (``calm_speedup``)."""
    rows = []
    for cls, run in runs.items():
        for point, ms in run["shapes"].get(shape, {}).get("latency", {}).items():
            batch, point_seq = batch_and_seq(point)
            if point_seq != seq:
                continue
            for route in (r for r in QBOOK_ROUTES if r in ms):
                for other, want in ((o, w) for o, w in TARGETS.get(cls, {}).items() if o in ms):
                    rows.append({"CPU class": cls, "batch": batch, "qbook route": route, "vs": other}
                                | judge(ms[other], ms[route], want))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS).sort_values(["CPU class", "batch"], kind="stable",
                                                                   ignore_index=True)


PROFILED = QBOOK_ROUTES + ("qbook_int8_bf16_attention", "pt2e_inductor")


def limits(runs: dict[str, dict[str, Any]], variants: tuple[str, ...] = PROFILED) -> pd.DataFrame:
    """Per CPU class, its measured peaks (GOP/s of a large int8 and a large FP32 GEMM, and their m × k × n where the
    run recorded it) and how close each profiled variant's GEMMs and whole forward come to the int8 peak (BERT-base
    shape, the profile's batch)."""
    rows = []
    for cls, run in runs.items():
        peaks = run.get("limits")
        if not peaks:
            continue
        row = {"CPU class": cls, "int8 GEMM peak (GOP/s)": peaks.get("int8_gemm_gops"),
               "FP32 GEMM peak (GOP/s)": peaks.get("fp32_gemm_gops"),
               "peak GEMM m × k × n": " × ".join(map(str, peaks["gemm_shape"])) if "gemm_shape" in peaks else None}
        for name in variants:
            got = run["shapes"]["bert-base"].get("achieved_gops", {}).get(name)
            if got and peaks.get("int8_gemm_gops"):
                for part in ("gemm", "forward"):
                    if got[f"{part}_gops"]:
                        row[f"{name} {part} (% of int8 peak)"] = 100 * got[f"{part}_gops"] / peaks["int8_gemm_gops"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("CPU class") if rows else pd.DataFrame()


EXPORT_PAIRS = {"qbook_qdq_openvino": "openvino_int8", "qbook_qdq_ort": "ort_qdq_static"}
"""qbook's QDQ export (``qlib.deploy.onnx_export``, the QAT model's learned scales) run by an engine -> the int8 model
that engine makes itself from the float model by post-training quantization, in the benchmark's variants."""


def export_against_engines(runs: dict[str, dict[str, Any]], shape: str = "bert-base", seq: int = 128
                           ) -> pd.DataFrame:
    """Per CPU class and batch, each engine on qbook's QDQ export against the same engine on its own post-training
    int8 model (``EXPORT_PAIRS``): both medians, the export's speed-up (the engine's model's median over the
    export's, from one run: above 1 the export is the faster) and each one's max ``|Δlogit|`` against the
    fake-quantized model (the run's agreement batch). One run per class, as ``latest_per_class`` gives them."""
    rows = []
    for cls, run in runs.items():
        if shape not in run["shapes"]:
            continue
        drift = agreement(run, shape).get("max_abs_diff_vs_fake_quantized", pd.Series(dtype=float))
        for point, timing in run["shapes"][shape].get("latency", {}).items():
            batch, point_seq = batch_and_seq(point)
            if point_seq != seq:
                continue
            rows += [{"CPU class": cls, "batch": batch, "export run by": export, "against": own,
                      "export ms": timing[export]["median_ms"], "its own ms": timing[own]["median_ms"],
                      "speed-up of the export": timing[own]["median_ms"] / timing[export]["median_ms"],
                      "export max |Δlogit|": drift.get(export), "its own max |Δlogit|": drift.get(own)}
                     for export, own in EXPORT_PAIRS.items() if export in timing and own in timing]
    return pd.DataFrame(rows).set_index(["CPU class", "batch", "export run by"]) if rows else pd.DataFrame()


def agreement(run: dict[str, Any], shape: str = "bert-base") -> pd.DataFrame:
    """Each variant's max ``|Δlogit|`` and class agreement against the fake-quantized model and FP32, as the run
    measured them on one batch of random tokens."""
    return pd.DataFrame(run["shapes"][shape].get("agreement", {})).T


def runs_at_point(runs: list[dict[str, Any]], batch: int = 8, seq: int = 128, shape: str = "bert-base"
                  ) -> pd.DataFrame:
    """Every run's medians at one point, one row per run that timed a qbook route (oldest first): FP32's and the
    fastest qbook route's of those it timed (``QBOOK_ROUTES``; a short run may time only some), with that route's
    speed-ups over each variant its class has targets for: the run-to-run spread behind any one verdict."""
    rows = {}
    for run in runs:
        ms = latency_frame(run).query("shape == @shape and batch == @batch and seq == @seq").set_index(
            "variant")["median ms"]
        routes = ms[ms.index.isin(QBOOK_ROUTES)]
        if routes.empty:
            continue
        fastest = routes.idxmin()
        ratios = {f"vs {other}": ms[other] / ms[fastest] for other in TARGETS.get(run["class"], {}) if other in ms}
        rows[f"{Path(run['path']).stem} ({run['provenance']['date'][:16]})"] = {
            "CPU class": run["class"] or "not recorded", "FP32 ms": ms.get("fp32"), "fastest qbook route": fastest,
            "its ms": ms[fastest], **ratios,
            "load avg (1 min)": run["provenance"]["machine"].get("load_avg_1_5_15_min", [None])[0]}
    return pd.DataFrame.from_dict(rows, orient="index")


def calm_at_point(runs: list[dict[str, Any]], batch: int = 8, seq: int = 128, shape: str = "bert-base"
                  ) -> pd.DataFrame:
    """For each run that probed the host before each call (``measure``'s ``probe_ms``), at one point: the fastest
    qbook route's speed-up over each variant its class has targets for over the calls outside the host's bursts
    (``calm_speedup``), and the share of all the point's calls that met a burst (against the point's fastest probe);
    rows named as in ``runs_at_point``, whose ratios of medians they sit beside."""
    rows = {}
    for run in runs:
        timing = run["shapes"].get(shape, {}).get("latency", {}).get(point_name(batch, seq), {})
        routes = [r for r in QBOOK_ROUTES if "probe_ms" in timing.get(r, {})]
        if not routes:
            continue
        fastest = min(routes, key=lambda r: timing[r]["median_ms"])
        row: dict[str, Any] = {"fastest qbook route": fastest} | {
            f"vs {other}, calm": calm_speedup(timing[other], timing[fastest])["calm speed-up"]
            for other in TARGETS.get(run["class"], {}) if "probe_ms" in timing.get(other, {})}
        row["calls in bursts"] = burst_share([t for t in timing.values() if "probe_ms" in t])
        rows[f"{Path(run['path']).stem} ({run['provenance']['date'][:16]})"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def profile_at(run: dict[str, Any], batch: int, seq: int, shape: str = "bert-base") -> dict[str, dict[str, float]]:
    """A run's profile at (``batch``, ``seq``): variant -> ms per kind of work; {} where it profiled no such point.
    The first of its ``profile_batches`` (before them, its one ``profile_batch``) is ``profile_ms``, the others
    ``profile_ms_at``."""
    params, report = run.get("params", {}), run["shapes"][shape]
    first = params.get("profile_batches", [params.get("profile_batch")])[0]
    if batch == first and seq == params.get("seq"):
        return report.get("profile_ms", {})
    return report.get("profile_ms_at", {}).get(point_name(batch, seq), {})


def newest_profiled(runs: list[dict[str, Any]], batch: int, seq: int) -> dict[str, dict[str, Any]]:
    """The newest run of each CPU class that profiled the BERT-base shape at (``batch``, ``seq``), short runs
    included (``runs``: oldest first, as ``benchmark_runs`` gives them)."""
    return {r["class"]: r for r in runs if r["class"] and profile_at(r, batch, seq)}


def profile_views(runs: list[dict[str, Any]], latest: dict[str, dict[str, Any]], batch: int, seq: int
                  ) -> list[tuple[str, int, dict[str, dict[str, Any]]]]:
    """The profiles the speed chapter shows, each as (what it is, its batch, CPU class -> run): at ``batch``, the
    verdicts' runs (``latest``), then, where a class has one, its newest run that profiled that point after its
    verdicts' run (a short run trying a change); then at batch 1 the newest run of each class that profiled it
    (``runs``: oldest first, as ``benchmark_runs`` gives them)."""
    newer = {cls: run for cls, run in newest_profiled(runs, batch, seq).items()
             if cls in latest and run["provenance"]["date"] > latest[cls]["provenance"]["date"]}
    views = [(f"batch {batch}, the verdicts' runs", batch, latest)]
    views += [(f"batch {batch}, newer runs", batch, newer)] if newer else []
    views += [("batch 1, the newest run of each class that profiled it", 1, newest_profiled(runs, 1, seq))
              ] if batch != 1 else []
    return views


def profiles(runs: dict[str, dict[str, Any]], batch: int = 8, seq: int = 128, shape: str = "bert-base"
             ) -> pd.DataFrame:
    """ms per forward by kind of work (GEMM, attention, LayerNorm, input quantization, rest, total) of every
    variant each run profiled at (``batch``, ``seq``), one row per (CPU class, variant). Variants whose profile saw
    no GEMM are left out: the runs from before the benchmark profiled qbook's compiled routes on a copy with kernel
    ranges saw only Inductor's C++ wrapper, whose kernels PyTorch's profiler does not see one by one."""
    frames = {cls: pd.DataFrame(profile_at(run, batch, seq, shape)).T for cls, run in runs.items()}
    frames = {cls: f[f["GEMM"] > 0] if "GEMM" in f else f for cls, f in frames.items()}
    frames = {cls: f for cls, f in frames.items() if not f.empty}
    return pd.concat(frames, names=["CPU class", "variant"]) if frames else pd.DataFrame()


def peer_kernels(runs: dict[str, dict[str, Any]], shape: str = "bert-base", top: int = 8) -> pd.DataFrame:
    """The ``top`` OpenVINO int8 node kinds by ms per forward, each with the kernel it ran (``exec_type``, e.g.
    ``brgemm_avx512_amx_I8``: which work the fastest peer does in int8, bf16 or f32), one block per CPU class whose
    run profiled it (``benchmarks/int8_cpu.py``'s ``openvino_profile``)."""
    rows = [{"CPU class": cls, "node (kernel)": node, "ms": ms} for cls, run in runs.items()
            for node, ms in sorted(run["shapes"][shape].get("openvino_profile_by_node_ms", {}).items(),
                                   key=lambda item: -item[1])[:top]]  # result files store keys sorted by name
    return pd.DataFrame(rows).set_index(["CPU class", "node (kernel)"]) if rows else pd.DataFrame()


INT8_VARIANTS = QBOOK_ROUTES + ("qbook_int8_bf16_attention", "pt2e_inductor", "openvino_int8", "ort_int8",
                 "ort_qdq_static", "ao_dynamic")


def sweep_speedups(run: dict[str, Any], shape: str = "packaged") -> pd.DataFrame:
    """Each int8 variant's speed-up over FP32 eager (ratio of medians) at every (batch, seq) point of ``shape``."""
    table = latency_frame(run).query("shape == @shape").pivot_table(index=["batch", "seq"], columns="variant",
                                                                     values="median ms")
    present = [v for v in INT8_VARIANTS if v in table.columns]
    return table[present].rdiv(table["fp32"], axis=0)


def amdahl_summary(profile: pd.DataFrame) -> str:
    """Markdown lines on one class's profile (rows: variants; columns: ms per kind of work): FP32's GEMM share f
    and the speed-up int8 GEMMs alone could give (``1 / ((1 - f) + f/4)``, 4× being VNNI's multiply-adds per
    instruction over FP32's), qbook's GEMM speed-up over FP32's, and the time qbook spends outside its GEMMs."""
    if not {"fp32", "qbook_int8"} <= set(profile.index):
        return ""
    fp32, q = profile.loc["fp32"], profile.loc["qbook_int8"]
    f = fp32["GEMM"] / fp32["total"]
    outside = q["total"] - q["GEMM"]
    return "\n".join([
        f"* FP32 spends a share f = {f:.2f} of its time in GEMMs: int8 GEMMs 4× faster would bound the speed-up "
        f"over FP32 at {1 / ((1 - f) + f / 4):.2f}× (Amdahl).",
        f"* qbook's int8 GEMMs (with their fused bias, GELU, requantization and residual adds) take "
        f"**{fp32['GEMM'] / q['GEMM']:.2f}×** less time than FP32's.",
        f"* Outside its GEMMs qbook spends {outside:.0f} ms per forward, {outside / q['total']:.0%} of its time; "
        f"attention alone {q['attention']:.0f} ms (FP32: {fp32['attention']:.0f} ms)."])


def int8_agreement_table(paths: list[str | Path]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The ``benchmarks/int8_agreement.py`` results at ``paths`` (those that exist): one row per run (its model and
    date: two runs on one model keep a row each) and int8 route (8-bit codes, 7-bit inputs or weights, bf16
    attention; older files have the first only) with both models' dev accuracy, the gap against the route's target,
    the logits' differences and the run's CPU; and the records (with their notes) for
    ``qlib.experiments.report.notes_markdown``."""
    rows, records = {}, []
    for path in (Path(p) for p in paths):
        if not path.is_file():
            continue
        a = read_result(path)
        records.append(a)
        trained = a.get("trained")
        model = (f"QAT on {trained['train']['train_examples']:,} {a['task']} examples, seed {trained['seed']}"
                 if trained else f"checkpoint {Path(a['checkpoint']).name}")
        model += ", integer GELU/softmax/LayerNorm" * (a.get("nonlinearities", "float") != "float")
        model += f", {a['weight_bits']}-bit weights" if a.get("weight_bits", 8) != 8 else ""
        routes = a.get("routes") or {"int8": a | {"scores": a["scores"]["int8"], "target_points": a["target_points"]}}
        for route, r in routes.items():
            if "skipped" in r:
                continue
            fake = r.get("fake_quant_scores", a["scores"]["fake_quant"])  # a compiled route's: on its padded batches
            rows[(f"{model}, {a['provenance']['date'][:16]}", route)] = {
                "examples": a["examples"], "batches": r.get("batches", "padded per batch"),
                "fake-quant acc %": 100 * fake["accuracy"],
                "int8 acc %": 100 * r["scores"]["accuracy"], "gap (points)": r["gap_points"],
                "target (points)": r["target_points"], "within target": r["gap_points"] <= r["target_points"],
                "max |Δlogit|": r["max_abs_logit_diff"], "mean |Δlogit|": r["mean_abs_logit_diff"],
                "same prediction %": 100 * r["same_prediction"], "CPU": a["provenance"]["machine"]["cpu"],
                "commit": (a["provenance"]["git_commit"] or "")[:8]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return (table.rename_axis(["run", "route"]) if rows else table), records


def route_accuracy_lines(table: pd.DataFrame, route: str = "int8_compiled_autotuned") -> str | None:
    """One line per run of ``int8_agreement_table``'s ``table`` that scored ``route`` (default: the compiled,
    autotuned route the AMX speed verdicts rest on): its gap to the fake-quantized model and whether it keeps its
    accuracy target; None where no run scored it."""
    if table.empty or route not in table.index.get_level_values("route"):
        return None
    return "\n".join(
        f"* `{route}` ({run}, {row['CPU']}): {row['gap (points)']:.2f} points from the fake-quantized model on "
        f"{row['examples']} dev examples, {'within' if row['within target'] else 'outside'} its "
        f"{row['target (points)']}-point target." for run, row in table.xs(route, level="route").iterrows())


def seven_bit_qat_lines(records: Sequence[dict[str, Any]], q8bert_results: str | Path) -> str | None:
    """One line per agreement run among ``records`` (``int8_agreement_table``'s) that trained its own QAT model with
    7-bit weights: that model's dev score beside Q8BERT's 8-bit QAT of the same task and seed (its result file under
    ``q8bert_results``) and that QAT's spread over its seeds, and whether the two trained the same model on the same
    examples with the same epochs and learning rate (then the gap is what the narrower weights cost; else the line
    names what differs), and the gap of its 7-bit-weight route, the one a CPU without VNNI runs; None where there is
    no such run."""
    lines, seed_spread = [], functools.cache(_seed_spread)  # each task's results read once
    for a in records:
        trained = a.get("trained")
        if a.get("weight_bits", 8) == 8 or not trained:
            continue
        metric, seed = a["metric"], trained["seed"]
        eight = RunSpec(a["task"], "qat", seed).result_path(q8bert_results)
        seven_score = 100 * a["scores"]["fake_quant"][metric]
        if eight.is_file():
            q8bert = read_json(eight)
            beside = (f"Q8BERT's 8-bit QAT of that seed scores {100 * q8bert['metrics'][metric]:.2f} "
                      f"({_schedule_difference(trained, q8bert)}){seed_spread(eight.parent, metric)}")
        else:
            beside = f"Q8BERT's 8-bit QAT of that seed is not committed (`{eight}`)"
        route = a["routes"].get("int8_7bit_weights", {})
        export = (f"its 7-bit-weight route is {route['gap_points']:.2f} points from it (max |Δlogit| "
                  f"{route['max_abs_logit_diff']:.2g})" if "scores" in route else "its 7-bit-weight route did not run")
        lines.append(f"* QAT with {a['weight_bits']}-bit weights on {trained['train']['train_examples']:,} "
                     f"{a['task']} examples, seed {seed} ({a['provenance']['date'][:16]}): {metric} "
                     f"{seven_score:.2f}; {beside}; {export}.")
    return "\n".join(lines) or None


def _seed_spread(folder: Path, metric: str) -> str:
    """", over its n seeds mean ± std" of Q8BERT's 8-bit QAT runs in ``folder`` (one task's results): how large a
    gap its seeds alone make; "" with fewer than two seeds."""
    scores = pd.Series([100 * r["metrics"][metric] for r in read_results(folder) if r["method"] == "qat"])
    return f", over its {len(scores)} seeds {scores.mean():.2f} ± {scores.std():.2f}" if len(scores) > 1 else ""


def _schedule_difference(run: dict[str, Any], other: dict[str, Any]) -> str:
    """Whether two trained result records share their model, training examples, epochs and learning rate: "the same
    model, examples, epochs and lr", or what differs, "differs: epochs 1 vs 3"."""
    def schedule(record: dict[str, Any]) -> dict[str, Any]:
        return {"model": record["params"]["model"], "examples": record["train"]["train_examples"],
                "epochs": record["params"]["epochs"], "lr": record["params"]["lr"]}

    mine, theirs = schedule(run), schedule(other)
    differences = [f"{key} {mine[key]} vs {theirs[key]}" for key in mine if mine[key] != theirs[key]]
    return "differs: " + ", ".join(differences) if differences else "the same model, examples, epochs and lr"


ATTENTION_ROUNDINGS = ("float32", "bfloat16", "int8")
"""The formats ``benchmarks/attention_rounding.py`` rounds the attention products' inputs to, coarser down the list."""


def attention_rounding_table(paths: list[str | Path]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The ``benchmarks/attention_rounding.py`` runs at ``paths`` side by side: one row per rounding of the two
    attention products' inputs (Q·Kᵀ, P·V: float32, bf16 or int8, multiplied exactly in float32) and the export's
    native bf16 route where it ran; per run (its checkpoint and CPU class) the gap of dev accuracy to the
    fake-quantized model in points, the share of predictions that flip and the mean ``|Δlogit|``. Also the records (with
    their notes) for ``qlib.experiments.report.notes_markdown``."""
    columns, rows, records = {}, set(), []
    for path in (Path(p) for p in paths):
        run = read_result(path)
        records.append(run)
        for name, r in run["routes"].items():
            if "skipped" in r:
                continue
            row = (r["scores_inputs"], r["values_inputs"]) if "scores_inputs" in r else (name, "")
            rows.add(row)
            label = f"{run['checkpoint']}, {run_class(run)}"
            for metric, value in (("gap (points)", r["gap_points"]), ("flips %", 100 * (1 - r["same_prediction"])),
                                  ("mean |Δlogit|", r["mean_abs_logit_diff"])):
                columns.setdefault((label, metric), {})[row] = value
    if not columns:
        return pd.DataFrame(), records
    rank = {rounding: i for i, rounding in enumerate(ATTENTION_ROUNDINGS)}  # float32 first, the native route last
    order = sorted(rows, key=lambda row: [rank.get(part, len(rank)) for part in row])
    return pd.DataFrame(columns).reindex(pd.MultiIndex.from_tuples(order, names=["Q·Kᵀ inputs", "P·V inputs"])), records


def rounding_drift_line(table: pd.DataFrame) -> str | None:
    """How far rounded attention inputs move the logits against float32 products, per run of
    ``attention_rounding_table``'s ``table``: the float32 pair's mean ``|Δlogit|`` and the range over every other
    row."""
    if table.empty:
        return None
    drift = table.xs("mean |Δlogit|", axis=1, level=1)
    exact = drift.loc[("float32", "float32")]
    rounded = drift.drop(index=("float32", "float32"))
    return "\n".join(
        f"* {run}: float32 products {exact[run]:.3f}; any rounded input {rounded[run].min():.3f} to "
        f"{rounded[run].max():.3f} ({rounded[run].min() / exact[run]:.1f}× to {rounded[run].max() / exact[run]:.1f}×)"
        for run in drift.columns)


QAT_ROW = "Q8BERT QAT (the model qbook int8 runs)"


def peer_accuracy_table(paths: list[str | Path], qat_results: str | Path | None = None
                        ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The ``benchmarks/peer_accuracy.py`` runs at ``paths`` side by side: one row for the FP32 model and one per
    post-training peer (skipped peers left out); per run (its checkpoint and CPU class) the dev score in percent, its
    difference to the FP32 model in points (negative: the peer loses) and the share of predictions that flip. With
    ``qat_results`` (the Q8BERT chapter's results folder) also the row ``QAT_ROW``: the Q8BERT QAT run of the run's
    seed against the same FP32 score, where that folder's FP32 row of the seed has the run's FP32 score (the same
    model). Also the records (with their notes) for ``qlib.experiments.report.notes_markdown``."""
    columns, records = {}, []
    for path in (Path(p) for p in paths):
        run = read_result(path)
        records.append(run)
        label, metric = f"{run['checkpoint']}, {run_class(run)}", run["metric"]
        fp32 = 100 * run["fp32_scores"][metric]
        scores = {"FP32": (fp32, 0.0)}
        scores |= {name: (100 * run["peers"][name]["scores"][metric], 100 * (1 - run["peers"][name]["same_prediction"]))
                   for name in run["params"]["peers"].split(",") if "scores" in run["peers"][name]}  # the run's order
        qat = _qat_score(qat_results, run) if qat_results is not None else None
        scores |= {QAT_ROW: (qat, float("nan"))} if qat is not None else {}
        for name, (score, flips) in scores.items():
            for column, value in ((f"{metric} %", score), ("vs FP32 (points)", score - fp32), ("flips %", flips)):
                columns.setdefault((label, column), {})[name] = value
    table = pd.DataFrame(columns)
    return (table.rename_axis("model") if columns else table), records


def _qat_score(qat_results: str | Path, run: dict[str, Any]) -> float | None:
    """The Q8BERT QAT dev score (percent) of the seed of ``run``'s FP32 checkpoint (``fp32-seed<N>``) under
    ``qat_results``, where both rows record the official data files they read and that folder's FP32 row of the seed
    scores what ``run``'s FP32 model scores; else None."""
    seed = re.search(r"fp32-seed(\d+)\.", run["checkpoint"])
    if seed is None:
        return None
    qat, fp32 = (Path(qat_results) / run["task"] / f"{method}-seed{seed[1]}.json" for method in ("qat", "fp32"))
    if not (records_its_data(qat) and records_its_data(fp32)):  # committed on the official files
        return None
    if read_json(fp32)["metrics"][run["metric"]] != run["fp32_scores"][run["metric"]]:
        return None
    return 100 * read_json(qat)["metrics"][run["metric"]]


def peer_accuracy_lines(table: pd.DataFrame) -> str | None:
    """One line per peer of ``peer_accuracy_table``'s ``table``: its difference to the FP32 model in points, mean and
    range over the runs that scored it; None for an empty table."""
    if table.empty:
        return None
    change = table.xs("vs FP32 (points)", axis=1, level=1).drop(index="FP32")
    return "\n".join(
        f"* `{peer}`: {row.mean():+.2f} points from FP32 on average over {row.count()} model(s) "
        f"({row.min():+.2f} to {row.max():+.2f})" for peer, row in change.iterrows() if row.count())


def peer_calibration_line(records: list[dict[str, Any]]) -> str | None:
    """What the calibrating peers of ``peer_accuracy_table``'s runs (its ``records``) saw: per run, the
    ``--calibration-batches`` of training examples and the seed that drew them, as each run records them; None for
    no runs."""
    if not records:
        return None
    runs = [f"{r['checkpoint']}: {r['params']['calibration_batches']} batch(es) drawn with seed {r['params']['seed']}"
            for r in records]
    return ("Calibration (ONNX Runtime static, PT2E, OpenVINO int8) on training examples, in batches of "
            "`benchmarks/peer_accuracy.py`'s `CALIBRATION_BATCH`: " + "; ".join(runs) + ".")


def ipq_decode_table(runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The newest ``benchmarks/ipq_decode.py`` run of each CPU class: per shape and batch, the median ms per forward
    of FP32, of iPQ decoding every weight per forward and of iPQ decoded once at load; iPQ's time over FP32's; and
    the ms to decode every weight once (what loading pays to run at FP32's speed, with FP32's memory)."""
    rows = []
    for cls, run in runs.items():
        for shape, report in run["shapes"].items():
            frame = latency_frame({"shapes": {shape: report}}).pivot_table(
                index=["shape", "batch", "seq"], columns="variant", values="median ms")
            for (shape_, batch, seq), ms in frame.iterrows():
                rows.append({"CPU class": cls, "shape": shape_, "batch": batch, "seq": seq, "FP32 ms": ms["fp32"],
                             "iPQ ms (decode per forward)": ms["ipq"], "iPQ decoded once ms": ms["ipq_decoded_once"],
                             "iPQ / FP32": ms["ipq"] / ms["fp32"],
                             "decode all weights once ms": report["decode_all_ms"]})
    return pd.DataFrame(rows).set_index(["CPU class", "shape", "batch", "seq"]) if rows else pd.DataFrame()


def integer_nonlinearity_speed(runs: dict[str, dict[str, Any]], seq: int = 128) -> pd.DataFrame:
    """The newest ``benchmarks/int8_cpu.py --variants fp32 qbook_int8 qbook_int8_integer`` run of each CPU class
    (``integer_int8-<class>-<time>.json``): per class, shape and batch, the median ms of FP32, of qbook int8 with
    float GELU, softmax and LayerNorm, and with I-BERT's integer ones, and the integer route's time over the float
    one's (above 1: slower)."""
    frames = []
    for shape in ("bert-base", "packaged"):
        table = classes_side_by_side(runs, shape=shape, seq=seq)
        if not table.empty and {"qbook_int8", "qbook_int8_integer"} <= set(table.columns):
            table = table.assign(shape=shape).set_index("shape", append=True)
            table["integer / float nonlinearities"] = table["qbook_int8_integer"] / table["qbook_int8"]
            frames.append(table)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames).reorder_levels(["CPU class", "shape", "batch"]).sort_index()
