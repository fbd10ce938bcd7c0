"""What the two Q-BERT chapters show, built from the committed results: the committed spectra side by side (Q-BERT
I); the measured size of every setting, each task's main table with its verdicts and protocol, the float16-floats
check, the comparison of the two spectra that can set the MP rows' bits, the two range choices and the group-wise
ablation (Q-BERT II).

Every function reads result files and returns tables (``pandas``) and sentences (Markdown strings); nothing here trains.
Scores are percent; a drop is ``qlib.experiments.report.relative_drop`` against the FP32 Baseline on the same seeds."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from qlib.bert.config import qbert_config
from qlib.deploy.checkpoint import size_mb
from qlib.experiments.data import read_same_data
from qlib.experiments.experiment import protocol_for
from qlib.experiments.papers import QBERT_CLAIMS
from qlib.experiments.progress import dev_set_size, estimated_hours, grouped_speedups, on_cpu, random_batches_caveat
from qlib.experiments.protocol import baseline_job
from qlib.experiments.qbert import (
    DIRECTQ_BITS,
    MIXED_SETTINGS,
    QBERT_PERCENTILE,
    main_table_rows,
    mixed_layer_bits,
    setting_spec,
)
from qlib.experiments.report import (
    PROTOCOL_COLUMNS,
    baseline_over_seeds,
    constant_answer_scores,
    data_caveat,
    drop_text,
    mean_std,
    mean_std_text,
    notes_markdown,
    protocol_frame,
    relative_drop,
    runs_frame,
    same_seeds,
)
from qlib.experiments.results import (
    read_json,
    read_result,
    read_results,
    records_data,
    records_its_data,
)
from qlib.experiments.spec import RunSpec
from qlib.experiments.tasks import get_run_task
from qlib.second_order.sensitivity import negative_curvature

SIZE_COLUMNS = {"without_embedding_mb": "w/o embedding (MB)", "codes_without_embedding_mb": "of which codes (MB)",
                "embedding_mb": "embedding (MB)", "file_mb": "file (MB)"}
"""``qlib.deploy.checkpoint.size_mb``'s keys as the chapter's column headers."""

def committed_spectra(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every spectrum committed under ``folder`` (``spectrum-<task>.json``, measured on the task's FP32 Baseline)
    and under ``folder/short-finetune`` (named "<task>, short fine-tune"), each with its ``path`` and ``notes``."""
    folder = Path(folder)
    paths = {p.stem.removeprefix("spectrum-"): p for p in sorted(folder.glob("spectrum-*.json"))}
    paths |= {f"{p.stem.removeprefix('spectrum-')}, short fine-tune": p
              for p in sorted(folder.glob("short-finetune/spectrum-*.json"))}
    return {name: read_result(p) for name, p in paths.items()}


def _unsound(block: Mapping[str, Any]) -> str:
    """Why a block's Ω is carried by its spread over subsets rather than one curvature; "" if it is not."""
    negative = negative_curvature(block["top"])["negative_top_subsets"]
    return ", ".join([f"top λ negative on {negative} of {len(block['top'])} subsets"] * bool(negative)
                     + ["did not converge"] * (not block["converged"]))


def spectra_across_tasks(spectra: Mapping[str, Mapping[str, Any]], setting: str = "Q-BERT_MP 2/3") -> list[Any]:
    """The committed ``spectra`` (``committed_spectra``) side by side: Ω per block, the layers ``setting`` raises to
    its higher width on each, which of those rest on an unsound Ω (``_unsound``), the Spearman rank correlation of
    the encoder layers' Ω between spectra, and each spectrum's protocol and soundness counts.

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``); a sentence alone with fewer than two
        spectra.
    """
    if len(spectra) < 2:
        return [f"*Only {len(spectra)} committed spectrum: the comparison needs two.*"]
    mixed = MIXED_SETTINGS[setting]
    high = max(mixed["choices"])
    omegas = pd.DataFrame({t: {n: b["omega"] for n, b in s["blocks"].items()} for t, s in spectra.items()})
    raised = {t: sorted(n.removeprefix("encoder.layer.")
                        for n, b in mixed_layer_bits(s, mixed["choices"], mixed["target_bits"]).items() if b == high)
              for t, s in spectra.items()}
    shaky = {t: [f"layer {n.removeprefix('encoder.layer.')} ({why})" for n, b in s["blocks"].items()
                 if n.removeprefix("encoder.layer.") in raised[t] and (why := _unsound(b))]
             for t, s in spectra.items()}
    protocol = pd.DataFrame({t: {
        "model": s["params"]["model"],
        "measured on": ("FP32 Baseline" if s["params"].get("init_from")
                        else f"{s['params']['finetune_examples']}-example fine-tune"),
        "subsets × size": f"{s['params']['subsets']} × {s['params']['subset_size']}",
        "tokens per example (at most)": s["params"]["max_length"],
        "spectrum min": round(s["spectrum_seconds"] / 60, 1),
        "blocks converged": f"{sum(b['converged'] for b in s['blocks'].values())} of {len(s['blocks'])}",
        "blocks with a negative top λ": sum(negative_curvature(b["top"])["negative_curvature"]
                                            for b in s["blocks"].values()),
        "commit": (s["provenance"]["git_commit"] or "")[:8]} for t, s in spectra.items()}).T
    return [omegas.round(3),
            f"Layers at {high} bits in {setting}: " + "; ".join(f"**{t}**: {', '.join(layers)}"
                                                                for t, layers in raised.items()),
            "Of those, raised on an unsound Ω: " + "; ".join(f"**{t}**: {', '.join(layers) or 'none'}"
                                                             for t, layers in shaky.items()),
            "Spearman rank correlation of the encoder layers' Ω between tasks:",
            omegas[omegas.index.str.startswith("encoder.")].corr(method="spearman").round(2),
            protocol, notes_markdown(spectra.values())]


def negative_blocks(spectrum: Mapping[str, Any]) -> list[str]:
    """The blocks of ``spectrum`` whose smallest eigenvalue, or the top one on some subset, is clearly negative
    (``negative_curvature``), named without their ``encoder.`` prefix: where its model is not at a minimum of
    some subset's loss."""
    return [block.removeprefix("encoder.") for block, b in spectrum["blocks"].items()
            if negative_curvature(b["top"], b["smallest"][0] if b.get("smallest") else None)["negative_curvature"]]


def saddle_points(spectra: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per committed spectrum, whether its model sits at a saddle point (Q-BERT found SQuAD's does): its blocks with
    negative curvature (``negative_blocks``) on the subsets the spectrum measures, or that none has. A subset's
    Hessian is an estimate of the training loss's: ``batch_size_verdicts`` says how the sign holds up on larger
    batches."""
    said = []
    for name, spectrum in spectra.items():
        negative = negative_blocks(spectrum)
        measured = sum(bool(b.get("smallest")) for b in spectrum["blocks"].values())
        altered = not records_data(spectrum)
        title = f"**{name}**" + " (on the earlier, altered copy of the data)" * altered
        size = spectrum.get("params", {}).get("subset_size")
        on = f" on subsets of {size} examples" if size else ""
        said.append(f"{title}: negative curvature in {len(negative)} of {len(spectrum['blocks'])} blocks "
                    f"({', '.join(negative)}){on}: not a minimum of those subsets' loss, a saddle point by Q-BERT's "
                    "test" if negative else
                    f"{title}: no block shows negative curvature ({measured} smallest eigenvalues measured{on}): "
                    "consistent with a local minimum")
    return said


def batch_size_effect(spectra: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame | None:
    """The batch-size study of each spectrum that has one (``run_spectrum``'s ``batch_sizes``): one row per (task,
    Hessian batch size B), smallest size first, the block measured, its top eigenvalue's mean and std over the batches,
    their count, how many of them have a negative top eigenvalue, the first batch's λ·B, and whether every power
    iteration converged; None when no spectrum has it.

    Each size's batches are the first examples of one seeded shuffle, so each size's first batch begins with every
    smaller size's. If one example's Hessian H₁ dominates the batch's, H_B = (1/B) Σᵢ Hᵢ ≈ H₁ / B and λ·B stays
    near λ_max(H₁) as B grows; if the examples shared one direction of curvature, λ itself would stay near constant."""
    rows = [{"task": name, "block": study["block"], "batch size": int(size), "mean λ": pd.Series(m["top"]).mean(),
             "std λ": pd.Series(m["top"]).std(), "batches": len(m["top"]), "negative λ": sum(t < 0 for t in m["top"]),
             "first batch λ·B": m["top"][0] * int(size), "converged": m["converged"]}
            for name, s in spectra.items() if (study := s.get("batch_size_effect")) and study["sizes"]
            for size, m in sorted(study["sizes"].items(), key=lambda item: int(item[0]))]
    return pd.DataFrame(rows).set_index(["task", "batch size"]).round(2) if rows else None


def batch_size_verdicts(study: pd.DataFrame) -> list[str]:
    """For each task of ``batch_size_effect``'s table: on how many batches of each size its block's top eigenvalue
    is negative, whether that negative curvature is still seen at the largest size measured, and (when every first
    batch's λ is positive) how far the first batch's λ·B moves over the sizes. A small batch's Hessian is one estimate
    of the training loss's (their mean): a sign seen only on small batches may be theirs alone."""
    said = []
    for task, rows in study.groupby(level="task", sort=False):
        rows = rows.droplevel("task")
        counts = ", ".join(f"{n} of {b} batches of {size}" for size, n, b in zip(rows.index, rows["negative λ"],
                                                                                 rows["batches"]))
        largest, negative = rows.index[-1], rows["negative λ"]
        verdict = ("no batch has one" if not negative.any() else
                   f"still seen at {largest} examples" if negative.iloc[-1] else
                   f"the negative curvature of the smaller batches is not seen at {largest} examples")
        scaled = rows["first batch λ·B"]
        spread = (f"; the first batch's λ·B goes from {scaled.min():.4g} to {scaled.max():.4g} over the sizes (a "
                  f"factor of {scaled.max() / scaled.min():.2f})" if (scaled > 0).all() else "")
        said.append(f"**{task}** ({rows['block'].iloc[0]}): a negative top λ on {counts}: {verdict}{spread}")
    return said


def size_table(model: nn.Module, rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The measured size of each row of ``rows`` (``qlib.experiments.qbert.main_table_rows``): the bytes of its real
    bit-packed file for ``model`` (``qlib.deploy.checkpoint.size_mb``; the Baseline row is the FP32 file), embedding
    apart, and each against the Baseline's.

    Returns:
        One row per setting: ``w-bits``, ``e-bits``, the four ``SIZE_COLUMNS``, and ``w/o embedding vs FP32 (%)``
        and ``file vs FP32 (%)``.
    """
    with tempfile.TemporaryDirectory() as folder:
        measured = pd.DataFrame({name: size_mb(model, row["config"], folder) for name, row in rows.items()}).T
    table = pd.DataFrame({"w-bits": [r["w_bits"] for r in rows.values()],
                          "e-bits": [r["e_bits"] for r in rows.values()]}, index=list(rows))
    table = table.join(measured.rename(columns=SIZE_COLUMNS)[list(SIZE_COLUMNS.values())])
    for column in ("w/o embedding", "file"):
        table[f"{column} vs FP32 (%)"] = 100 * table[f"{column} (MB)"] / table.loc["Baseline", f"{column} (MB)"]
    return table


def size_findings(model: nn.Module, rows: Mapping[str, Mapping[str, Any]], sizes: pd.DataFrame,
                  target: float = 0.08) -> list[str]:
    """What the sizes say about the 2/3-bit MP row (none without it): its encoder file against FP32 and the 8 %
    target, what is codes and what is float, and the same file with float16 floats (measured here, as GPTQ- and
    AWQ-packed files store them)."""
    if "Q-BERT_MP 2/3" not in rows:
        return []
    with tempfile.TemporaryDirectory() as folder:
        half = size_mb(model, rows["Q-BERT_MP 2/3"]["config"], folder, float_dtype=torch.float16)
    fp32 = sizes.loc["Baseline", "w/o embedding (MB)"]
    share = sizes.loc["Q-BERT_MP 2/3", "w/o embedding (MB)"] / fp32
    codes = sizes.loc["Q-BERT_MP 2/3", "of which codes (MB)"] / fp32
    half_share = half["without_embedding_mb"] / fp32
    compression = QBERT_CLAIMS["weight_compression"]
    return [
        f"The 2/3-bit MP encoder file (embedding apart) is **{share:.2%}** of the FP32 one "
        f"({'within' if share <= target else 'above'} the {100 * target:g} % target; the paper reports "
        f"{compression:g}×, {1 / compression:.1%}). The packed weight codes alone are **{codes:.2%}**; the other "
        f"{share - codes:.2%} is float: biases, LayerNorm, the classifier head, the activation ranges and one scale "
        "and offset per group, which the paper's weight-only ratio leaves out. A DirectQ row is its Q-BERT row's file "
        "without the activation ranges (it computes them per batch).",
        f"Stored the way GPTQ- and AWQ-packed files store them, with the biases, LayerNorm and head in float16 "
        f"(`save_quantized(..., float_dtype=torch.float16)`; the grids and activation ranges stay float32), the same "
        f"2/3-bit MP file is **{half_share:.2%}** of FP32 ({'within' if half_share <= target else 'above'} the "
        f"{100 * target:g} % target). Float16 rounds each of those values by at most 2⁻¹¹ of itself, but through the "
        "8-bit activation grids a change that small can move a value to the next step, so the file is not the same "
        "model. The scores below were measured with float32 floats; `benchmarks/float16_floats.py` measures what "
        "float16 floats change on a kept run's dev set:"]


def float16_floats(results_dir: str | Path, sizes: pd.DataFrame) -> tuple[pd.DataFrame | None, list[str]]:
    """The committed runs of ``benchmarks/float16_floats.py`` (``<results_dir>/../benchmarks``): one row per kept
    run with its score with float32 and float16 floats, the drop against its FP32 Baseline and the float16 file's
    share of FP32; and per 2/3-bit MP run, whether both of Q-BERT's targets hold at once. ``(None, [note])`` when
    none is committed."""
    results_dir = Path(results_dir)
    runs = [read_result(p) for p in sorted(results_dir.parent.glob("benchmarks/float16_floats-*.json"))]
    if not runs:
        return None, ["*No committed `float16_floats` run yet.*"]
    fp32_mb = sizes.loc["Baseline", "w/o embedding (MB)"]
    table = []
    for r in runs:
        fp32_path = results_dir / r["task"] / f"fp32-seed{r.get('seed')}.json"
        fp32 = read_json(fp32_path) if fp32_path.is_file() else None
        # a drop only against the Baseline on the same data: a run on the earlier, altered copy has none left once
        # the Baseline's re-run on the official files has replaced that file
        same_data = fp32 is not None and read_same_data(fp32["provenance"].get("data"), r["provenance"].get("data"))
        fp32_score = fp32["metrics"][r["metric"]] if same_data else None
        half_score = r["scores"]["float16"][r["metric"]]
        table.append({
            "task": r["task"], "run": Path(r["result"]).as_posix().removeprefix("results/"), "metric": r["metric"],
            "float32 floats": 100 * r["scores"]["float32"][r["metric"]], "float16 floats": 100 * half_score,
            "float16 drop vs FP32 (%)": relative_drop(fp32_score, half_score) if fp32_score else None,
            "float16 file w/o embedding vs FP32 (%)": r["sizes_bytes"]["float16"]["other"] / 1e6 / fp32_mb * 100,
            "max |Δlogit|": r["max_abs_logit_diff"], "same prediction": r["same_prediction"],
            "dev examples": r["examples"], "commit": (r["provenance"]["git_commit"] or "")[:8],
            "mp 2/3": sorted(set((r.get("layer_bits") or {}).values())) == [2, 3]})
    table = pd.DataFrame(table).set_index(["task", "run"])
    bound = QBERT_CLAIMS["max_accuracy_loss_percent"]
    sentences = [data_caveat(runs)]
    for (task, run), r in table[table["mp 2/3"]].iterrows():
        if pd.isna(r["float16 drop vs FP32 (%)"]):
            sentences.append(f"`{run}`'s float16 run has no drop beside it: no FP32 Baseline of its seed on the same "
                             "data is committed (a run on the earlier, altered copy is compared with nothing once its "
                             "Baseline has been re-run on the official files; `benchmarks/float16_floats.py` measures "
                             "the re-trained model when it lands).")
            continue
        met = r["float16 file w/o embedding vs FP32 (%)"] <= 8 and r["float16 drop vs FP32 (%)"] <= bound
        sentences.append(
            f"The 2/3-bit MP model of `{run}` stored with float16 floats is a file of "
            f"**{r['float16 file w/o embedding vs FP32 (%)']:.2f} %** of FP32 (embedding apart) and scores "
            f"**{r['float16 floats']:.2f}** on {task.upper()} dev, measured on that file: a drop of "
            f"{r['float16 drop vs FP32 (%)']:+.2f} % against its FP32 Baseline. Both targets at once (≤ 8 % and "
            f"≤ {bound:g} %): " + ("**met**." if met else "**not met**."))
    return table.drop(columns="mp 2/3").round(4), sentences


@dataclass
class TaskTable:
    """One task's main table and what goes with it. ``summary``: mean, std and seeds per result label; ``runs``: one row
    per result (``qlib.experiments.report.runs_frame``); ``table``: the sizes beside each row's score, drop and margin
    kept; ``verdicts``: Markdown bullets; ``protocol`` (None without runs) and ``notes``; ``drops``: each scored row's
    relative drop against FP32 on the same seeds (%, by row name; positive: a loss)."""

    task: str
    metric: str
    rows: dict[str, dict[str, Any]]
    summary: pd.DataFrame
    runs: pd.DataFrame
    table: pd.DataFrame
    caveat: str
    verdicts: list[str] = field(default_factory=list)
    protocol: pd.DataFrame | None = None
    notes: str = ""
    drops: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))

    def parts(self) -> list[Any]:
        """What the chapter shows for this task, in order (``qlib.experiments.report.show``)."""
        return [f"### {self.task.upper()}: dev {self.metric} (%)", self.table, self.caveat,
                "\n".join(f"* {v}" for v in self.verdicts) or None,
                None if self.protocol is None else
                "Protocol of each trained run (a Baseline run's wall time includes its DirectQ evaluations):",
                self.protocol, self.notes or None]


def seed_drops(runs: pd.DataFrame, label: str) -> pd.Series:
    """``label``'s relative drop against FP32 (%, ``relative_drop``) on each seed both have in one task's
    ``runs_frame``, by seed (empty where they share none)."""
    pairs = same_seeds(runs, label, "fp32")
    return relative_drop(pairs["fp32"], pairs[label])


def per_seed_drops(runs: pd.DataFrame, label: str) -> str:
    """``seed_drops`` as a verdict's tail ("" for one seed): a mean near the paper's bound reads differently when the
    seeds straddle it."""
    drops = seed_drops(runs, label)
    if len(drops) < 2:
        return ""
    return " (per seed: " + ", ".join(f"{d:+.2f} on seed {seed}" for seed, d in drops.items()) + ")"


def above_every_seed(tables: Mapping[str, TaskTable], name: str, task: str) -> str:
    """Whether ``task``'s drop at row ``name`` exceeds every other task's on every seed: its smallest per-seed drop
    (``seed_drops``) against the largest of the other tasks that ran the row, as a verdict's tail. A mean over
    three seeds and a single seed's drop differ in noise; this says whether the order could change with the seed."""
    per_seed = {t: seed_drops(table.runs, table.rows[name]["label"]) for t, table in tables.items()
                if name in table.rows and name in table.drops}
    others = {(t, seed): d for t, drops in per_seed.items() if t != task for seed, d in drops.items()}
    if not others or per_seed[task].empty:
        return ""
    low_seed, (high_task, high_seed) = per_seed[task].idxmin(), max(others, key=others.get)
    low, high = per_seed[task][low_seed], others[high_task, high_seed]
    return (f"; on every seed: {task}'s smallest drop ({low:+.2f} on seed {low_seed}) is "
            + ("above" if low > high else "not above") + f" the others' largest ({high_task} {high:+.2f} on seed "
            f"{high_seed})")


def main_table(task: str, rows: Mapping[str, dict[str, Any]], sizes: pd.DataFrame, results_dir: str | Path,
               floors_path: str | Path) -> TaskTable:
    """``task``'s main table: each row of ``rows`` with its measured sizes, its score over the committed seeds
    (``<results_dir>/<task>/``), its relative drop against FP32 on the same seeds and the share of FP32's margin over
    the constant answer it keeps, :math:`(\\text{row} - c) / (\\text{FP32} - c)` with ``c`` from ``floors_path``
    (``benchmarks/constant_answer.py``); and the verdicts: each MP row against the paper's bound, the constant
    answer, rows below it, and whether DirectQ 2/8 collapses."""
    bound = QBERT_CLAIMS["max_accuracy_loss_percent"]
    records = read_results(Path(results_dir) / task)
    runs = runs_frame(records)
    summary = mean_std(runs).droplevel("task") if records else pd.DataFrame(columns=["mean", "std", "seeds"])
    scores = mean_std_text(summary) if records else pd.Series(dtype=object)
    fp32_mean = summary["mean"].get("fp32")
    fp32_same_seeds = baseline_over_seeds(runs) if records else pd.Series(dtype=float)
    drops = pd.Series({name: relative_drop(fp32_same_seeds[row["label"]], summary["mean"][row["label"]])
                       for name, row in rows.items() if fp32_mean and row["label"] in summary.index},
                      dtype=float).dropna()
    table = sizes.reindex(list(rows))[["w-bits", "e-bits", "w/o embedding (MB)", "embedding (MB)"]].round(2)
    table["ours"] = [scores.get(row["label"], "not run") for row in rows.values()]
    table["drop vs FP32 (%)"] = [f"{drops[name]:+.2f}" if name in drops else "" for name in rows]
    chance = constant_answer_scores(floors_path).get(task)  # the best score of one answer given to every example
    if chance is not None and fp32_mean is not None:
        table["margin kept (%)"] = [
            f"{(summary['mean'][row['label']] - chance) / (fp32_same_seeds[row['label']] - chance) * 100:.0f}"
            if name in drops else "" for name, row in rows.items()]

    verdicts = [f"**{name}**: " + (f"{drops[name]:+.2f} % against FP32, "
                                   f"{'within' if drops[name] <= bound else 'beyond'} the paper's {bound:g} % bound"
                                   + per_seed_drops(runs, rows[name]["label"])
                                   if name in drops else "not run yet")
                for name in rows if name.startswith("Q-BERT_MP")]
    if chance is not None and fp32_mean is not None:
        floor = read_json(floors_path)["tasks"][task]
        counts = ", ".join(f"{name} {n}" for name, n in floor["label counts"].items())
        verdicts.append((f"**Trivial predictor** ({floor['answer']}): " if "answer" in floor else
                         "**Constant answer**: ") + f"{chance:.2f} on these {floor['dev examples']} dev examples "
                        f"({counts}; `{Path(floors_path).name}`); FP32 is {fp32_mean - chance:.2f} points above it")
        below = [name for name, row in rows.items()
                 if row["label"] in summary.index and summary["mean"][row["label"]] < chance]
        if below:
            verdicts.append(f"**Below the constant answer**: {', '.join(below)}: these models score less than "
                            "answering every example the same way")
        direct2 = rows.get("DirectQ 2/8")
        if direct2 and direct2["label"] in summary.index:
            score = summary["mean"][direct2["label"]]
            collapsed = abs(score - chance) < abs(fp32_mean - score)
            verdicts.append(f"**DirectQ 2/8**: {score:.2f}, closer to "
                            + ("the constant answer than to FP32: it collapses, as in the paper." if collapsed
                               else "FP32 than to the constant answer: no collapse."))
    protocol = (protocol_frame(records).set_index(["method", "seed"])[PROTOCOL_COLUMNS].sort_index()
                .round({"wall h": 2}) if records else None)
    metric = runs["metric"].iloc[0] if records else get_run_task(task).metrics[0]
    return TaskTable(task, metric, dict(rows), summary, runs, table, data_caveat(records), verdicts, protocol,
                     notes_markdown(records) if records else "", drops)


PAPER_MOST_LOSS = {"setting": "Q-BERT_MP 2/3", "task": "squad"}
"""Q-BERT's ordering of its tasks: SQuAD, whose fine-tuned model it found not at a local minimum (Q-BERT I), loses the
most under quantization; checked here at the setting the paper's bound is stated for, mixed precision 2/3."""


def curvature_singles_out(negative: Mapping[str, list[str]], task: str) -> str:
    """Whether the Baselines' spectra single ``task`` out, as Q-BERT's explanation of its larger loss (a model not at a
    local minimum) would need: its count of blocks with negative curvature (``negative``, ``negative_blocks`` per task)
    against every other task's, which the negative-curvature table above the verdicts shows; "" when ``task`` or
    every other task has no spectrum."""
    others = {t: b for t, b in negative.items() if t != task}
    if task not in negative or not others:
        return ""
    counts = "counts in the negative-curvature table above"
    if all(len(negative[task]) > len(b) for b in others.values()):
        return f"; more blocks with it in {task} than in any other task ({counts})"
    return f"; not more blocks with it in {task} than in every other task ({counts}), so the spectra do not single " \
           f"{task} out"


def curvature_size(drops: pd.Series, spectra: Mapping[str, Mapping[str, Any]], setting: str) -> str:
    """Whether the size of the curvature tracks the loss: each task's Baseline Ω summed over its blocks (Q-BERT's
    ``Ω = |mean(λ)| + std(λ)`` of a block's top eigenvalue over the subsets; to second order the same weight
    perturbation Δw costs ΔL ≈ ½ λ‖Δw‖² along the top eigenvector, so a larger Ω means a larger loss), largest first,
    against the task that loses the most at ``setting`` (``drops``: that row's drop per task) and the order of the
    drops; "" when fewer than two tasks have both."""
    tasks = [t for t in drops.index if t in spectra]
    if len(tasks) < 2:
        return ""
    total = {t: sum(block["omega"] for block in spectra[t]["blocks"].values()) for t in tasks}
    by_size, by_drop = sorted(tasks, key=total.get, reverse=True), sorted(tasks, key=drops.get, reverse=True)
    verdict = (f"the task with the largest, {by_size[0]}, loses the most at {setting}" if by_size[0] == by_drop[0] else
               f"{by_drop[0]} loses the most at {setting}, not {by_size[0]}, whose sum is the largest")
    if len(tasks) > 2:
        verdict += ("; the drops come in the same order on the means" if by_size == by_drop else
                    f"; the drops come in another order on the means ({', '.join(by_drop)})")
    return ("**The size of the curvature** (Ω summed over the Baseline's blocks): "
            + ", ".join(f"{t} {total[t]:.4g}" for t in by_size) + f": {verdict}")


def drops_across_tasks(tables: Mapping[str, TaskTable], spectra: Mapping[str, Mapping[str, Any]],
                       paper: Mapping[str, str] = PAPER_MOST_LOSS) -> list[Any]:
    """Which task loses the most: each row's relative drop against FP32 on the same seeds (``TaskTable.drops``: each
    task's own main metric, over its own committed seeds), one column per task of ``tables``, with whether the task's
    Baseline spectrum (``spectra``, ``committed_spectra``) shows negative curvature (``negative_blocks``).

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``): the drops [row × task] ("+1.23 (n=3)",
        "not run") under their caption, the saddle check per task, and the verdicts: for each row scored on two tasks
        or more, the tasks from the largest drop down; for ``paper``'s setting, whether its task loses the most on the
        means, as Q-BERT found, and whether the task that loses the most does so on every seed
        (``above_every_seed``), or which task is still to be run; and the tasks whose Baseline shows negative
        curvature, with whether their counts single out ``paper``'s task (``curvature_singles_out``); and whether the
        task with the largest curvature loses the most at that setting (``curvature_size``). A sentence alone while
        fewer than two tasks have a scored row.
    """
    order = dict.fromkeys(name for table in tables.values() for name, row in table.rows.items()
                          if row["spec"].method != "fp32")  # the Baseline's drop is 0 by definition
    drops = pd.DataFrame({task: table.drops for task, table in tables.items()}).reindex(list(order)).dropna(how="all")
    if drops.notna().any().sum() < 2:
        return ["*The comparison across tasks needs scored rows on two tasks.*"]
    negative = {task: negative_blocks(spectra[task]) for task in tables if task in spectra}
    saddle = pd.Series({task: "no spectrum committed" if task not in negative else "no" if not negative[task] else
                        f"yes: {len(negative[task])} of {len(spectra[task]['blocks'])} blocks" for task in tables},
                       name="negative curvature in the Baseline's spectrum (Q-BERT I)")
    verdicts = []
    for name, row in drops.iterrows():
        scored = row.dropna().sort_values(ascending=False)
        if len(scored) > 1:
            verdicts.append(f"**{name}**: " + ", then ".join(f"{task} {drop:+.2f} %" for task, drop in scored.items()))
    setting, task = paper["setting"], paper["task"]
    row = drops.loc[setting].dropna() if setting in drops.index else pd.Series(dtype=float)
    waiting = [t for t in tables if t not in row.index]
    ordering = f"**The paper's ordering** ({task} loses the most; checked at {setting}): "
    if task in row.index and len(row) > 1:
        most = row.idxmax()
        verdicts.append(ordering + ("**holds** on the means" if most == task else
                                    f"**does not hold** on the means: {most} loses more")
                        + above_every_seed(tables, setting, most)
                        + (f" (not run yet on {', '.join(waiting)})" if waiting else ""))
    else:
        verdicts.append(ordering + f"waits for {setting} on {', '.join(waiting)}")
    curved, flat = [t for t, b in negative.items() if b], [t for t, b in negative.items() if not b]
    if curved:
        verdicts.append(f"**Negative curvature** (Q-BERT found it in {task}'s model) shows in the Baselines of "
                        f"{', '.join(curved)}" + (f" (not in {', '.join(flat)})" if flat else "")
                        + curvature_singles_out(negative, task))
    if size := curvature_size(row, spectra, setting):
        verdicts.append(size)
    seeds = {task: table.summary["seeds"] for task, table in tables.items()}
    shown = pd.DataFrame({task: [f"{d:+.2f} (n={int(seeds[task][tables[task].rows[name]['label']])})"
                                 if pd.notna(d) else "not run" for name, d in column.items()]
                          for task, column in drops.items()}, index=drops.index)
    return ["Relative drop against FP32 on the same seeds (%; positive: a loss; n: seeds):", shown, saddle.to_frame(),
            "\n".join(f"* {v}" for v in verdicts)]


def missing_runs(task: str, rows: Mapping[str, dict[str, Any]], results_dir: str | Path,
                 seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame | None:
    """The trained rows of ``task``'s main table (``rows``) without a result on the official files for every seed of
    ``seeds`` (a DirectQ row comes with its Baseline), each with what one run would cost on the task's protocol:
    estimated from the committed CPU runs of the task that record their data (any folder of ``results_dir``'s parent,
    e.g. a sizing run; a run two chapters' folders hold counts once) by their training seconds per example and epoch
    (``estimated_hours``): FP32 runs for the Baseline, QAT runs for the others, or FP32's speed where no QAT run is
    measured yet (QAT trains slower, so that is a lower bound); a run made on random batches counts at the measured
    speed-up of length-grouped ones (``qlib.experiments.progress.grouped_speedups``) where the protocol groups them. A
    Baseline's estimate counts its dev evaluation once more per post-training row its job evaluates on its weights
    (``qlib.experiments.protocol.baseline_job``: the DirectQ rows, and Q8BERT's DQ row where the two chapters share
    the training), each at its own evaluation's measured time. None when nothing is missing."""
    results_dir = Path(results_dir)
    missing = {name: [s for s in seeds if not records_its_data(row["spec"].with_(seed=s).result_path(results_dir))]
               for name, row in rows.items() if not row["spec"].is_post_training}
    missing = {name: left for name, left in missing.items() if left}
    if not missing:
        return None
    protocol = protocol_for(task, results_dir.parent)
    measured = {json.dumps(r, sort_keys=True): r for path in sorted(results_dir.parent.glob(f"*/{task}/*.json"))
                if records_its_data(path) and not RunSpec.from_record(r := read_json(path)).is_post_training
                and on_cpu(r)}.values()  # one run written for two chapters counts once
    dev = dev_set_size(results_dir.parent, task)
    fp32 = [r for r in measured if r["spec"]["method"] == "fp32"]
    qat = [r for r in measured if r["spec"]["method"] == "qbert"]
    grouped = any(row["spec"].protocol.group_by_length for row in rows.values())
    speedups = grouped_speedups(results_dir.parent).get(task, {}) if grouped else {}
    runs = {"fp32": fp32, "qat": qat}

    def hours_from(kind: str, evaluations: int) -> float | None:
        return estimated_hours(runs[kind], protocol.get("max_train_examples"), protocol["epochs"], dev,
                               speedups.get(kind), evaluations)

    table = {}
    for name, left in missing.items():
        kind = "fp32" if rows[name]["spec"].method == "fp32" else "qat"
        evaluations = baseline_job(task, left[0], results_dir.parent).evaluations if kind == "fp32" else 1
        used, hours = kind, hours_from(kind, evaluations)
        if hours is None:
            used, hours = "fp32", hours_from("fp32", evaluations)
        basis = (f"{len(runs[kind])} measured {kind.upper()} run(s)" if used == kind and hours is not None
                 else f"FP32's speed ({len(fp32)} run(s)), a lower bound" if hours is not None else "no run measured")
        if hours is not None:
            basis += random_batches_caveat(runs[used], grouped, speedups.get(used))
            basis += (f"; training and {evaluations} dev evaluations (its own, its post-training rows')"
                      * (evaluations > 1))
        table[name] = {"seeds missing": ", ".join(map(str, left)), "est. h per run": hours,
                       "est. h in all": None if hours is None else hours * len(left), "estimated from": basis}
    return pd.DataFrame(table).T.astype({"est. h per run": float, "est. h in all": float}).round(2)


def main_tables(tasks: Sequence[str], groups: int | str | None, sizes: pd.DataFrame, results_dir: str | Path,
                spectrum: Mapping[str, Any] | None = None) -> dict[str, TaskTable]:
    """``main_table`` for the first of ``tasks`` (always, with ``spectrum`` setting its MP rows' bits) and for each
    other task with committed results (its own ``<results_dir>/spectrum-<task>.json``, where committed)."""
    results_dir = Path(results_dir)
    floors = results_dir.parent / "benchmarks" / "constant_answer.json"
    tables = {}
    for i, task in enumerate(dict.fromkeys(tasks)):
        if i and not read_results(results_dir / task):
            continue
        path = results_dir / f"spectrum-{task}.json"
        task_spectrum = spectrum if i == 0 else read_json(path) if path.is_file() else None
        tables[task] = main_table(task, main_table_rows(task_spectrum, groups, task), sizes, results_dir, floors)
    return tables


def score_vs_size(tables: Mapping[str, TaskTable], sizes: pd.DataFrame):
    """Each task's rows as score against the measured encoder file (log scale), QAT as circles, DirectQ as squares,
    with FP32 and FP32 minus the paper's bound as lines; one panel per task with at least two scored rows, two a
    row. None when no task has two. A ``matplotlib.figure.Figure`` outside pyplot: it is shown where the caller
    displays it."""
    from matplotlib.figure import Figure

    bound = QBERT_CLAIMS["max_accuracy_loss_percent"]
    plotted = {t: [(name, row) for name, row in table.rows.items() if row["label"] in table.summary.index]
               for t, table in tables.items()}
    plotted = {t: scored for t, scored in plotted.items() if len(scored) > 1}
    if not plotted:
        return None
    columns = min(2, len(plotted))  # two panels a row: each stays readable in the book's column
    rows = -(-len(plotted) // columns)
    fig = Figure(figsize=(7 * columns, 4.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(plotted):]:
        ax.set_visible(False)
    for ax, (task, scored) in zip(axes, plotted.items()):
        summary = tables[task].summary
        for name, row in scored:
            x, y = sizes.loc[name, "w/o embedding (MB)"], summary["mean"][row["label"]]
            direct = name.startswith("DirectQ")
            ax.scatter(x, y, marker="s" if direct else "o", color="C1" if direct else "C0")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
        baseline = summary["mean"].get("fp32")
        if baseline is not None:
            ax.axhline(baseline, color="gray", lw=0.8, ls="--", label="FP32")
            ax.axhline(baseline * (1 - bound / 100), color="C2", lw=0.8, ls=":", label=f"FP32 − {bound:g} %")
            ax.legend(loc="lower right")
        ax.set(xscale="log", xlabel="encoder weights file, embedding apart (MB, measured)",
               ylabel=f"{task} dev {tables[task].metric} (%)",
               title=f"{task.upper()}: score vs size (circles: QAT, squares: DirectQ)")
    fig.tight_layout()
    return fig


def spectrum_comparison(tables: Mapping[str, TaskTable], groups: int | str | None,
                        results_dir: str | Path) -> list[Any]:
    """The MP rows with bits from each task's Baseline spectrum (the main table) beside those with bits from the
    spectrum after a short fine-tune (``<results_dir>/short-finetune/``): the layers each puts at the higher
    width, each row's score and drop against the main table's FP32 on the same seeds, the gap per pair, and the
    short fine-tune runs' protocol and notes. What the chapter shows, in order (``qlib.experiments.report.show``)."""
    results_dir = Path(results_dir)
    short_dir = results_dir / "short-finetune"
    compared, protocols, means, short_records = {}, [], {}, []
    for task, main in tables.items():
        short_spectrum = short_dir / f"spectrum-{task}.json"
        records = read_results(short_dir / task)
        if not records or not short_spectrum.is_file() or not (results_dir / f"spectrum-{task}.json").is_file():
            continue
        short_runs = pd.concat([main.runs[main.runs["method"] == "fp32"], runs_frame(records)])
        sources = {"FP32 Baseline (main table)": (main.rows, main.summary, baseline_over_seeds(main.runs)),
                   "short fine-tune": (main_table_rows(read_json(short_spectrum), groups, task),
                                       mean_std(runs_frame(records)).droplevel("task"),
                                       baseline_over_seeds(short_runs))}
        protocols.append(protocol_frame(records))
        short_records += records
        for name in MIXED_SETTINGS:
            for source, (rows, summary, fp32_same_seeds) in sources.items():
                row = rows[name]
                high = max(row["layer_bits"].values())
                scored = row["label"] in summary.index
                if scored:
                    means[(task, name, source)] = summary["mean"][row["label"]]
                reference = fp32_same_seeds.get(row["label"]) if scored else None
                compared[(task, name, source)] = {
                    "layers at the higher width": ", ".join(n.removeprefix("encoder.layer.")
                                                            for n, b in row["layer_bits"].items() if b == high),
                    "score": mean_std_text(summary).get(row["label"], "not run"),
                    "drop vs FP32 (%)": drop_text(relative_drop(reference, summary["mean"][row["label"]]))
                                        if scored else ""}
    if not compared:
        return ["*No MP rows with bits from the short fine-tune's spectrum are committed.*"]
    gaps = {f"{t.upper()} {n}": means[(t, n, s)] - means[(t, n, "short fine-tune")]
            for t, n, s in means if s != "short fine-tune" and (t, n, "short fine-tune") in means}
    return [pd.DataFrame(compared).T.rename_axis(["task", "setting", "spectrum measured on"]),
            ("Score with the Baseline spectrum's bits minus score with the short fine-tune's (points, means over the "
             "committed seeds): " + ", ".join(f"{k} **{v:+.2f}**" for k, v in gaps.items())
             + f". {sum(v > 0 for v in gaps.values())} of {len(gaps)} pairs favour the Baseline spectrum.")
            if gaps else None,
            "Protocol of the runs with bits from the short fine-tune's spectrum:",
            pd.concat(protocols).set_index(["task", "method", "seed"])[
                PROTOCOL_COLUMNS].round({"wall h": 2}),
            notes_markdown(short_records)]


def outlier_weights(model: nn.Module) -> pd.DataFrame:
    """Each layer's FFN output matrix: its std, its largest ``|w|`` and that in stds (why min/max ranges waste a grid).
    """
    return pd.DataFrame({name.removesuffix(".output.dense.weight").removeprefix("bert.encoder."): {
        "std": w.std().item(), "largest |w|": w.abs().max().item(),
        "largest |w| / std": (w.abs().max() / w.std()).item()}
        for name, w in model.named_parameters() if name.endswith("output.dense.weight") and "attention" not in name}).T


def range_choices(table: TaskTable, groups: int | str | None, results_dir: str | Path) -> list[pd.DataFrame]:
    """The two choices the paper leaves open, on ``table``'s task: DirectQ with min/max against clipped ranges per
    bit width; and the 2/3-bit MP row (bits from the short fine-tune's spectrum) trained from the pretrained model
    with min/max ranges against the protocol's run from the FP32 Baseline with clipped ranges. [] without runs."""
    if table.runs.empty:
        return []
    scores, task = mean_std_text(table.summary), table.task
    clipped = f"[{100 - QBERT_PERCENTILE:g}, {QBERT_PERCENTILE:g}] percentiles"
    shown = [pd.DataFrame({f"DirectQ {b}/8": {
        "min/max": scores.get(RunSpec(task, "directq", weight_bits=b).label, "not run"),
        clipped: scores.get(RunSpec(task, "directq", weight_bits=b, percentile=QBERT_PERCENTILE).label, "not run")}
        for b in DIRECTQ_BITS}).T]
    short_dir = Path(results_dir) / "short-finetune"
    records = read_results(short_dir / task)
    spectrum = short_dir / f"spectrum-{task}.json"
    if records and spectrum.is_file():
        mp = main_table_rows(read_json(spectrum), groups, task)["Q-BERT_MP 2/3"]
        short_scores = mean_std_text(mean_std(runs_frame(records)).droplevel("task"))
        first = RunSpec(task, "qbert", weight_bits=2, groups=groups, layer_bits=mp["layer_bits"]).label
        shown.append(pd.DataFrame({"Q-BERT_MP 2/3, bits from the short fine-tune's spectrum": {
            "min/max ranges, QAT from the pretrained model": short_scores.get(first, "not run"),
            "clipped ranges, QAT from the FP32 Baseline (protocol)": short_scores.get(mp["label"], "not run"),
            "FP32 Baseline": scores.get("fp32", "not run")}}))
    return shown


def group_ablation(model: nn.Module, tables: Mapping[str, TaskTable], heads: int,
                   setting: str = "Q-BERT 3/8") -> tuple[pd.DataFrame, list[str]]:
    """``setting`` with G = 1, one group per head, four per head and one per row: each grouping's measured file
    sizes and, per task with committed runs, its score; and per task how far the groupings spread against the
    per-head row's seed-to-seed std.

    Returns:
        The table (one row per grouping) and one Markdown sentence per task with two or more groupings scored.
    """
    counts = {"G = 1": 1, f"G = {heads} (per head)": heads, f"G = {4 * heads} (4 per head)": 4 * heads,
              "per row": "row"}
    bits = setting_spec(setting, "sst2", 0, heads, None)
    with tempfile.TemporaryDirectory() as folder:
        table = pd.DataFrame({name: size_mb(model, qbert_config(bits.weight_bits, bits.embedding_bits, groups=g,
                                                                percentile=QBERT_PERCENTILE), folder)
                              for name, g in counts.items()}).T
    table = table.rename(columns=SIZE_COLUMNS).round(3)
    spreads = []
    for task, task_table in tables.items():
        summary = task_table.summary
        if summary.empty:
            continue
        labels = {name: setting_spec(setting, task, 0, g, None).label for name, g in counts.items()}
        table[f"{task.upper()} dev {task_table.metric} (%)"] = [mean_std_text(summary).get(label, "not run")
                                                               for label in labels.values()]
        means = {name: summary["mean"][label] for name, label in labels.items() if label in summary.index}
        if len(means) > 1:
            low, high = min(means, key=means.get), max(means, key=means.get)
            per_head = labels[f"G = {heads} (per head)"]
            seeds = summary["seeds"].get(per_head, 0)
            noise = (f"the per-head row's std over {seeds} seeds is {summary['std'][per_head]:.2f}" if seeds > 1
                     else "the per-head row has one seed, so the seed-to-seed noise is not measured here")
            spreads.append(f"**{task.upper()}**: {len(means)} groupings span {means[high] - means[low]:.2f} points "
                           f"(lowest {low}, highest {high}); {noise}")
    return table, spreads
