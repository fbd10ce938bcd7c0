"""What the int8 benchmark's result files say (``benchmarks/int8_cpu.py``): its targets per CPU class, and the
tables the speed chapter shows, one row per committed run or per CPU class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qlib.cpu import cpu_class
from qlib.results import notes_for, read_json

TARGETS: dict[str, dict[str, float]] = {
    "AMX": {"openvino_int8": 1.0, "ort_int8": 1.25, "ort_qdq_static": 1.25, "torch_bf16": 1.5},
    "AVX-512 VNNI": {"fp32": 3.7, "ort_int8": 1.25, "ort_qdq_static": 1.25, "openvino_int8": 1.0},
    "AVX2": {"ao_dynamic": 1.0},
}
"""qbook int8's speed-up wanted over each variant, per CPU class (issue 21: BERT-base shape, sequence 128, batch 1
and 8, ratios of medians from one run of the benchmark, 2 threads, quiet CPU)."""


def run_class(run: dict[str, Any]) -> str:
    """A benchmark run's CPU class: recorded by the run, else read from its provenance's ISA features."""
    return run.get("cpu", {}).get("class") or cpu_class(run["provenance"]["machine"].get("cpu_features") or ())


def benchmark_runs(folder: str | Path, pattern: str = "int8_cpu*.json") -> list[dict[str, Any]]:
    """Every committed run of the benchmark in ``folder``, oldest first, each with its ``path``, ``class`` and the
    ``notes`` attached to it in ``results/notes.toml``."""
    runs = [read_json(p) | {"path": str(p)} for p in sorted(Path(folder).glob(pattern))]
    runs = [r | {"class": run_class(r), "notes": notes_for(r["path"])} for r in runs]
    return sorted(runs, key=lambda r: r["provenance"]["date"])


def latest_per_class(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest run of each CPU class (runs that recorded no class are left out)."""
    return {r["class"]: r for r in runs if r["class"]}


def latency_frame(benchmark: dict[str, Any]) -> pd.DataFrame:
    """A ``benchmarks/int8_cpu.py`` result as one row per (shape, batch, seq, variant) with its median ms."""
    rows = []
    for shape, report in benchmark["shapes"].items():
        for point, timings in report["latency"].items():
            batch, seq = (int(part.lstrip("batchseq")) for part in point.split("-"))
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


def verdicts(runs: dict[str, dict[str, Any]], shape: str = "bert-base", seq: int = 128) -> pd.DataFrame:
    """Per CPU class and batch, qbook int8's speed-up over each variant its class has a target for, the target,
    and whether the run meets it (ratios of medians measured side by side in that run)."""
    rows = []
    table = classes_side_by_side(runs, shape, seq)
    for (cls, batch), ms in table.iterrows():
        for other, want in TARGETS.get(cls, {}).items():
            if "qbook_int8" in ms and other in ms and pd.notna(ms[other]) and pd.notna(ms["qbook_int8"]):
                ratio = ms[other] / ms["qbook_int8"]
                rows.append({"CPU class": cls, "batch": batch, "qbook int8 vs": other, "speed-up": ratio,
                             "target": want, "verdict": "meets" if ratio >= want else "misses"})
    return pd.DataFrame(rows, columns=["CPU class", "batch", "qbook int8 vs", "speed-up", "target", "verdict"])


def limits(runs: dict[str, dict[str, Any]], variants: tuple[str, ...] = ("qbook_int8", "pt2e_inductor")
           ) -> pd.DataFrame:
    """Per CPU class, its measured peaks (GOP/s of a large int8 and a large FP32 GEMM) and how close each profiled
    variant's GEMMs and whole forward come to the int8 peak (BERT-base shape, the profile's batch)."""
    rows = []
    for cls, run in runs.items():
        peaks = run.get("limits")
        if not peaks:
            continue
        row = {"CPU class": cls, "int8 GEMM peak (GOP/s)": peaks.get("int8_gemm_gops"),
               "FP32 GEMM peak (GOP/s)": peaks.get("fp32_gemm_gops")}
        for name in variants:
            got = run["shapes"]["bert-base"].get("achieved_gops", {}).get(name)
            if got and peaks.get("int8_gemm_gops"):
                for part in ("gemm", "forward"):
                    if got[f"{part}_gops"]:
                        row[f"{name} {part} (% of int8 peak)"] = 100 * got[f"{part}_gops"] / peaks["int8_gemm_gops"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("CPU class") if rows else pd.DataFrame()


def agreement(run: dict[str, Any], shape: str = "bert-base") -> pd.DataFrame:
    """Each variant's max |Δlogit| and class agreement against the fake-quantized model and FP32, as the run
    measured them on one batch of random tokens."""
    return pd.DataFrame(run["shapes"][shape].get("agreement", {})).T
