"""Q-BERT as runs: the sensitivity study, and the rows of its main table.

``run_spectrum`` fine-tunes (or takes a given FP32 model, e.g. the task's Baseline), then measures the Hessian
spectrum of every block on K subsets. Its result file holds, per block, the top eigenvalue on each subset,
``Ω = |mean| + std``, the smallest eigenvalue (its sign tells a saddle point), power-iteration counts and convergence,
the seconds each took, and optionally the loss landscape of a few blocks along their top two eigenvectors
(Q-BERT fig. 2).

``SETTINGS``/``MIXED_SETTINGS`` name the main table's rows; ``setting_spec`` is one of them as a ``RunSpec`` (a QAT
row starts from its seed's FP32 Baseline model, with clipped weight ranges), ``run_setting`` runs it, and
``main_table_rows`` lays the table out.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qlib.deploy.checkpoint import load_float
from qlib.experiments.data import file_sha256
from qlib.experiments.experiment import RUN_OPTIONS, checkpoint_path, run
from qlib.experiments.models import DEFAULT_MODEL
from qlib.experiments.results import provenance, read_json, write_json
from qlib.experiments.snapshots import Snapshots
from qlib.experiments.spec import FROM_CHECKPOINT, RunSpec, TrainingProtocol
from qlib.experiments.tasks import get_run_task
from qlib.experiments.train import finetune, set_seed
from qlib.second_order.sensitivity import assign_bits, block_landscape, layer_blocks, layer_spectrum, omega


def _hessian_data(batch_size: int, max_length: int, examples: int | None, source: str) -> TrainingProtocol:
    """The data settings of the Hessian's fine-tuning and probe batches (SQuAD's windows overlap by half)."""
    return TrainingProtocol(batch_size=batch_size, max_length=max_length, doc_stride=max_length // 2,
                            max_train_examples=examples, source=source)


def finetuned_for_hessian(task: str, model: str = DEFAULT_MODEL, examples: int | None = 2000, epochs: int = 1,
                          lr: float = 5e-5, seed: int = 0, max_length: int = 64, source: str = "auto",
                          progress: bool = True, init_from: str | Path | None = None,
                          ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, float]]:
    """A BERT with ``task``'s head fine-tuned in FP32 on ``examples`` of it, or loaded from the FP32 checkpoint
    ``init_from`` (e.g. the task's Baseline, the model Q-BERT's QAT rows start from) with no further training; loaded
    with eager attention (double backward through SDPA is not implemented on CPU), in eval mode; with its tokenizer and
    training figures (none for ``init_from``)."""
    info = get_run_task(task)
    if init_from is not None and not Path(init_from).is_file():
        raise FileNotFoundError(f"FP32 checkpoint {init_from} not found: a task's Baseline run keeps it (Q-BERT II "
                                "with setting='Baseline' and quick=False, or run_setting('Baseline', ...))")
    set_seed(seed)
    net, tokenizer = info.load(model, attn_implementation="eager")
    if init_from is not None:
        return load_float(net, init_from).eval(), tokenizer, {}
    train = info.train_batches(tokenizer, _hessian_data(32, max_length, examples, source), seed)
    training = finetune(net, train, epochs, lr, progress=progress)
    return net.eval(), tokenizer, training


def run_spectrum(task: str = "sst2", model: str = DEFAULT_MODEL, seed: int = 0, finetune_examples: int = 2000,
                 finetune_epochs: int = 1, lr: float = 5e-5, subsets: int = 10, subset_size: int = 32,
                 max_length: int = 64, max_iter: int = 50, tol: float = 1e-4, blocks: list[str] | None = None,
                 saddle_subsets: int = 1, landscape_blocks: Sequence[str] = (), landscape_points: int = 11,
                 batch_sizes: Sequence[int] = (), batch_size_block: str = "encoder.layer.0",
                 batch_size_subsets: int = 3, source: str = "auto",
                 results_path: str | Path = "results/qbert/spectrum-sst2.json",
                 resume: bool = True, progress: bool = True, init_from: str | Path | None = None,
                 snapshot_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``finetune_examples`` of ``task`` (FP32, eager attention), or load the FP32 model
    ``init_from`` instead (``finetuned_for_hessian``), then measure each block's top Hessian eigenvalue on
    ``subsets`` disjoint training subsets of ``subset_size`` examples each, and its smallest eigenvalue on the first
    ``saddle_subsets`` of them; for each of ``landscape_blocks``, the loss on the first subset along its top two
    eigenvectors, ``landscape_points`` steps from -1 to 1 each way; and the batch-size study: the top eigenvalue of
    ``batch_size_block`` on the first ``batch_size_subsets`` disjoint batches of each size in ``batch_sizes`` (how
    far λ, and so Ω, depends on the Hessian's batch size: PyHessian's users ask), under ``batch_size_effect``.

    With ``snapshot_dir`` (only for a spectrum of a fixed model, ``init_from``), each eigenvalue, landscape and
    batch-size point is kept as it lands under ``spectrum_snapshot_folder`` (``qlib.experiments.snapshots``), and a
    run killed part way (SQuAD's spectrum takes hours on two cores) goes on with what is not measured yet;
    a reused measurement names the process that made it (``made_by``), and ``spectrum_seconds`` sums every
    eigenvalue's seconds, whichever process measured it."""
    arguments = dict(locals())  # the call's arguments, before any other name is bound
    info = get_run_task(task)
    if snapshot_dir is not None and init_from is None:
        raise ValueError("snapshot_dir keeps the spectrum of a fixed model: give init_from (a short fine-tune is not "
                         "kept, so its eigenvalues cannot be resumed)")
    if landscape_points < 2:
        raise ValueError(f"landscape_points must be at least 2, got {landscape_points}")
    bad = [b for b in batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or batch_size_subsets < 1:
        raise ValueError(f"batch_sizes must be positive integers and batch_size_subsets at least 1, got "
                         f"{list(batch_sizes)} and {batch_size_subsets}")
    path = Path(results_path)
    if resume and path.is_file():
        return read_json(path)
    params = spectrum_params(arguments)
    start = time.perf_counter()
    net, tokenizer, training = finetuned_for_hessian(info.name, model, finetune_examples, finetune_epochs, lr, seed,
                                                     max_length, source, progress, init_from)
    unknown = [b for b in [*landscape_blocks, *[batch_size_block] * bool(batch_sizes)] if b not in layer_blocks(net)]
    if unknown:  # before the spectrum's minutes, not after
        raise ValueError(f"unknown landscape or batch-size block(s) {unknown}; allowed: {list(layer_blocks(net))}")
    snapshots = None if snapshot_dir is None else Snapshots(spectrum_snapshot_folder(params, snapshot_dir))
    kept = {} if snapshots is None else snapshots.kept()

    def measure(key: str, how: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The kept measurement ``key``, else ``how()`` measured now and kept."""
        if key in kept:
            return kept[key]
        measurement = how()
        if snapshots is not None:
            snapshots.keep(key, measurement)
        return measurement

    probe = info.train_batches(tokenizer, _hessian_data(subset_size, max_length, subsets * subset_size, source),
                               seed + 1, shuffle=False)
    batches = list(probe)[:subsets]
    records = layer_spectrum(net, batches, blocks, max_iter=max_iter, tol=tol, smallest_subsets=saddle_subsets,
                             seed=seed, measured={(r["subset"], r["block"]): r for k, r in kept.items()
                                                  if k.startswith("eigenvalue ")},
                             on_record=None if snapshots is None else
                             lambda r: snapshots.keep(f"eigenvalue {r['subset']} {r['block']}", r))
    alphas = np.linspace(-1.0, 1.0, landscape_points)
    landscape = {block: measure(f"landscape {block}",
                                partial(block_landscape, net, batches[0], block, alphas, max_iter, tol, seed))
                 for block in landscape_blocks}

    def top_at(size: int) -> dict[str, Any]:
        sized = info.train_batches(tokenizer, _hessian_data(size, max_length, batch_size_subsets * size, source),
                                   seed + 1, shuffle=False)
        rows = layer_spectrum(net, list(sized)[:batch_size_subsets], [batch_size_block], max_iter=max_iter, tol=tol,
                              seed=seed)
        return {"top": [r["top"] for r in rows], "converged": all(r["converged"] for r in rows)}

    by_size = {str(size): measure(f"batch size {size}", partial(top_at, size)) for size in batch_sizes}
    summary = {}
    for name in dict.fromkeys(r["block"] for r in records):
        rows = [r for r in records if r["block"] == name]
        summary[name] = {"top": [r["top"] for r in rows], "omega": omega([r["top"] for r in rows]),
                         "smallest": [r["smallest"] for r in rows if "smallest" in r],
                         "converged": all(r["converged"] and r.get("smallest_converged", True) for r in rows)}
    result = {"experiment": "qbert-spectrum", "task": info.name, "params": params, "blocks": summary,
              "records": records, "landscape": landscape,
              "batch_size_effect": {"block": batch_size_block, "sizes": by_size}, "finetune": training,
              "spectrum_seconds": sum(r["seconds"] for r in records), "reused_measurements": len(kept),
              "provenance": provenance(time.perf_counter() - start, data=info.provenance(source))}
    write_json(path, result)
    if snapshots is not None:
        snapshots.clear()
    return result


SPECTRUM_OPTIONS = ("results_path", "resume", "progress", "snapshot_dir")
"""``run_spectrum``'s keywords that are not part of what a spectrum measures."""


def spectrum_params(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run_spectrum(**arguments)`` measures, as its result's ``params``: every argument but
    ``SPECTRUM_OPTIONS``, the defaults filled in, the task by its canonical name and paths as strings."""
    bound = inspect.signature(run_spectrum).bind(**arguments)
    bound.apply_defaults()
    params = {name: value for name, value in bound.arguments.items() if name not in SPECTRUM_OPTIONS}
    return params | {"task": get_run_task(params["task"]).name, "landscape_blocks": list(params["landscape_blocks"]),
                     "batch_sizes": list(params["batch_sizes"]),
                     "init_from": None if params["init_from"] is None else str(params["init_from"])}


def spectrum_snapshot_folder(params: Mapping[str, Any], snapshot_dir: str | Path) -> Path:
    """Where ``run_spectrum`` keeps its measurements while it runs: ``<snapshot_dir>/spectrum/<task>-<digest>``, the
    digest of its whole ``params`` and of the model file's bytes (``init_from``), so that no other spectrum, nor one
    of a Baseline trained again, ever reuses them."""
    identity = dict(params) | {"init_from_sha256": file_sha256(params["init_from"])}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return Path(snapshot_dir) / "spectrum" / f"{params['task']}-{digest}"


SETTINGS: dict[str, dict[str, Any]] = {
    "Q-BERT 8/8": {"weight_bits": 8, "embedding_bits": 8},
    "Q-BERT 4/8": {"weight_bits": 4, "embedding_bits": 8},
    "Q-BERT 3/8": {"weight_bits": 3, "embedding_bits": 8},
    "Q-BERT 2/8": {"weight_bits": 2, "embedding_bits": 8},
}
"""The rows of Q-BERT's main table that fine-tune at one bit width (w-bits / e-bits)."""

MIXED_SETTINGS: dict[str, dict[str, Any]] = {
    "Q-BERT_MP 2/3": {"choices": (2, 3), "target_bits": 2.5, "embedding_bits": 8},
    "Q-BERT_MP 2/4": {"choices": (2, 4), "target_bits": 3.0, "embedding_bits": 8},
}
"""The mixed-precision rows: per-layer bits from the Ω ranking (``assign_bits``), half the layers raised."""

QBERT_PERCENTILE = 99.9
"""The weight range of every Q-BERT row (QAT and DirectQ): each group's [0.1, 99.9] percentiles, not its min/max.
The packaged model's FFN output matrices hold single weights far out in the tail: with min/max ranges a low-bit
step is wider than nearly every other weight of the group. The Q-BERT II chapter measures those outliers and both
kinds of DirectQ (``directq-w<b>`` rows are the min/max ones)."""

DIRECTQ_BITS = (4, 3, 2)
DIRECTQ: tuple[dict[str, Any], ...] = (*({"weight_bits": b, "percentile": QBERT_PERCENTILE} for b in DIRECTQ_BITS),
                                      *({"weight_bits": b} for b in DIRECTQ_BITS))
"""The post-training rows an FP32 "Baseline" run also evaluates: DirectQ at 4, 3 and 2 bits, no fine-tuning, with
the protocol's clipped ranges and, for comparison, with min/max ranges (``directq_specs``)."""


def directq_specs(baseline: RunSpec, groups: int | str | None) -> tuple[RunSpec, ...]:
    """The ``DIRECTQ`` rows of the FP32 run ``baseline`` at G = ``groups``, as post-training specs."""
    return tuple(RunSpec(baseline.task, "directq", baseline.seed, groups=groups, protocol=baseline.protocol, **row)
                 for row in DIRECTQ)


def mixed_layer_bits(spectrum: Mapping[str, Any], choices: Sequence[int], target_bits: float) -> dict[str, int]:
    """Per-encoder-layer weight bits from a ``run_spectrum`` result: Ω ranks the layers, ``assign_bits`` spends
    the budget on the most sensitive (the embedding's bits are set on their own, not here)."""
    omega_per_layer = {n: b["omega"] for n, b in spectrum["blocks"].items() if n.startswith("encoder.")}
    if not omega_per_layer:
        raise ValueError(f"the spectrum has no encoder layers, only blocks {list(spectrum['blocks'])}")
    return assign_bits(omega_per_layer, choices, target_bits)


def setting_spec(setting: str, task: str, seed: int, groups: int | str | None, checkpoints: str | Path | None,
                 spectrum: Mapping[str, Any] | None = None,
                 protocol: TrainingProtocol = TrainingProtocol()) -> RunSpec:
    """One row of the main table on ``task`` and ``seed`` as a ``RunSpec``: ``"Baseline"`` (FP32; its DirectQ rows
    are ``directq_specs``), a key of ``SETTINGS``, or a key of ``MIXED_SETTINGS`` (its bits from the ``spectrum``
    result). A QAT row starts from the Baseline's FP32 model under ``checkpoints`` (``init_from``), as Q-BERT
    fine-tunes the FP32 model with quantization; ``checkpoints=None`` names no file (a label, a table row)."""
    if setting == "Baseline":
        return RunSpec(task, "fp32", seed, protocol=protocol)
    start = FROM_CHECKPOINT if checkpoints is None else str(fp32_checkpoint(checkpoints, task, seed))
    common = dict(groups=groups, percentile=QBERT_PERCENTILE, init_from=start, protocol=protocol)
    if setting in SETTINGS:
        return RunSpec(task, "qbert", seed, **SETTINGS[setting], **common)
    if setting in MIXED_SETTINGS:
        if spectrum is None:
            raise ValueError(f"setting {setting!r} takes its bits from a Hessian spectrum result; none was given")
        mixed = MIXED_SETTINGS[setting]
        return RunSpec(task, "qbert", seed, weight_bits=min(mixed["choices"]), embedding_bits=mixed["embedding_bits"],
                       layer_bits=mixed_layer_bits(spectrum, mixed["choices"], mixed["target_bits"]), **common)
    allowed = ["Baseline", *SETTINGS, *MIXED_SETTINGS]
    raise ValueError(f"unknown setting {setting!r}; allowed: {allowed}")


def fp32_checkpoint(checkpoints: str | Path, task: str, seed: int) -> Path:
    """Where the Baseline run of ``task`` and ``seed`` keeps its fine-tuned FP32 model (``run``'s layout)."""
    return checkpoint_path(RunSpec(task, "fp32", seed), checkpoints)


def run_setting(setting: str, task: str, seed: int, groups: int | str | None, checkpoints: str | Path,
                spectrum: Mapping[str, Any] | None = None, **run_args: Any) -> list[dict[str, Any]]:
    """Run one row of the main table (``setting_spec``; ``run_args``: ``TrainingProtocol`` fields such as
    ``epochs``, ``noise_rate`` for Quant-Noise, and ``run``'s options such as ``results_dir``). The Baseline keeps
    its FP32 model under ``checkpoints`` and evaluates the DirectQ rows; a QAT row whose FP32 starting point is not
    there runs the Baseline of its task and seed first (again, if only its result files were kept)."""
    options = {name: run_args.pop(name) for name in RUN_OPTIONS if name in run_args}
    noise = {"noise_rate": run_args.pop("noise_rate")} if "noise_rate" in run_args else {}
    protocol = TrainingProtocol(**run_args)
    baseline = setting_spec("Baseline", task, seed, groups, checkpoints, protocol=protocol)
    keep = options | {"checkpoint_dir": checkpoints}
    if setting == "Baseline":  # a knob the Baseline lacks (noise_rate) is refused by its spec, naming it
        return run(baseline.with_(**noise), directq_specs(baseline, groups), **keep)
    if not fp32_checkpoint(checkpoints, task, seed).is_file():
        run(baseline, directq_specs(baseline, groups), **(keep | {"resume": False}))
    return run(setting_spec(setting, task, seed, groups, checkpoints, spectrum, protocol).with_(**noise), **options)


def main_table_rows(spectrum: Mapping[str, Any] | None, groups: int | str | None,
                    task: str = "sst2") -> dict[str, dict[str, Any]]:
    """Q-BERT's main table row by row, in the paper's order: Baseline, then per bit width its DirectQ row (no
    fine-tuning) before its Q-BERT row, then the MP rows (only with a ``spectrum``, which sets their bits). Each
    row: ``w_bits`` and ``e_bits`` as printed, its ``spec`` (on ``task``, seed 0), the ``label`` its result files
    are named by, the ``BertQuantConfig`` whose packed file is its size (``None``: the FP32 file), and MP rows'
    ``layer_bits``."""

    def row(spec: RunSpec, w_bits: str, **extra: Any) -> dict[str, Any]:
        return dict(w_bits=w_bits, e_bits=str(spec.embedding_bits) if spec.method == "qbert" else "8" if
                    spec.method == "directq" else "32", spec=spec, label=spec.label, config=spec.quant_config(),
                    **extra)

    baseline = setting_spec("Baseline", task, 0, groups, None)
    clipped_directq = {r.weight_bits: r for r in directq_specs(baseline, groups) if r.percentile is not None}
    rows: dict[str, dict[str, Any]] = {"Baseline": row(baseline, "32")}
    for name in SETTINGS:
        spec = setting_spec(name, task, 0, groups, None)
        if spec.weight_bits in clipped_directq:
            rows[f"DirectQ {spec.weight_bits}/{spec.embedding_bits}"] = row(clipped_directq[spec.weight_bits],
                                                                            str(spec.weight_bits))
        rows[name] = row(spec, str(spec.weight_bits))
    if spectrum is None:
        return rows
    for name, mixed in MIXED_SETTINGS.items():
        spec = setting_spec(name, task, 0, groups, None, spectrum)
        rows[name] = row(spec, "/".join(map(str, mixed["choices"])) + " MP", layer_bits=dict(spec.layer_bits))
    return rows
