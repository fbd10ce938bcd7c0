"""What the Quant-Noise chapter shows, built from the committed results: the paper's comparison (each quantizer
trained with and without the noise), the Quant-Noise runs beside QAT, DirectQ and FP32 of the same bits, the
per-seed gaps to QAT, the protocol runs still missing, the study of p and of the block size, and the iPQ files'
sizes and runs. Every function reads result files or measures files; nothing here trains."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from scipy.stats import t as t_distribution
from torch import nn

from qlib.experiments.compare import side_by_side, sizes_of
from qlib.experiments.protocol import (
    BASELINE_ARM,
    HEADS,
    IPQ_CENTROIDS,
    IPQ_NOISE_RATE,
    IPQ_TASKS,
    NOISE_STUDY_SETTINGS,
    QUANT_NOISE_RATE,
    QUANT_NOISE_SETTINGS,
    ROBUSTNESS_ARMS,
    WITH_NOISE_ARM,
    WITHOUT_NOISE_ARM,
    Job,
    noise_study_jobs,
    quant_noise_jobs,
)
from qlib.experiments.qbert import QBERT_PERCENTILE, SETTINGS, setting_spec
from qlib.experiments.report import (
    PROTOCOL_COLUMNS,
    data_caveat,
    mean_std,
    mean_std_text,
    notes_markdown,
    paired_gaps,
    protocol_frame,
    runs_frame,
    same_seeds,
)
from qlib.experiments.results import read_json, read_result, read_results, records_its_data
from qlib.experiments.spec import FROM_CHECKPOINT, RunSpec
from qlib.experiments.tasks import get_run_task


def _qat_label(task: str, bits: int, groups: int | str | None) -> str:
    """The Q-BERT QAT row (p = 1) a Quant-Noise run of ``bits`` is compared with."""
    return RunSpec(task, "qbert", weight_bits=bits, groups=groups, percentile=QBERT_PERCENTILE,
                   init_from=FROM_CHECKPOINT).label


_ARM_LABELS = dict(zip(ROBUSTNESS_ARMS, ("Baseline", "no noise", "PQ noise")))
"""Each of ``ROBUSTNESS_ARMS`` with its short label in ``noise_robustness``'s table, so that the table fits the page."""


def with_and_without_noise(task: str, results: str | Path, model: nn.Module) -> list[Any]:
    """The paper's comparison on ``task``: each quantizer the protocol trains with Quant-Noise
    (``QUANT_NOISE_SETTINGS[task]``, and iPQ + int8 on ``IPQ_TASKS``) trained without the noise (p = 1: plain QAT;
    plain iPQ + int8) and with it (p = ``QUANT_NOISE_RATE``; PQ noise at ``IPQ_NOISE_RATE`` before iPQ), from the
    FP32 Baselines under ``<results>/qbert`` (scalar rows there and under ``quant-noise``): each row's measured
    file, the FP32 score, both scores over seeds, and the paired gap with minus without (points, over the seeds
    both have).

    Returns:
        What the chapter shows: the table, a verdict per quantizer (``_noise_verdict``), the data caveat; a sentence
        alone when nothing of ``task`` is committed.
    """
    results = Path(results)
    records = read_results(results / "qbert" / task) + read_results(results / "quant-noise" / task)
    pairs = {}
    for name in QUANT_NOISE_SETTINGS.get(task, ()):
        plain = setting_spec(name, task, 0, HEADS, None)
        pairs[name] = (plain, plain.with_(noise_rate=QUANT_NOISE_RATE))
    if task in IPQ_TASKS:
        plain = RunSpec(task, "ipq", centroids=IPQ_CENTROIDS, centroid_bits=8, init_from=FROM_CHECKPOINT)
        pairs[f"iPQ + int8 (k = {IPQ_CENTROIDS})"] = (plain, plain.with_(noise_rate=IPQ_NOISE_RATE))
    wanted = {"fp32"} | {spec.label for pair in pairs.values() for spec in pair}
    chosen = [r for r in records if r["method"] in wanted]
    if not chosen:
        return [f"*No committed runs of {task} for this comparison yet.*"]
    runs = runs_frame(chosen)
    scores = mean_std_text(mean_std(runs)).droplevel("task")
    rows, verdicts = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, (plain, noisy) in pairs.items():
            gap = paired_gaps(runs, noisy.label, baseline=plain.label)
            verdicts.append(_noise_verdict(name, gap, runs, plain.label, noisy.label))
            mean_gap = round(gap["mean gap"].iloc[0], 2) if not gap.empty else float("nan")
            rows[name] = {"file (MB)": round(sizes_of(noisy, model, folder)["file_mb"], 2), "FP32": scores.get("fp32"),
                          "without noise": scores.get(plain.label, "not run yet"),
                          "with noise": scores.get(noisy.label, "not run yet"),
                          "with − without (points)": mean_gap,
                          "pairs": int(gap["pairs"].iloc[0]) if not gap.empty else 0}
    return [pd.DataFrame(rows).T.rename_axis("quantizer"), "\n".join(verdicts), data_caveat(chosen)]


def _noise_verdict(name: str, gap: pd.DataFrame, runs: pd.DataFrame, plain: str, noisy: str) -> str:
    """Whether training with the noise beat training without it (``noisy`` against ``plain``, labels in one task's
    ``runs_frame``), on the seeds that have both: the mean paired gap judged against its spread (``gap``, the pair's
    ``qlib.experiments.report.paired_gaps``: the larger of the gaps' std and the plain row's std over seeds), and the
    share of plain's drop against FP32 on those seeds that the noise recovers, (noisy − plain) / (FP32 − plain), and
    the 95 % interval of the mean gap, mean ± t(0.975, n − 1) · std / √n over the n pairs: how large a gain the pairs
    run so far can rule out."""
    if gap.empty:
        return f"* {name}: no seed has both rows yet."
    row = gap.iloc[0]
    head = f"* {name}: with noise − without = {row['mean gap']:+.2f} points over {int(row['pairs'])} seed pair(s)"
    if row["pairs"] < 2:
        return head + ": no verdict on one pair (the gap's own spread needs two)."
    if row["beyond spread"]:
        verdict = (f"beyond the spread ({row['spread']:.2f} points): **the noise is "
                   f"{'better' if row['mean gap'] > 0 else 'worse'}**")
    else:
        verdict = f"within the spread ({row['spread']:.2f} points): **no difference shown**"
    scores = same_seeds(runs, "fp32", plain, noisy)
    lost = (scores["fp32"] - scores[plain]).mean()
    if scores.empty:
        drop = "no FP32 Baseline of these seeds to measure the drop against"
    elif lost > 0:
        drop = (f"without noise it is {lost:.2f} points below FP32 on these seeds, and the noise recovers "
                f"{row['mean gap'] / lost:.0%} of that")
    else:
        drop = f"without noise it is not below FP32 on these seeds ({-lost:.2f} points above)"
    half_width = t_distribution.ppf(0.975, row["pairs"] - 1) * row["gap std"] / row["pairs"] ** 0.5
    low, high = row["mean gap"] - half_width, row["mean gap"] + half_width
    return (f"{head}, {verdict}; {drop}. The 95 % interval of the mean gap over these pairs (Student's t) is "
            f"[{low:+.2f}, {high:+.2f}] points, which {'includes' if low <= 0 <= high else 'excludes'} 0.")


def against_qat(task: str, groups: int | str | None, results_dir: str | Path, qbert_results_dir: str | Path,
                model: nn.Module) -> list[Any]:
    """For each bit width with committed Quant-Noise runs of ``task`` (``<results_dir>/<task>/``), those runs beside the
    Q-BERT chapter's rows of the same bits and ``groups`` (DirectQ, QAT at p = 1, and their FP32 Baseline) with scores,
    drops against FP32 on the same seeds and measured file sizes (``qlib.experiments.compare.side_by_side``); the gap
    Quant-Noise minus QAT per shared seed, set against FP32's seed-to-seed std; the runs' protocol and notes.

    Returns:
        What the chapter shows, in order (``qlib.experiments.report.show``): a sentence alone when nothing is committed.
    """
    qbert_records = read_results(Path(qbert_results_dir) / task)
    noise_records = read_results(Path(results_dir) / task)
    if not noise_records:
        return [f"*No committed Quant-Noise runs for {task} yet (`{results_dir}/{task}/`).*"]
    runs = runs_frame(qbert_records + noise_records)
    widths = sorted({r["params"]["weight_bits"] for r in noise_records if r["params"]["groups"] == groups})
    compared = {"fp32"}
    for bits in widths:
        compared |= {RunSpec(task, "directq", weight_bits=bits, groups=groups, percentile=QBERT_PERCENTILE).label,
                     _qat_label(task, bits, groups)}
        compared |= {r["method"] for r in noise_records
                     if r["params"]["weight_bits"] == bits and r["params"]["groups"] == groups}
    chosen = [r for r in qbert_records + noise_records if r["method"] in compared]
    table = side_by_side({"Q-BERT protocol": chosen}, model).set_index(["paper", "method"])[
        ["weights", "training", "score", "drop vs FP32 (%)", "file (MB)"]].round(2)
    gaps = {}
    for bits in widths:
        for label in sorted({r["method"] for r in noise_records if r["params"]["weight_bits"] == bits}):
            gap = paired_gaps(runs, label, baseline=_qat_label(task, bits, groups))
            if not gap.empty:
                gaps[(bits, label)] = gap.iloc[0]
    fp32 = mean_std(runs).loc[(task, "fp32")]
    protocol = protocol_frame(noise_records).set_index(["method", "seed"])[PROTOCOL_COLUMNS]
    return [table, data_caveat(chosen),
            *([f"Quant-Noise minus QAT of the same bits, per seed they share (points of {runs['metric'].iloc[0]}). "
               + (f"For scale, this task's FP32 Baselines span a sample std of {fp32['std']:.2f} points over "
                  f"{int(fp32['seeds'])} seeds:" if fp32["seeds"] > 1 else
                  "This task has one FP32 Baseline seed so far, so no seed-to-seed spread to set them against:"),
               pd.DataFrame(gaps).T.rename_axis(["bits", "Quant-Noise run"])[["pairs", "mean gap", "gap std"]]
               .astype({"pairs": int, "mean gap": float, "gap std": float}).round(2)] if gaps else []),
            "Protocol of each Quant-Noise run:", protocol.round({"wall h": 2}),
            notes_markdown(qbert_records + noise_records)]


def missing_runs(task: str, checkpoints: str | Path, results_dir: str | Path) -> str | None:
    """Which of the protocol's Quant-Noise runs of ``task`` and their p = 1 QAT rows
    (``qlib.experiments.protocol.quant_noise_jobs``) have no committed result that records its data (one on the
    earlier, altered copy is re-run); None when all have; a sentence saying so when the task's protocol is not
    picked yet (a small task's FP32 sweep is incomplete)."""
    try:
        jobs = quant_noise_jobs(checkpoints, results=Path(results_dir).parent, tasks=[task])
    except FileNotFoundError as err:
        return f"*The protocol's Quant-Noise runs of {task} wait for its protocol: {err}.*"
    missing = sorted(f"`{j.spec.label}` seed {j.spec.seed}" for j in jobs if not j.done())
    return (f"Runs of the protocol (`qlib.experiments.protocol.quant_noise_jobs`) not committed on the official files "
            f"yet: {', '.join(missing)}." if missing else None)


def noise_study(task: str, setting: str, checkpoints: str | Path, results: str | Path,
                settings: Mapping[str, Sequence[str]] = NOISE_STUDY_SETTINGS) -> list[Any]:
    """The effect of the noise rate p (and, on a task's first study setting, of the block size) on ``setting`` of
    ``task`` (``noise_study_jobs`` of ``settings``: seed 0), with the main rows of that setting and seed beside (p =
    ``QUANT_NOISE_RATE`` on blocks of 8, and QAT at p = 1): one row per (p, block size), its dev score, its gap to p =
    1, and the result file it comes from, or "not run yet" (a result on the altered copy counts as not run).

    Returns:
        What the chapter shows (``qlib.experiments.report.show``): the setting in a sentence, the table, a sentence
        naming its rows outside the range plain QAT spans over its committed seeds (``outside_qat_spread``), and the
        remarks ``results/notes.toml`` keeps on its rows (``notes_markdown``; "" when none); or a sentence alone
        while the task's protocol is not picked.

    Raises:
        ValueError: ``setting`` is not one of ``settings[task]``.
    """
    if setting not in settings.get(task, ()):
        raise ValueError(f"{setting!r} is not a noise study setting of {task!r}; allowed: {settings.get(task, ())}")
    bits = SETTINGS[setting]["weight_bits"]
    try:
        study = [j for j in noise_study_jobs(checkpoints, results=results, settings={task: settings[task]})
                 if j.spec.weight_bits == bits]
        every_seed = [j for j in quant_noise_jobs(checkpoints, results=results, tasks=[task])
                      if j.spec.weight_bits == bits]
    except FileNotFoundError as err:
        return [f"*The study of p and block size waits for {task}'s protocol: {err}.*"]
    main = [j for j in every_seed if j.spec.seed == 0]
    rows, metric, records = {}, None, []
    for job in main + study:
        path = job.spec.result_path(job.results_dir)
        record = read_result(path) if records_its_data(path) else None
        metric = record["main_metric"] if record else metric
        records += [record] if record else []
        rows[(job.spec.noise_rate, job.spec.noise_block)] = {
            "score": 100 * record["metrics"][record["main_metric"]] if record else float("nan"),
            "result": str(Path(path).relative_to(results)) if record else "not run yet"}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["p", "block (inputs)"]).sort_index()
    table.insert(1, "vs p = 1 (points)", table["score"] - table.loc[(1.0, 8), "score"])
    qat = next(j.spec for j in main if j.spec.noise_rate == 1.0)
    return [f"{setting} (`{qat.label}` at p = 1) on {task}, seed 0, the task's protocol "
            f"({qat.protocol.epochs} epoch(s) at lr {qat.protocol.lr:g}); score: "
            f"{metric or get_run_task(task).metrics[0]} × 100. One seed: a difference smaller than the seed-to-seed "
            "spread of the main rows above is not a finding.", table.round(2),
            outside_qat_spread(table["score"], [j for j in every_seed if j.spec.noise_rate == 1.0]),
            notes_markdown(records)]


def outside_qat_spread(scores: pd.Series, qat_jobs: Sequence[Job]) -> str:
    """The rows of a noise study (``scores``, indexed by (p, block size)) that fall outside the range plain QAT's
    committed seeds span (``qat_jobs``: the p = 1 job of each seed; a result on the altered copy is left out), as a
    sentence: the chapter's rule that a difference within the seed-to-seed spread is not a finding, applied."""
    paths = [job.spec.result_path(job.results_dir) for job in qat_jobs]
    qat = [100 * r["metrics"][r["main_metric"]] for r in (read_json(p) for p in paths if records_its_data(p))]
    if len(qat) < 2:
        return (f"Plain QAT (p = 1) of this setting has {len(qat)} committed seed(s): no seed-to-seed spread to read "
                "the study against yet.")
    low, high = min(qat), max(qat)
    outside = [f"p = {p:g} on blocks of {block} ({'below' if score < low else 'above'})"
               for (p, block), score in scores.items() if score < low or score > high]
    return (f"Plain QAT (p = 1) of this setting over its {len(qat)} committed seeds: {low:.2f} to {high:.2f}. The "
            f"study's rows outside that range: {'; '.join(outside) or 'none'}.")


def ipq_files(model: nn.Module, centroids: int = IPQ_CENTROIDS, task: str = "sst2") -> pd.DataFrame:
    """The measured files of ``model`` in FP32, as Q8BERT's int8, after iPQ with ``centroids`` (float16 codebooks
    and floats) and after iPQ + int8 (8-bit centroids and inputs), each as the side-by-side table measures that row
    (``qlib.experiments.compare.sizes_of``): MB of the file, its embedding tables and the rest, and the file's
    percent of FP32. Sizes depend on the shapes only."""
    ipq = RunSpec(task, "ipq", centroids=centroids, init_from=FROM_CHECKPOINT)
    rows = {"FP32": RunSpec(task, "fp32"), "Q8BERT int8": RunSpec(task, "qat"), f"iPQ (k = {centroids})": ipq,
            f"iPQ + int8 (k = {centroids})": ipq.with_(centroid_bits=8)}
    with tempfile.TemporaryDirectory() as folder:
        files = {name: sizes_of(spec, model, folder) for name, spec in rows.items()}
    table = pd.DataFrame(files).T[["file_mb", "embedding_mb", "without_embedding_mb"]]
    table["% of FP32"] = 100 * table["file_mb"] / table.loc["FP32", "file_mb"]
    return table


def ipq_runs(results_dir: str | Path, task: str = "sst2") -> str:
    """A sentence listing the committed iPQ runs of ``task`` under ``results_dir`` with their scores."""
    runs = [r for r in read_results(Path(results_dir) / task) if r.get("spec", {}).get("method") == "ipq"]
    listed = ", ".join(f"{r['method']} seed {r['seed']}: {r['main_metric']} "
                       f"{100 * r['metrics'][r['main_metric']]:.1f}" for r in runs)
    return (f"iPQ runs committed under `{results_dir}/{task}`: "
            + (listed or f"*none yet: the protocol runs them after the {task.upper()} Baselines*") + ".")


def noise_robustness(task: str, results: str | Path) -> list[Any]:
    """What training with PQ noise does to a model before iPQ's fine-tuning repairs it: the newest run per seed of
    ``benchmarks/pq_robustness.py`` on ``task`` (``<results>/benchmarks/pq_robustness-<task>-seed<n>-*.json``),
    one row per seed and arm (the FP32 Baseline; trained again without noise; trained again with PQ noise; each with iPQ
    + int8's 8-bit inputs): the score before product quantization (*float*), after each iPQ stage is product-quantized
    in turn with no fine-tuning (a column per stage, named by it), the points that costs (*PQ cost*: float − all stages
    quantized), and, where the protocol's iPQ row of that seed starts from the same model
    (``<results>/quant-noise/<task>``), that row's score after its stages' fine-tuning (*iPQ row*). The column names
    and the models' labels (``_ARM_LABELS``) are short so that the table fits the page.

    Returns:
        What the chapter shows: the table, one line per seed and the remarks on the runs shown; a sentence alone when
        no run is committed.
    """
    results = Path(results)
    newest = {}
    for path in sorted((results / "benchmarks").glob(f"pq_robustness-{task}-seed*-*.json")):  # names end in time
        run = read_result(path)
        if run["arms"] != list(ROBUSTNESS_ARMS):
            raise ValueError(f"{path} scores the models {run['arms']}; the table reads {list(ROBUSTNESS_ARMS)}")
        newest[run["seed"]] = (path, run)
    if not newest:
        return [f"*No run of `benchmarks/pq_robustness.py` on {task} committed yet "
                f"(`{results / 'benchmarks'}/pq_robustness-{task}-seed<n>-*.json`).*"]
    ipq = {(r["seed"], r["method"]): 100 * r["metrics"][r["main_metric"]]
           for r in read_results(results / "quant-noise" / task)}
    rows, lines = {}, []
    for seed, (path, run) in sorted(newest.items()):
        costs, after = {}, {}
        for arm in run["arms"]:
            scores = run["scores"][arm]
            costs[arm] = scores["float"] - scores[run["stages"][-1]]
            label = run["ipq_rows"].get(arm)
            after[arm] = ipq.get((seed, label)) if label else None
            rows[(seed, arm)] = {"float": scores["float"], **{s: scores[s] for s in run["stages"]},
                                 "PQ cost": costs[arm], "iPQ row": after[arm]}
        lines.append(f"* Seed {seed} (`{path.name}`): product-quantizing every layer with no fine-tuning costs "
                     + ", ".join(f"{arm} {cost:.2f}" for arm, cost in costs.items()) + f" points of {run['metric']}"
                     + _what_the_noise_spares(costs, after) + ".")
    table = pd.DataFrame.from_dict(rows, orient="index").rename(index=_ARM_LABELS).rename_axis(["seed", "model"])
    return [table.round(2), "\n".join(lines), notes_markdown(run for _, run in newest.values())]


def _what_the_noise_spares(costs: dict[str, float], after: dict[str, float | None]) -> str:
    """The clause a ``noise_robustness`` line ends in: how much of PQ's cost (points, no fine-tuning) the noise
    spares, the arm trained again without noise against the arm trained again with it (the same extra pass over the
    data), and, where both iPQ rows of the seed are committed, how far apart they end after their stages'
    fine-tuning (the row with noise minus the row from the Baseline)."""
    without, noisy = costs[WITHOUT_NOISE_ARM], costs[WITH_NOISE_ARM]
    spared = without - noisy
    clause = (f": the noise spares {spared:.2f} of the {without:.2f} points PQ costs the model trained again without it"
              if spared > 0 else f": the noise spares nothing (PQ costs the noisy model {-spared:.2f} points more)")
    if after[BASELINE_ARM] is not None and after[WITH_NOISE_ARM] is not None:
        clause += (f"; after their stages' fine-tuning the iPQ rows from the Baseline and from the noisy model differ"
                   f" by {after[WITH_NOISE_ARM] - after[BASELINE_ARM]:+.2f} points")
    return clause
