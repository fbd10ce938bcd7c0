"""Tables from result records: mean ± std over seeds, relative error against FP32, paired per-seed gaps
(presentation only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from qlib.common import cpu
from qlib.experiments.data import get_task, read_official_data
from qlib.experiments.experiment import SWEEP_GRID, SWEEP_TASKS, protocol_for, sweep_scores
from qlib.experiments.results import read_json
from qlib.experiments.spec import RunSpec


def runs_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: task, method, seed, the main metric in percent, train examples/s, wall time."""
    rows = [
        {"task": r["task"], "method": r["method"], "seed": r["seed"], "metric": r["main_metric"],
         "score": 100 * r["metrics"][r["main_metric"]], "train_examples": r["train"]["train_examples"],
         "epochs": r["params"]["epochs"], "examples_per_s": r["train"]["examples_per_s"],
         "wall_time_s": r["provenance"]["wall_time_s"]}
        for r in records
    ]
    return pd.DataFrame(rows, columns=["task", "method", "seed", "metric", "score", "train_examples", "epochs",
                                       "examples_per_s", "wall_time_s"])


def mean_std(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method): mean and sample std of the score over seeds, and the number of seeds."""
    grouped = runs.groupby(["task", "method"])["score"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "seeds": grouped.count()})


def relative_drop(reference: Any, score: Any) -> Any:
    """(reference - score) / reference in percent: Q8BERT Table 2's relative error and Q-BERT's accuracy drop
    (positive = ``score`` is worse). Works on numbers, NumPy arrays and pandas objects alike."""
    return (reference - score) / reference * 100


def same_seeds(runs: pd.DataFrame, *methods: str) -> pd.DataFrame:
    """Per seed of one task's ``runs_frame`` that every one of ``methods`` has: their scores side by side ([seed] ×
    methods, in that order; empty where they share none)."""
    scores = runs[runs["method"].isin(methods)].pivot_table(index="seed", columns="method", values="score")
    return scores.reindex(columns=list(methods)).dropna()


UNPAIRED = "no FP32 on its seeds"
"""How a table shows a drop that cannot be taken: the FP32 runs lack one of the row's seeds."""


def drop_text(drop: float, unit: str = "") -> str:
    """A ``relative_drop`` as a table cell: "+1.23" (then ``unit``), or ``UNPAIRED`` where it is NaN because the
    FP32 runs lack one of the row's seeds (``baseline_over_seeds``)."""
    return UNPAIRED if pd.isna(drop) else f"{drop:+.2f}{unit}"


def relative_error(summary: pd.DataFrame, baseline: str = "fp32") -> pd.DataFrame:
    """``relative_drop`` of each method against ``baseline``, per task, from ``mean_std``'s means (Q8BERT
    Table 2)."""
    means = summary["mean"].unstack("method")
    return relative_drop(means[baseline].to_numpy()[:, None], means.drop(columns=baseline))


def paired_gaps(runs: pd.DataFrame, method: str, baseline: str = "fp32") -> pd.DataFrame:
    """Per task, over the seeds run with both methods: ``method`` - ``baseline`` score of the same seed (points;
    negative = worse): the number of pairs, the gaps' mean and sample std, the baseline's own std over seeds,
    ``spread`` = the larger of those two stds (NaN with one seed), and ``beyond spread`` = ``|mean gap| > spread``
    (None when there is no spread to compare with)."""
    columns = ["pairs", "mean gap", "gap std", f"{baseline} std", "spread", "beyond spread"]
    scores = runs[runs["method"].isin([method, baseline])].pivot_table(index=["task", "seed"], columns="method",
                                                                      values="score")
    if method not in scores or baseline not in scores:
        return pd.DataFrame(columns=columns)
    gaps = (scores[method] - scores[baseline]).dropna().groupby("task")
    table = pd.DataFrame({"pairs": gaps.count(), "mean gap": gaps.mean(), "gap std": gaps.std(ddof=1),
                          f"{baseline} std": runs[runs["method"] == baseline].groupby("task")["score"].std(ddof=1)})
    table = table.dropna(subset=["pairs"])
    table["spread"] = table[["gap std", f"{baseline} std"]].max(axis=1, skipna=True)
    table["beyond spread"] = pd.Series([None if pd.isna(s) else bool(abs(g) > s)
                                        for g, s in zip(table["mean gap"], table["spread"])],
                                       index=table.index, dtype=object)
    return table[columns]


def baseline_over_seeds(runs: pd.DataFrame, baseline: str = "fp32") -> pd.Series:
    """Per method of one task's ``runs_frame``: the baseline's mean score over the seeds that method has, so a
    drop compares the same seeds (NaN where the baseline lacks one of them)."""
    scores = runs[runs["method"] == baseline].set_index("seed")["score"]
    return runs.groupby("method")["seed"].apply(lambda seeds: scores.reindex(seeds.unique()).mean(skipna=False))


def mean_std_text(summary: pd.DataFrame) -> pd.Series:
    """``mean_std`` rows as table cells: "58.48 ± 1.20 (n=3)", or "58.48 (n=1)" for a single seed."""
    return summary.apply(lambda r: f"{r['mean']:.2f} ± {r['std']:.2f} (n={int(r['seeds'])})" if r["seeds"] > 1
                         else f"{r['mean']:.2f} (n=1)", axis=1)


PROTOCOL_COLUMNS = ["model", "data", "train examples", "epochs", "max tokens", "batches", "lr", "G", "device", "CPU",
                    "threads", "wall h", "commit"]
"""The columns of ``protocol_frame`` shown under each table."""


def protocol_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """How each trained run was made, one row per run (a post-training row such as ``dq`` or ``directq-w2`` trains
    nothing and is left out): model, data, schedule, batches (``by length`` or ``random``: ``TrainingProtocol``'s
    ``group_by_length``), G, device, CPU and threads, torch, commit, examples/s, wall hours, the data it read
    (``data_label``), and the note a run's provenance carries ("" if none)."""
    rows = [
        {"task": r["task"], "method": r["method"], "seed": r["seed"], "model": r["params"]["model"],
         "train examples": r["train"]["train_examples"], "epochs": r["params"]["epochs"],
         "max tokens": r["params"]["max_length"], "batch": r["params"]["batch_size"],
         "batches": "by length" if RunSpec.from_record(r).protocol.group_by_length else "random",
         "lr": r["params"]["lr"],
         "G": r["params"].get("groups"), "device": r["provenance"]["machine"].get("device", "cpu"),
         "CPU": r["provenance"]["machine"]["cpu"],
         "CPU class": cpu.cpu_class(r["provenance"]["machine"].get("cpu_features") or ()),  # "" before recorded
         "threads": r["provenance"]["machine"]["torch_threads"],
         "torch": r["provenance"]["versions"]["torch"], "commit": (r["provenance"]["git_commit"] or "")[:8],
         "examples/s": round(r["train"]["examples_per_s"], 1), "wall h": r["provenance"]["wall_time_s"] / 3600,
         "data": data_label(r), "note": r["provenance"].get("note") or ""}
        for r in records if not RunSpec.from_record(r).is_post_training
    ]
    return pd.DataFrame(rows)


def batching_frame(run: dict[str, Any]) -> pd.DataFrame:
    """One run of ``benchmarks/batching.py`` as a table, one row per task: padded tokens per input token over one
    epoch with random and with length-grouped batches, and how many times faster a grouped training step is (mean
    seconds of the random order's steps over the grouped order's), FP32 and QAT."""
    padded, step = "padded tokens per input token", "step time, random ÷ grouped"
    rows = {task: {(padded, order): row[order]["padded_tokens"] / row[order]["input_tokens"]
                   for order in ("random", "grouped")}
            | {(step, "FP32"): row["fp32_speedup"], (step, "QAT"): row["qat_speedup"]}
            for task, row in run["tasks"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("task").round(2)


def data_label(record: dict[str, Any]) -> str:
    """What data a result read, in a table cell: ``official`` (every file it hashed is the official bytes),
    ``hub``, ``local copy`` (hashed files that are not the official bytes), or ``altered copy`` (the earlier
    altered files, before results recorded their data: a note of kind ``altered-data``), ``no data file`` (a
    benchmark that read none) or ``unrecorded``."""
    data = record["provenance"].get("data")
    if data is not None:
        return "hub" if data["source"] == "hub" else "official" if read_official_data(data) else "local copy"
    kinds = {note["kind"] for note in record.get("notes", [])}
    if "altered-data" in kinds:
        return "altered copy"
    return "no data file" if "data" in record["provenance"] else "unrecorded"


def _run_name(record: dict[str, Any]) -> str:
    """A result as the run it is: ``rte fp32 seed 0``, ``rte sweep 3 ep, lr 2e-05``, else its file's name."""
    if record.get("experiment") == "q8bert-sweep":
        return f"{record['task']} sweep {record['params']['epochs']} ep, lr {record['params']['lr']:g}"
    if {"task", "method", "seed"} <= set(record):
        return f"{record['task']} {record['method']} seed {record['seed']}"
    return Path(record.get("path", "result")).stem


def notes_markdown(records: Iterable[dict[str, Any]], heading: str = "Notes on these results",
                   max_names: int = 12) -> str:
    """The remarks on ``records`` as a markdown list, each said once with the runs it concerns: the notes ``notes.toml``
    keeps on their files (``qlib.experiments.results.read_results`` attaches them), the results computed on the earlier
    altered data first, then the notes written into older files' provenance; each names at most ``max_names`` of its
    runs. "" when there is none."""
    grouped: dict[tuple[int, str], list[str]] = {}
    for record in records:
        name = _run_name(record)
        remarks = [(note["kind"] != "altered-data", note["text"]) for note in record.get("notes", [])]
        if record["provenance"].get("note"):
            remarks.append((True, f"Written in this result's provenance: “{record['provenance']['note']}”"))
        for key in remarks:
            grouped.setdefault(key, []).append(name)
    if not grouped:
        return ""

    def runs(names: list[str]) -> str:
        more = f", and {len(names) - max_names} more" if len(names) > max_names else ""
        shown = ", ".join(names[:max_names]) + more
        return f"{len(names)} result{'s' * (len(names) > 1)}: {shown}"

    items = [f"* {text} (*{runs(names)}*)" for (_, text), names in sorted(grouped.items(), key=lambda i: i[0][0])]
    return f"**{heading}** (from `results/notes.toml` and the result files)\n\n" + "\n".join(items)


def sweep_frame(results: str | Path = "results") -> pd.DataFrame:
    """The FP32 protocol sweep as one row per task: its metric, the dev score (percent) at each grid point
    (``"3 ep, lr 2e-05"``; "not run" until it is), and ``picked``: the point ``protocol_for`` takes once the task's
    sweep is whole ("(the grid's largest)" when it has both the largest learning rate and the most epochs of
    ``SWEEP_GRID``: the sweep cannot tell whether more of either would score higher), or how many points it still
    waits for."""
    rows = {}
    for task in SWEEP_TASKS:
        scores = sweep_scores(task, results)
        row: dict[str, Any] = {"metric": get_task(task).metrics[0]}
        row |= {f"{p['epochs']} ep, lr {p['lr']:g}": "not run" if v is None else round(100 * v, 2)
                for p, v in scores}
        waiting = sum(v is None for _, v in scores)
        if waiting:
            row["picked"] = f"waits for {waiting} of {len(scores)}"
        else:
            picked = protocol_for(task, results)
            largest = all(picked[key] == max(values) for key, values in SWEEP_GRID.items())
            row["picked"] = f"{picked['epochs']} ep, lr {picked['lr']:g}" + (" (the grid's largest)" if largest else "")
        rows[task] = row
    return pd.DataFrame(rows).T.rename_axis("task")


def data_caveat(records: Iterable[dict[str, Any]]) -> str:
    """One sentence for under a table: how many of its results were computed on the earlier altered copy of the
    data (``data_label``), or "" when none was."""
    records = list(records)
    altered = sum(data_label(r) == "altered copy" for r in records)
    if not altered:
        return ""
    return (f"**{altered} of these {len(records)} results were computed on an earlier, altered copy of the data**, "
            "not on the official GLUE files: they are not GLUE results, and are replaced as their re-runs on the "
            "official files land (see the notes under the protocol below, and `results/notes.toml`).")


def constant_answer_scores(path: str | Path) -> dict[str, float]:
    """Each task's best constant answer (``qlib.experiments.metrics.constant_answer``) in percent of its main metric,
    read from the file ``benchmarks/constant_answer.py`` writes; {} when there is none, and the tables show no floor."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {task: 100 * floor["constant answer"][floor["metric"]] for task, floor in read_json(path)["tasks"].items()}


MISSING = "—"
"""How a table shows a value that does not exist (a std over one seed, a row a paper did not report): never "nan"."""


def table_html(frame: pd.DataFrame) -> str:
    """``frame`` as the book's HTML table: pandas' notebook rendering, missing values (NaN, and None in a column of
    objects, which pandas would print as "None") shown as ``MISSING``."""
    objects = frame.select_dtypes("object").columns
    if len(objects):
        frame = frame.copy()
        frame[objects] = frame[objects].where(frame[objects].notna(), float("nan"))
    return frame.to_html(na_rep=MISSING, notebook=True, max_rows=pd.get_option("display.max_rows"),
                         max_cols=pd.get_option("display.max_columns"))


def book_tables() -> None:
    """Render every DataFrame this notebook displays with ``table_html`` (an IPython HTML formatter); outside
    IPython, nothing."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, table_html)


def show(*parts: Any) -> None:
    """Display ``parts`` in order in a notebook: a string as Markdown, ``None`` or an empty string not at all (an empty
    Markdown output would show as its Python repr in the book), a matplotlib figure as a PNG (whether or not
    pyplot's inline backend is active), anything else (a table) as IPython displays it."""
    import io

    from IPython.display import Image, Markdown, display

    for part in parts:
        if isinstance(part, str):
            if part.strip():
                display(Markdown(part))
        elif hasattr(part, "savefig"):
            png = io.BytesIO()
            part.savefig(png, format="png", bbox_inches="tight")
            display(Image(png.getvalue()))
        elif part is not None:
            display(part)


def integer_kernel_errors(points: int = 2001, bits: int = 16) -> dict[str, pd.DataFrame]:
    """Each integer kernel of ``qlib.core.integer_ops`` against its float function over its input range: GELU on
    [-8, 8] and exp on [-8, 0] (``points`` inputs quantized to ``bits``-bit codes), softmax and LayerNorm on seeded
    random rows (one score row of 128, one hidden row of 384, ×4). Columns: the input (``x``; the element's index for
    softmax and LayerNorm), the float value, the integer kernel's, and ``|error|``."""
    import torch
    import torch.nn.functional as F

    from qlib.core.integer_ops import i_exp, i_gelu, i_layernorm, i_softmax

    def codes(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        scale = float(x.abs().max()) / (2 ** (bits - 1) - 1)
        return torch.round(x / scale).to(torch.int64), scale

    generator = torch.Generator().manual_seed(0)
    inputs = {"GELU": torch.linspace(-8, 8, points, dtype=torch.float64),
              "exp": torch.linspace(-8, 0, points, dtype=torch.float64),
              "softmax": torch.randn(128, dtype=torch.float64, generator=generator) * 4,
              "LayerNorm": torch.randn(384, dtype=torch.float64, generator=generator) * 4 + 1}
    kernels = {"GELU": (i_gelu, F.gelu), "exp": (i_exp, torch.exp),
               "softmax": (i_softmax, lambda x: torch.softmax(x, -1)),
               "LayerNorm": (i_layernorm, lambda x: F.layer_norm(x, x.shape))}
    frames = {}
    for name, x in inputs.items():
        integer, reference = kernels[name]
        q, out_scale = integer(*codes(x))
        value = (q * out_scale).double()
        frames[name] = pd.DataFrame({"x": x.numpy() if name in ("GELU", "exp") else range(len(x)),
                                     "float": reference(x).numpy(), "integer": value.numpy(),
                                     "|error|": (value - reference(x)).abs().numpy()})
    return frames
