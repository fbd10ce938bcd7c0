"""What the Q8BERT chapter shows, built from the committed results: Table 1 (FP32, QAT and DQ beside the paper's rows
and the constant-answer floor), Table 2 (the relative error of 8-bit against FP32, beside the paper's) with the paired
per-seed gaps and what they say, the EMA ablation (Q8BERT's decay against one matched to short runs), and how each
run was made. Nothing here trains."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qlib.core.observers import Q8BERT_EMA_DECAY
from qlib.experiments.papers import Q8BERT_TABLE1
from qlib.experiments.report import (
    data_caveat,
    mean_std,
    mean_std_text,
    notes_markdown,
    paired_gaps,
    protocol_frame,
    relative_drop,
    relative_error,
    runs_frame,
)
from qlib.experiments.spec import RunSpec

SPREAD_WORDS = {None: "no spread to compare with yet (one seed)", True: "larger than the seed-to-seed spread",
                False: "within the seed-to-seed spread"}
"""How a paired gap compares with the seed-to-seed spread (``qlib.experiments.report.paired_gaps``' ``beyond spread``).
"""

READINGS = {(True, False): "the cost comes from training with static input ranges, not from 8-bit precision",
            (True, True): "DQ, which trains nothing, loses too: 8-bit precision itself costs accuracy here",
            (False, True): "QAT recovers what 8-bit precision alone (DQ) loses",
            (False, False): "neither loss is distinguishable from seed noise"}
"""What (QAT beyond the spread, DQ beyond the spread) says about where 8-bit's cost comes from."""


def table1(records: list[dict[str, Any]], tasks: Sequence[str], floors: Mapping[str, float]) -> list[Any]:
    """Q8BERT's Table 1 for the committed runs: per task of ``tasks``, the mean ± sample standard deviation over seeds
    of the dev metric (percent) for FP32, QAT and DQ ("not run" where a method has no run), beside the paper's FP32 and
    QAT (BERT-base, mean of 5 runs) and the task's constant-answer floor.

    Args:
        records: the results (``qlib.experiments.results.read_results``).
        tasks: the rows, in order (the protocol's ``Q8BERT_TASKS``).
        floors: each task's best constant answer in percent (``qlib.experiments.report.constant_answer_scores``; {}
            leaves the column out).

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``): the table, how many of its results saw
        the altered data (``data_caveat``), and which tasks have no run yet; [] without runs.
    """
    runs = runs_frame(records)
    if runs.empty:
        return []
    cell = mean_std_text(mean_std(runs)).unstack("method")
    cell = cell.reindex(columns=[m for m in ("fp32", "qat", "dq") if m in cell.columns])
    cell.columns = [f"ours {m.upper()}" for m in cell.columns]
    paper = pd.DataFrame({t: {"paper FP32": p["fp32"], "paper QAT": p["qat"]} for t, p in Q8BERT_TABLE1.items()}).T
    table = cell.reindex(list(tasks)).fillna("not run").join(paper, how="left")
    table.insert(0, "metric", [Q8BERT_TABLE1[t]["metric"] for t in table.index])
    if floors:
        table["constant answer"] = [round(floors[t], 2) if t in floors else "–" for t in table.index]
    missing = [t for t in tasks if t not in set(runs["task"])]
    return [table, data_caveat(records),
            f"*Not yet run on the CPU protocol: {', '.join(missing)}* (see *Reproducing*)." if missing else ""]


def table2(runs: pd.DataFrame, summary: pd.DataFrame, bound: float = 1.0) -> list[Any]:
    """Q8BERT's Table 2 for the committed runs: :math:`(\\text{FP32} - \\text{8-bit}) / \\text{FP32}` in percent for
    QAT and DQ beside the paper's QAT, whether QAT stays within ``bound`` % per task, and QAT − FP32 and DQ − FP32
    paired by seed, each task read through ``READINGS``.

    Args:
        runs: one row per result (``qlib.experiments.report.runs_frame``).
        summary: mean, std and seeds per (task, method) (``qlib.experiments.report.mean_std``).

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``); [] without both FP32 and QAT runs.
    """
    if runs.empty or not {"fp32", "qat"} <= set(runs["method"]):
        return []
    table = relative_error(summary).round(2)
    table = table[[m for m in ("qat", "dq") if m in table.columns]]
    table.columns = [f"ours {m.upper()}" for m in table.columns]
    table["paper QAT"] = pd.Series({t: round(relative_drop(p["fp32"], p["qat"]), 2)
                                    for t, p in Q8BERT_TABLE1.items()})
    drops = table["ours QAT"].dropna()
    fp32 = summary["mean"].unstack("method")["fp32"]
    missing = [t for t in table.index if t not in drops.index]  # a task with one of the two methods run
    fp32_ran = [t for t in missing if not pd.isna(fp32.get(t))]
    waiting = {"QAT": fp32_ran, "FP32": [t for t in missing if t not in fp32_ran]}
    parts: list[Any] = [table, f"QAT within {bound:g} % relative of FP32: " + ", ".join(
        f"**{t}**: {'yes' if abs(d) <= bound else 'no'} ({d:+.2f} %)" for t, d in drops.items())
        + "".join(f"; {method} not run yet: {', '.join(tasks)}" for method, tasks in waiting.items() if tasks)]
    beyond = {}
    for method in ("qat", "dq"):
        gaps = paired_gaps(runs, method)
        parts += [f"Paired {method.upper()} − FP32, same seeds (points):", gaps.round(2)]
        beyond[method] = gaps["beyond spread"].to_dict()
    parts.append("\n".join(
        f"* **{t}**: QAT {SPREAD_WORDS[q]}; DQ {SPREAD_WORDS[beyond['dq'].get(t)]}"
        + (f" — {READINGS[(q, beyond['dq'][t])]}." if (q, beyond["dq"].get(t)) in READINGS else ".")
        for t, q in beyond["qat"].items()))
    return parts


def first_batch_weights(records: Iterable[dict[str, Any]], decay: float = Q8BERT_EMA_DECAY) -> pd.DataFrame:
    """For each QAT run in ``records``, its steps ``n`` and the weight :math:`d^{\\,n-1}` the first batch still has
    in the EMA of the activation ranges after ``n`` steps with decay ``d``."""
    return pd.DataFrame([{"task": r["task"], "seed": r["seed"], "steps n": r["train"]["steps"],
                          "first batch's weight d^(n-1)": round(decay ** (r["train"]["steps"] - 1), 3)}
                         for r in records if r["method"] == "qat"]).set_index(["task", "seed"]).sort_index()


def _ablation_lines(runs: pd.DataFrame, short: str) -> str:
    """Per task, QAT − FP32 with Q8BERT's decay and with the ``short`` one, and the short decay against QAT."""
    to_fp32, short_to_fp32 = paired_gaps(runs, "qat"), paired_gaps(runs, short)
    spread = {True: "still beyond", False: "within", None: "not comparable with"}
    lines = []
    for task, gap in paired_gaps(runs, short, baseline="qat").iterrows():
        change = {None: "not comparable with Q8BERT's decay (one seed)",
                  False: "no different from Q8BERT's decay (within the seed spread)",
                  True: "better than Q8BERT's decay" if gap["mean gap"] > 0 else "worse than Q8BERT's decay"}
        pairs, std = int(gap["pairs"]), "" if pd.isna(gap["gap std"]) else f" ± {gap['gap std']:.2f}"
        lines.append(f"* **{task}** ({pairs} paired seed{'s' * (pairs != 1)}): QAT − FP32 "
                     f"{to_fp32.loc[task, 'mean gap']:+.2f} points with Q8BERT's decay, "
                     f"{short_to_fp32.loc[task, 'mean gap']:+.2f} with `{short}` "
                     f"({gap['mean gap']:+.2f}{std} against QAT on the same seeds): "
                     f"{change[gap['beyond spread']]}, and {spread[short_to_fp32.loc[task, 'beyond spread']]} "
                     "FP32's seed-to-seed spread.")
    return "\n".join(lines)


def ema_ablation(records: list[dict[str, Any]], runs: pd.DataFrame, summary: pd.DataFrame) -> list[Any]:
    """The EMA ablation: each QAT run's first-batch weight (``first_batch_weights``); then, where runs with another
    decay are committed (``qat-ema<d>``), the scores of every QAT decay, each against FP32 of the same seed, and per
    task and decay what the shorter decay changes.

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``); [] without runs.
    """
    if runs.empty:
        return []
    qat_labels = {r["method"] for r in records if RunSpec.from_record(r).method == "qat"}
    ablation = summary.loc[summary.index.get_level_values("method").isin(qat_labels)]
    parts: list[Any] = [first_batch_weights(records)]
    methods = sorted(set(ablation.index.get_level_values("method")))
    if methods == ["qat"] or not methods:
        return parts + ["*The ablation with a shorter EMA (`run_glue(..., ema_decay=0.99)`, result name "
                        "`qat-ema0.99`; `python -m qlib.experiments.protocol --only q8bert` runs it after the main "
                        "table) has no committed runs yet.*"]
    return parts + [
        "QAT with Q8BERT's decay against a decay matched to these short runs (same seeds):",
        mean_std_text(ablation).unstack("method"),
        "Each against FP32 of the same seed (points; negative = worse than FP32):",
        pd.concat({m: paired_gaps(runs, m)[["pairs", "mean gap", "gap std"]] for m in methods}, axis=1).round(2),
        *(_ablation_lines(runs, short) for short in methods if short != "qat")]


def protocol_table(records: list[dict[str, Any]]) -> list[Any]:
    """How the committed runs were made, one row per (task, method, device): the protocol's settings
    (``qlib.experiments.report.protocol_frame``), the seeds run, and the best training throughput of those seeds
    (some CPU runs shared the machine, which slows them without changing their results); then the notes on these
    results and the total wall time per device.

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``); [] without trained runs.
    """
    protocol = protocol_frame(records)
    if protocol.empty:
        return []
    keys = ["task", "method", "device"]
    grouped = protocol.groupby(keys)
    table = protocol.drop(columns=["seed", "G", "examples/s", "wall h", "note"]).drop_duplicates(keys).set_index(keys)
    table = table.join(grouped["seed"].apply(lambda s: ",".join(map(str, sorted(s)))).rename("seeds"))
    hours = protocol.groupby("device")["wall h"].sum()
    return [table.join(grouped["examples/s"].max().rename("best examples/s")),
            "Throughput is the best of the seeds' runs on that device: some CPU runs shared the 2-core machine with "
            "other work, which slows them without changing their results.",
            notes_markdown(records),
            "Total wall time of these runs: " + ", ".join(f"**{h:.2f} h** on {d}" for d, h in hours.items())
            + " (an FP32 run's time includes its DQ evaluation; where it is also Q-BERT's Baseline, the same training "
              "written for both chapters, its DirectQ evaluations too)."]
