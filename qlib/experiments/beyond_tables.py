"""What the "Beyond the papers" chapter shows, from committed results: integer-only QAT beside Q8BERT's
float-nonlinearity QAT and FP32 of the same seeds, and distilled Q-BERT QAT beside the Q-BERT chapter's plain QAT and
FP32 Baseline of the same setting and seeds, each with the verdict the chapter is asked for. Only results on the
official data files are compared (one on the earlier, altered copy is another dataset). Nothing here trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qlib.experiments.distill import MODES as DISTILLATION_MODES
from qlib.experiments.protocol import HEADS, QUANTIZER_FOLDER, SCHEDULE_FOLDER, TERNARY_SETTINGS, ternary_spec
from qlib.experiments.qbert import setting_spec
from qlib.experiments.report import mean_std, mean_std_text, paired_gaps, relative_drop, runs_frame, same_seeds
from qlib.experiments.results import read_results, records_data
from qlib.experiments.spec import RunSpec

INTEGER_TARGET = 1.0
"""Integer-only QAT within this relative drop (percent) of float-nonlinearity QAT."""
RECOVERY_TARGET = 0.5
"""Distilled 2-bit QAT recovers at least this share of plain 2-bit QAT's drop against FP32."""


def _official(folder: Path) -> list[dict[str, Any]]:
    return [r for r in read_results(folder) if records_data(r)]


def _recovery(runs: pd.DataFrame, distilled: str, plain: str) -> dict[str, float]:
    """On the seeds where ``runs`` has FP32, ``plain`` and ``distilled`` rows: how many, their mean scores, and the
    share of plain QAT's drop against FP32 that distillation recovers, (distilled − plain) / (FP32 − plain), where
    plain QAT dropped (else NaN: no drop to recover, and a share of a rounding-sized gap would read as a large one)."""
    both = same_seeds(runs, "fp32", plain, distilled)
    fp32, before, after = (both[c].mean() if not both.empty else float("nan") for c in ("fp32", plain, distilled))
    return {"seeds": len(both), "FP32": fp32, "plain": before, "distilled": after,
            "share of the drop recovered": (after - before) / (fp32 - before) if fp32 > before else float("nan")}


def integer_against_float(task: str, results: str | Path) -> list[Any]:
    """Integer-only QAT (``qat-int``, under ``<results>/beyond``) beside Q8BERT's QAT and FP32 of ``task`` (under
    ``<results>/q8bert``): each row's score over seeds, and the integer row's relative drop against float QAT on the
    seeds both have, (QAT − int) / QAT, with the verdict against ``INTEGER_TARGET``.

    Returns:
        What the chapter shows (``qlib.experiments.report.show``): the table and the verdict, or a sentence saying
        which runs are missing.
    """
    results = Path(results)
    integer = [r for r in _official(results / "beyond" / task)
               if (spec := RunSpec.from_record(r)).method == "qat" and spec.integer_nonlinearities]
    float_rows = [r for r in _official(results / "q8bert" / task) if r["method"] in ("fp32", "qat")]
    if not integer:
        return [f"*No integer-only QAT run of {task} on the official files yet (`{results / 'beyond' / task}`).*"]
    runs = runs_frame(float_rows + integer)
    table = mean_std_text(mean_std(runs)).droplevel("task").rename("score").to_frame()
    label = integer[0]["method"]
    pairs = same_seeds(runs, label, "qat")
    if pairs.empty:
        return [table, f"*No seed of {task} has both `{label}` and Q8BERT's `qat` yet: no verdict.*"]
    drop = relative_drop(pairs["qat"].mean(), pairs[label].mean())
    within = drop <= INTEGER_TARGET
    gaps = paired_gaps(runs, label, baseline="qat")
    return [table, f"On the {len(pairs)} seed(s) both have, integer-only QAT is {abs(drop):.2f} % relative "
                   f"{'below' if drop >= 0 else 'above'} float QAT "
                   f"(paired gap {gaps['mean gap'].iloc[0]:+.2f} points): "
                   f"**{'within' if within else 'not within'} {INTEGER_TARGET:g} %**."]


def distilled_against_plain(task: str, results: str | Path) -> list[Any]:
    """Each distilled Q-BERT QAT row of ``task`` (under ``<results>/beyond``) beside the same setting without
    distillation and the FP32 Baseline of the same seeds (under ``<results>/qbert``): mean scores on the seeds all
    three have, the drops of plain and distilled QAT against FP32, and the share of plain QAT's drop that
    distillation recovers, (distilled − plain) / (FP32 − plain), with the verdict against ``RECOVERY_TARGET`` for
    each 2-bit row (one per distillation mode: TernaryBERT's full loss, and the logits alone where that ablation ran).

    Returns:
        What the chapter shows: the table and the 2-bit verdicts, or a sentence saying which runs are missing.
    """
    results = Path(results)
    distilled = [r for r in _official(results / "beyond" / task) if RunSpec.from_record(r).distillation]
    if not distilled:
        return [f"*No distilled QAT run of {task} on the official files yet (`{results / 'beyond' / task}`).*"]
    runs = runs_frame(_official(results / "qbert" / task) + distilled)
    rows = {}
    for label in sorted({r["method"] for r in distilled}):
        spec = RunSpec.from_record(next(r for r in distilled if r["method"] == label))
        plain = spec.with_(distillation=None).label
        recovery = _recovery(runs, label, plain)
        bits = sorted({spec.weight_bits, *spec.layer_bits.values()})
        rows[label] = {
            "weights": "/".join(map(str, bits)) + (" MP" if len(bits) > 1 else ""),
            "learns from the teacher": DISTILLATION_MODES[spec.distillation], "plain QAT": plain,
            **{k: recovery[k] for k in ("seeds", "FP32", "plain", "distilled")},
            "plain drop (%)": relative_drop(recovery["FP32"], recovery["plain"]),
            "distilled drop (%)": relative_drop(recovery["FP32"], recovery["distilled"]),
            "share of the drop recovered": recovery["share of the drop recovered"]}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("distilled row")
    two_bit = table[(table["weights"] == "2") & (table["seeds"] > 0)]
    if two_bit.empty:
        return [table.round(2), "*No 2-bit distilled row with its plain QAT and FP32 on a shared seed yet: no "
                                "verdict.*"]
    verdicts = [f"* 2-bit weights, learning {row['learns from the teacher']}: distillation recovers "
                f"{row['share of the drop recovered']:.0%} of plain QAT's drop over {int(row['seeds'])} seed(s) "
                f"({row['distilled']:.2f} against plain {row['plain']:.2f}, FP32 {row['FP32']:.2f}): "
                f"**{'at least' if row['share of the drop recovered'] >= RECOVERY_TARGET else 'less than'} "
                f"{RECOVERY_TARGET:.0%}**." for _, row in two_bit.iterrows()]
    return [table.round(2), "\n".join(verdicts)]  # the verdicts judge the unrounded shares


def _schedule(records: list[dict[str, Any]]) -> str:
    """The training schedule the ``records`` ran, as the table names it: ``3 epochs at 2e-05``."""
    schedules = {(r["params"]["epochs"], r["params"]["lr"]) for r in records}
    return " / ".join(f"{e} epoch{'s' * (e != 1)} at {lr:g}" for e, lr in sorted(schedules))


def longer_schedule(task: str, results: str | Path) -> list[Any]:
    """The schedule ablation (``qlib.experiments.protocol.LONGER_SCHEDULE``): each distilled row of ``task`` under
    ``<results>/beyond-schedule`` with its plain row on the same longer schedule, beside the same setting on the
    task's protocol (the Q-BERT chapter's plain row under ``qbert``, this chapter's distilled one under ``beyond``),
    each against the FP32 Baseline of the same seeds: the scores and the share of plain QAT's drop that distillation
    recovers at each schedule.

    Returns:
        What the chapter shows: the table and one line per distilled row, or a sentence saying which runs are missing.
    """
    results = Path(results)
    longer = _official(results / SCHEDULE_FOLDER / task)
    distilled = sorted({r["method"] for r in longer if RunSpec.from_record(r).distillation})
    if not distilled:
        return [f"*No run of the schedule ablation of {task} on the official files yet "
                f"(`{results / SCHEDULE_FOLDER / task}`).*"]
    baselines = [r for r in _official(results / "qbert" / task) if r["method"] == "fp32"]
    on_protocol = _official(results / "qbert" / task) + _official(results / "beyond" / task)
    rows, lines = {}, []
    for label in distilled:
        plain = RunSpec.from_record(next(r for r in longer if r["method"] == label)).with_(distillation=None).label
        compared = {}
        for records in (on_protocol, baselines + longer):
            schedule = _schedule([r for r in records if r["method"] in (label, plain)])
            compared[schedule] = rows[(label, schedule)] = _recovery(runs_frame(records), label, plain)
        lines.append(f"* `{label}`: distillation recovers " + "; ".join(
            f"{row['share of the drop recovered']:.0%} of plain QAT's drop on {schedule} ({row['seeds']} seed(s))"
            if row["seeds"] else f"nothing measured yet on {schedule} (no seed has FP32, plain and distilled rows)"
            for schedule, row in compared.items()) + ".")
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["distilled row", "schedule"])
    return [table.round(2), "\n".join(lines)]


def _share_text(recovery: dict[str, float]) -> str:
    """A share of plain QAT's drop that distillation recovers, as a line says it."""
    if not recovery["seeds"]:
        return "not measured yet"
    if pd.isna(recovery["share of the drop recovered"]):
        return f"nothing to recover ({recovery['seeds']} seed(s): plain QAT is not below FP32)"
    return f"{recovery['share of the drop recovered']:.0%} ({recovery['seeds']} seed(s))"


def _target_with_ternary(setting: str, ternary: dict[str, Any], ternary_lost: float, grid_lost: float,
                         fp32_spread: float) -> str:
    """The 2-bit target (``RECOVERY_TARGET``) judged against the ternary rows of ``setting`` (``ternary``: its table
    row): a share only where plain ternary QAT lost more dev examples than the FP32 Baseline itself moves between the
    seeds compared (``fp32_spread``, max − min in examples; ``ternary_lost``, ``grid_lost``: the mean examples plain
    QAT lost against FP32 with each quantizer)."""
    head = f"* The target with ternary weights ({setting}): "
    if ternary["seeds"] < 2:
        return head + "no verdict on one seed (the FP32 Baseline's seed-to-seed spread needs two)."
    if ternary_lost <= fp32_spread:
        moved = (f"loses {ternary_lost:.0f} dev examples on average, no more than" if ternary_lost > 0 else
                 f"gains {-ternary_lost:.0f} dev examples on average, within")
        return (head + f"**no drop to recover**: plain ternary QAT {moved} what FP32 itself moves between these "
                f"seeds ({fp32_spread:.0f}), while Q-BERT's grid loses {grid_lost:.0f}. The drop the target asks "
                "distillation to recover is the grid's, not 2-bit weights' as such.")
    share = ternary["share of the drop recovered"]
    if pd.isna(share):
        return head + "the distilled ternary row has no seed with its plain row and FP32 yet: no verdict."
    return (head + f"distillation recovers {share:.0%} of plain ternary QAT's drop over "
            f"{int(ternary['distilled seeds'])} seed(s): "
            f"**{'at least' if share >= RECOVERY_TARGET else 'less than'} {RECOVERY_TARGET:.0%}**.")


def ternary_quantizer(task: str, results: str | Path) -> list[Any]:
    """The quantizer ablation (``qlib.experiments.protocol.TERNARY_SETTINGS``): each setting with TernaryBERT's
    ternary weights (TWN; plain and distilled, under ``<results>/beyond-quantizer``) beside the same setting with
    Q-BERT's grid (the Q-BERT chapter's plain row, this chapter's distilled one), on the seeds where the ternary plain
    row and the FP32 Baseline both are: each quantizer's plain QAT drop against FP32 on those seeds (also in dev
    examples, the mean over seeds: a share of a drop of a few examples says little), and the share of that drop
    distillation recovers, (distilled − plain) / (FP32 − plain), on those of them that have the distilled row too.

    Returns:
        What the chapter shows: the table and one line per setting, or a sentence saying which runs are missing.
    """
    results = Path(results)
    ternary = _official(results / QUANTIZER_FOLDER / task)
    if not ternary:
        return [f"*No run of the quantizer ablation of {task} on the official files yet "
                f"(`{results / QUANTIZER_FOLDER / task}`).*"]
    on_protocol = _official(results / "qbert" / task) + _official(results / "beyond" / task)
    rows, lines = {}, []
    for setting in TERNARY_SETTINGS:
        grid = setting_spec(setting, task, 0, HEADS, None)
        twn = ternary_spec(grid)
        quantizers = {"ternary (TWN)": twn, "Q-BERT's grid": grid}
        seeds = set(same_seeds(runs_frame(on_protocol + ternary), twn.label, "fp32").index)
        if not seeds:
            lines.append(f"* {setting}: nothing measured yet (no seed has FP32 and the ternary plain row).")
            continue
        runs = runs_frame([r for r in on_protocol + ternary if r["seed"] in seeds])
        examples = next(r["eval"]["examples"] for r in ternary if r["method"] == twn.label)
        drops, shares, lost, fp32_of = [], [], {}, {}
        for quantizer, plain in quantizers.items():
            against = same_seeds(runs, plain.label, "fp32")
            fp32_of[quantizer] = against["fp32"]
            fp32, plain_score = against["fp32"].mean(), against[plain.label].mean()
            drop = relative_drop(fp32, plain_score)
            recovery = _recovery(runs, plain.with_(distillation="hidden").label, plain.label)
            rows[(setting, quantizer)] = {
                "plain QAT": plain.label, "seeds": len(against), "FP32": fp32, "plain": plain_score,
                "plain drop (%)": drop,
                "distilled seeds": recovery["seeds"], "distilled": recovery["distilled"],
                "distilled drop (%)": relative_drop(recovery["FP32"], recovery["distilled"]),
                "share of the drop recovered": recovery["share of the drop recovered"]}
            lost[quantizer] = (fp32 - plain_score) / 100 * examples
            drops.append(f"{abs(drop):.2f} % {'below' if drop >= 0 else 'above'} FP32 with {quantizer} "
                         f"({abs(lost[quantizer]):.0f} of {examples} dev examples)")
            shares.append(f"{_share_text(recovery)} with {quantizer}")
        lines.append(f"* {setting}, on the {len(seeds)} seed(s) with the ternary plain row: plain QAT is "
                     + ", ".join(drops) + "; the share of that drop distillation recovers: " + "; ".join(shares) + ".")
        fp32_spread = (fp32_of["ternary (TWN)"].max() - fp32_of["ternary (TWN)"].min()) / 100 * examples
        lines.append(_target_with_ternary(setting, rows[(setting, "ternary (TWN)")], lost["ternary (TWN)"],
                                          lost["Q-BERT's grid"], fp32_spread))
    if not rows:
        return ["\n".join(lines)]
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["setting", "2-bit weights"])
    return [table.round(2), "\n".join(lines)]
