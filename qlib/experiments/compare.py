"""Every method side by side: one row per (chapter, method) of a task, read from the result files.

A row names its paper, its bits (weights / embedding / activations) as read from the quantization its model was
evaluated with (its ``RunSpec``'s ``quant_config``), how it was trained, its dev score over seeds, its relative drop
against the FP32 runs of its own chapter on the same seeds, (FP32 − row) / FP32, the measured size of its bit-packed
file, and, where a CPU kernel runs its scheme, the latency ratio against FP32 from an ``int8_cpu`` benchmark. Nothing
here trains or evaluates: sizes are measured by converting a copy of the model the way each row was quantized and saving
it."""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from qlib.bert.config import BertQuantConfig
from qlib.core.ternary import TernarySpec
from qlib.deploy.checkpoint import size_mb
from qlib.experiments.distill import MODES as DISTILLATION_MODES
from qlib.experiments.report import (
    baseline_over_seeds,
    drop_text,
    mean_std,
    mean_std_text,
    relative_drop,
    runs_frame,
)
from qlib.experiments.results import read_results
from qlib.experiments.spec import RunSpec
from qlib.experiments.speed import latency_frame

KERNELS = {"FP32": ("fp32",), "Q8BERT (DQ)": ("ao_dynamic",), "Q8BERT (QAT)": ("qbook_int8_compiled", "qbook_int8"),
           "I-BERT (integer-only)": ("qbook_int8_integer",)}
"""Which benchmark variants run a row's scheme on the CPU, per ``RunSpec.paper``; the first one a run measured counts:
DQ's per-batch 8-bit inputs are torch.ao's dynamic int8 Linear; Q8BERT QAT's learned 8-bit ranges are
``qlib.deploy.int8``, compiled whole (``to_int8(..., compile=True)``) where the run measured that, else eager; with
integer nonlinearities, the same export with I-BERT's integer GELU, softmax and LayerNorm between its GEMMs. The other
papers' rows have no low-bit kernel here."""


def records_by_group(results_dir: str | Path, tasks: Sequence[str],
                     groups: Mapping[str, Mapping[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """The result records of ``tasks`` that ``side_by_side`` compares, per group of rows sharing an FP32 baseline.

    Args:
        results_dir: the folder holding each chapter's results (``<folder>/<task>/*.json``).
        tasks: the tasks to read.
        groups: group → {folder under ``results_dir`` → a glob pattern on the rows' labels}: e.g.
            ``{"Q8BERT": {"q8bert": "*", "beyond": "qat*"}}`` takes every Q8BERT row and the integer-only QAT rows of
            the "Beyond the papers" chapter, whose FP32 reference is Q8BERT's.
    """
    return {group: [record for folder, pattern in folders.items() for task in tasks
                    for record in read_results(Path(results_dir) / folder / task)
                    if fnmatch.fnmatchcase(record["method"], pattern)]
            for group, folders in groups.items()}


def bits_of(config: BertQuantConfig | None) -> dict[str, str]:
    """The bit widths a config gives the encoder weights (``2/3 MP`` when layers differ; with the Quant-Noise rate
    it trains at), their ranges (scheme, per tensor / G groups / per row, clipping), the embedding tables and the
    Linears' inputs (with how their ranges are set); ``32`` where a tensor stays in float. Ternary weights (TWN) are
    2 bits, their ranges ``ternary (TWN)``."""
    if config is None:
        return {"weights": "32", "weight ranges": "", "embedding": "32", "inputs": "32"}
    layer_quants = [config.default, *config.layers.values()]
    widths = sorted({q.weight.bits if q.weight is not None else 32 for q in layer_quants})
    weight, inputs, noise = config.default.weight, config.default.activation, config.default.noise_rate
    ranges = ""
    if isinstance(weight, TernarySpec):
        ranges = "ternary (TWN), " + ("per tensor" if weight.groups == 1 else f"{weight.groups} groups")
    elif weight is not None:
        extent = {"tensor": "per tensor", "channel": "per row",
                  "group": f"{weight.groups} group{'s' if weight.groups != 1 else ''}"}[weight.granularity]
        clipped = f"[{100 - weight.percentile:g}, {weight.percentile:g}] pct" if weight.percentile else "min/max"
        ranges = f"{weight.scheme}, {extent}, {clipped}"
    observed = {"ema": "EMA", "dynamic": "per batch", "minmax": "calibrated"}[config.default.observer]
    return {"weights": "/".join(map(str, widths)) + (" MP" if len(widths) > 1 else "")
            + (f", Quant-Noise p={noise:g}" if noise < 1 else ""),
            "weight ranges": ranges,
            "embedding": str(config.embeddings.bits) if config.embeddings is not None else "32",
            "inputs": f"{inputs.bits} ({observed})" if inputs is not None else "32"}


def row_of(spec: RunSpec) -> dict[str, str]:
    """A row's bits (``bits_of`` its quantization), with iPQ's weights named as what they are: k centroids per
    layer (8-bit centroids and inputs for iPQ + int8), after training with PQ noise at p where it did."""
    bits = bits_of(spec.quant_config())
    if spec.method == "ipq":
        bits["weights"] = (f"iPQ, k = {spec.centroids}" + (f", {spec.centroid_bits}-bit centroids"
                                                           if spec.centroid_bits else "")
                           + (f", PQ noise p={spec.noise_rate:g} first" if spec.noise_rate < 1 else ""))
        bits["weight ranges"] = "codebook per layer"
    return bits


def sizes_of(spec: RunSpec, model: nn.Module, folder: str) -> dict[str, float]:
    """The measured file of ``model`` quantized as ``spec``'s row (``qlib.deploy.checkpoint.size_mb``'s MB: file,
    embedding, the rest, codes): bit-packed; an iPQ row's with its codes and float16 codebooks (and 8-bit centroids
    for iPQ + int8)."""
    if spec.method == "ipq":
        return size_mb(model, spec.quant_config(), folder, torch.float16, ipq_centroids=spec.centroids,
                       ipq_centroid_bits=spec.centroid_bits)
    return size_mb(model, spec.quant_config(), folder)


def training_of(record: Mapping[str, Any]) -> str:
    """How a record's model was made: post-training rows train nothing; others fine-tune for their epochs, from
    the pretrained model or from an FP32 checkpoint (``init_from``), distilled from that checkpoint where they were."""
    spec = RunSpec.from_record(record)
    if spec.is_post_training:
        return "none: quantized after FP32 fine-tuning"
    start = "the FP32 Baseline" if spec.init_from else "pretrained"
    kind = {"fp32": "FP32", "ipq": "iPQ stages, each fine-tuned"}.get(spec.method, "QAT")
    if spec.method == "ipq" and spec.noise_rate < 1:
        kind = "PQ noise, then iPQ stages, each fine-tuned"
    if spec.distillation:
        kind = f"QAT distilled on {DISTILLATION_MODES[spec.distillation]}"  # the teacher: the model it starts from
    epochs = spec.protocol.epochs
    return f"{kind}, {epochs} epoch{'s' if epochs != 1 else ''} from {start}"


def side_by_side(sources: Mapping[str, Sequence[Mapping[str, Any]]], model: nn.Module,
                 benchmark: Mapping[str, Any] | None = None, shape: str = "packaged", batch: int = 8,
                 seq: int = 128) -> pd.DataFrame:
    """Every method of every task in ``sources`` (chapter name → its result records), one row each, with the
    measured file size of ``model`` quantized as that row and, given a ``benchmark``, the CPU latency vs FP32 at
    (``shape``, ``batch``, ``seq``). Columns: task, chapter, method, paper, weights, weight ranges, embedding,
    inputs, training, score, seeds, mean, drop vs FP32 (%), file (MB), file vs FP32, CPU latency vs FP32; per
    task, each chapter's rows from the largest file to the smallest."""
    latency = pd.Series(dtype=float)
    if benchmark is not None:
        frame = latency_frame(benchmark).query("shape == @shape and batch == @batch and seq == @seq")
        if frame.empty:
            raise ValueError(f"the benchmark has no point {shape} batch {batch} seq {seq}")
        latency = frame.set_index("variant")["median ms"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sizes = {"fp32": size_mb(model, None, folder)["file_mb"]}
        for order, (chapter, records) in enumerate(sources.items()):
            for task in dict.fromkeys(r["task"] for r in records):
                task_records = [r for r in records if r["task"] == task]
                runs = runs_frame(task_records)
                summary = mean_std(runs).droplevel("task")
                fp32_same_seeds = baseline_over_seeds(runs)
                scores = mean_std_text(summary)
                first = {r["method"]: r for r in reversed(task_records)}
                for label, record in first.items():
                    spec = RunSpec.from_record(record)
                    if label not in sizes:
                        sizes[label] = sizes_of(spec, model, folder)["file_mb"]
                    reference, mean = fp32_same_seeds.get(label, float("nan")), summary["mean"][label]
                    kernel = next((k for k in KERNELS.get(spec.paper, ()) if k in latency), None)
                    rows.append({
                        "task": task, "order": order, "chapter": chapter, "method": label, "paper": spec.paper,
                        **row_of(spec), "training": training_of(record), "score": scores[label],
                        "seeds": int(summary["seeds"][label]), "mean": mean,
                        "drop vs FP32 (%)": relative_drop(reference, mean),
                        "file (MB)": sizes[label],
                        "file vs FP32": sizes[label] / sizes["fp32"],
                        "CPU latency vs FP32": latency.get(kernel, float("nan")) / latency.get("fp32", float("nan"))})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["task", "order", "file (MB)", "method"],
                                           ascending=[True, True, False, True])
    return table.drop(columns="order").reset_index(drop=True)


def pareto(table: pd.DataFrame) -> pd.DataFrame:
    """Per task, the rows of a ``side_by_side`` table that no row with a file at most as large beats on mean
    score: the measured size–accuracy front, smallest file first."""
    keep = []
    for _, rows in table.groupby("task", sort=False):
        best = float("-inf")
        for index, row in rows.sort_values(["file (MB)", "mean"], ascending=[True, False]).iterrows():
            if row["mean"] > best:
                keep.append(index)
                best = row["mean"]
    return table.loc[keep]


SURVEY_COLUMNS = ("memory vs BERT", "inference speed", "accuracy")


def survey_table(table: pd.DataFrame, task: str, rows: Mapping[str, str],
                 survey: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """The survey's comparison of the three papers, re-measured: for each paper, the ``side_by_side`` row of
    ``task`` whose label ``rows`` names (its headline setting): its measured file against FP32, its CPU time against
    FP32 ("decoded" where no integer kernel runs its scheme: the weights are decoded to float), its accuracy drop
    against its FP32 runs and its seeds, each beside the ``survey``'s own entry (``SURVEY_COLUMNS``); "not run yet"
    where the row is not committed.

    Returns:
        One column per paper of ``rows``; one row per quantity, ours above the survey's (short cells, so the table
        fits a page column).
    """
    ours = table[table["task"] == task].set_index("method") if not table.empty else pd.DataFrame()
    out = {}
    for paper, label in rows.items():
        row = ours.loc[label] if label in ours.index else None
        entry = survey.get(paper, {})
        latency = float("nan") if row is None else row["CPU latency vs FP32"]
        out[paper] = {
            "memory vs FP32 (ours)": "not run yet" if row is None else f"{100 * row['file vs FP32']:.1f} %",
            "memory vs BERT (survey)": entry.get("memory vs BERT", "—"),
            "CPU time vs FP32 (ours)": ("not run yet" if row is None else "decoded" if pd.isna(latency)
                                        else f"{latency:.2f}×"),
            "inference speed (survey)": entry.get("inference speed", "—"),
            "accuracy drop vs FP32 (ours)": "not run yet" if row is None else drop_text(row["drop vs FP32 (%)"], " %"),
            "accuracy (survey)": entry.get("accuracy", "—"),
            "seeds (ours)": 0 if row is None else int(row["seeds"])}
    return pd.DataFrame(out)
