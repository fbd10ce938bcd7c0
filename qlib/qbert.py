"""Q-BERT as runs: the sensitivity study, and the rows of its main table.

``run_spectrum`` fine-tunes (or takes a given FP32 model, e.g. the task's Baseline), then measures the Hessian
spectrum of every block on K subsets. Its result file holds, per block, the top eigenvalue on each subset,
Ω = |mean| + std, the smallest eigenvalue (its sign tells a saddle point), power-iteration counts and convergence,
the seconds each took, and optionally the loss landscape of a few blocks along their top two eigenvectors
(Q-BERT fig. 2).

``SETTINGS``/``MIXED_SETTINGS`` name the main table's rows; ``run_setting`` runs one of them (a QAT row from its
seed's FP32 Baseline model, with clipped weight ranges), and ``main_table_rows`` lays the table out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qlib.checkpoint import load_float
from qlib.config import qbert_config
from qlib.data import get_task, glue_batches, glue_provenance
from qlib.experiment import post_training_config, run_glue, run_label
from qlib.models import DEFAULT_MODEL, load_classifier
from qlib.results import provenance, read_json, write_json
from qlib.sensitivity import assign_bits, block_landscape, layer_blocks, layer_spectrum, omega
from qlib.train import finetune, set_seed


def finetuned_for_hessian(task: str, model: str = DEFAULT_MODEL, examples: int | None = 2000, epochs: int = 1,
                          lr: float = 5e-5, seed: int = 0, max_length: int = 64, source: str = "auto",
                          progress: bool = True, init_from: str | Path | None = None,
                          ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, float]]:
    """A classifier fine-tuned in FP32 on ``examples`` of ``task``, or loaded from the FP32 checkpoint ``init_from``
    (e.g. the task's Baseline, the model Q-BERT's QAT rows start from) with no further training; loaded with eager
    attention (double backward through SDPA is not implemented on CPU), in eval mode; with its tokenizer and
    training figures (none for ``init_from``)."""
    info = get_task(task)
    if init_from is not None and not Path(init_from).is_file():
        raise FileNotFoundError(f"FP32 checkpoint {init_from} not found: a task's Baseline run keeps it (Q-BERT II "
                                "with setting='Baseline' and quick=False, or run_setting('Baseline', ...))")
    set_seed(seed)
    net, tokenizer = load_classifier(model, info.num_labels, attn_implementation="eager")
    if init_from is not None:
        return load_float(net, init_from).eval(), tokenizer, {}
    train = glue_batches(info.name, tokenizer, "train", 32, max_length, examples, seed, source, shuffle=True)
    training = finetune(net, train, epochs, lr, progress=progress)
    return net.eval(), tokenizer, training


def run_spectrum(task: str = "sst2", model: str = DEFAULT_MODEL, seed: int = 0, finetune_examples: int = 2000,
                 finetune_epochs: int = 1, lr: float = 5e-5, subsets: int = 10, subset_size: int = 32,
                 max_length: int = 64, max_iter: int = 50, tol: float = 1e-4, blocks: list[str] | None = None,
                 saddle_subsets: int = 1, landscape_blocks: Sequence[str] = (), landscape_points: int = 11,
                 source: str = "auto", results_path: str | Path = "results/qbert/spectrum-sst2.json",
                 resume: bool = True, progress: bool = True, init_from: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``finetune_examples`` of ``task`` (FP32, eager attention), or load the FP32 model
    ``init_from`` instead (``finetuned_for_hessian``), then measure each block's top Hessian eigenvalue on
    ``subsets`` disjoint training subsets of ``subset_size`` examples each, and its smallest eigenvalue on the first
    ``saddle_subsets`` of them; for each of ``landscape_blocks``, the loss on the first subset along its top two
    eigenvectors, ``landscape_points`` steps from -1 to 1 each way."""
    info = get_task(task)
    if landscape_points < 2:
        raise ValueError(f"landscape_points must be at least 2, got {landscape_points}")
    path = Path(results_path)
    if resume and path.is_file():
        return read_json(path)
    params = dict(task=info.name, model=model, seed=seed, finetune_examples=finetune_examples,
                  finetune_epochs=finetune_epochs, lr=lr, subsets=subsets, subset_size=subset_size,
                  max_length=max_length, max_iter=max_iter, tol=tol, blocks=blocks, saddle_subsets=saddle_subsets,
                  landscape_blocks=list(landscape_blocks), landscape_points=landscape_points, source=source,
                  init_from=None if init_from is None else str(init_from))
    start = time.perf_counter()
    net, tokenizer, training = finetuned_for_hessian(info.name, model, finetune_examples, finetune_epochs, lr, seed,
                                                     max_length, source, progress, init_from)
    unknown = [b for b in landscape_blocks if b not in layer_blocks(net)]
    if unknown:  # before the spectrum's minutes, not after
        raise ValueError(f"unknown landscape block(s) {unknown}; allowed: {list(layer_blocks(net))}")
    probe = glue_batches(info.name, tokenizer, "train", subset_size, max_length, subsets * subset_size, seed + 1,
                         source)
    batches = list(probe)[:subsets]
    spectrum_start = time.perf_counter()
    records = layer_spectrum(net, batches, blocks, max_iter=max_iter, tol=tol, smallest_subsets=saddle_subsets,
                            seed=seed)
    spectrum_seconds = time.perf_counter() - spectrum_start
    alphas = np.linspace(-1.0, 1.0, landscape_points)
    landscape = {block: block_landscape(net, batches[0], block, alphas, max_iter, tol, seed)
                 for block in landscape_blocks}
    summary = {}
    for name in dict.fromkeys(r["block"] for r in records):
        rows = [r for r in records if r["block"] == name]
        summary[name] = {"top": [r["top"] for r in rows], "omega": omega([r["top"] for r in rows]),
                         "smallest": [r["smallest"] for r in rows if "smallest" in r],
                         "converged": all(r["converged"] and r.get("smallest_converged", True) for r in rows)}
    result = {"experiment": "qbert-spectrum", "task": info.name, "params": params, "blocks": summary,
              "records": records, "landscape": landscape, "finetune": training, "spectrum_seconds": spectrum_seconds,
              "provenance": provenance(time.perf_counter() - start, data=glue_provenance(info.name, source=source))}
    write_json(path, result)
    return result


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
DIRECTQ = (*(f"directq-w{b}-p{QBERT_PERCENTILE:g}" for b in DIRECTQ_BITS), *(f"directq-w{b}" for b in DIRECTQ_BITS))
"""The post-training rows an FP32 "Baseline" run also evaluates: DirectQ at 4, 3 and 2 bits, no fine-tuning, with
the protocol's clipped ranges and, for comparison, with min/max ranges."""


def mixed_layer_bits(spectrum: Mapping[str, Any], choices: Sequence[int], target_bits: float) -> dict[str, int]:
    """Per-encoder-layer weight bits from a ``run_spectrum`` result: Ω ranks the layers, ``assign_bits`` spends
    the budget on the most sensitive (the embedding's bits are set on their own, not here)."""
    omega_per_layer = {n: b["omega"] for n, b in spectrum["blocks"].items() if n.startswith("encoder.")}
    if not omega_per_layer:
        raise ValueError(f"the spectrum has no encoder layers, only blocks {list(spectrum['blocks'])}")
    return assign_bits(omega_per_layer, choices, target_bits)


def setting_job(setting: str, spectrum: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``run_glue`` arguments for one row of the main table: ``"Baseline"`` (FP32, plus the DirectQ rows), a key
    of ``SETTINGS``, or a key of ``MIXED_SETTINGS`` (needs the ``spectrum`` result). QAT rows also need their
    starting point, ``init_from`` (see ``run_setting``)."""
    if setting == "Baseline":
        return {"method": "fp32", "post_training": DIRECTQ}
    if setting in SETTINGS:
        return {"method": "qbert", **SETTINGS[setting], "percentile": QBERT_PERCENTILE}
    if setting in MIXED_SETTINGS:
        if spectrum is None:
            raise ValueError(f"setting {setting!r} takes its bits from a Hessian spectrum result; none was given")
        mixed = MIXED_SETTINGS[setting]
        return {"method": "qbert", "weight_bits": min(mixed["choices"]), "embedding_bits": mixed["embedding_bits"],
                "layer_bits": mixed_layer_bits(spectrum, mixed["choices"], mixed["target_bits"]),
                "percentile": QBERT_PERCENTILE}
    allowed = ["Baseline", *SETTINGS, *MIXED_SETTINGS]
    raise ValueError(f"unknown setting {setting!r}; allowed: {allowed}")


def fp32_checkpoint(checkpoints: str | Path, task: str, seed: int) -> Path:
    """Where the Baseline run of ``task`` and ``seed`` keeps its fine-tuned FP32 model (``run_glue``'s layout)."""
    return Path(checkpoints) / task / f"fp32-seed{seed}.safetensors"


def setting_run(setting: str, task: str, seed: int, groups: int | str | None, checkpoints: str | Path,
                spectrum: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``run_glue`` arguments for one row of the main table on ``task`` and ``seed``: the Baseline keeps its FP32
    model under ``checkpoints``; a QAT row starts from that model (``init_from``), as Q-BERT fine-tunes the FP32
    model with quantization."""
    job = setting_job(setting, spectrum) | {"task": task, "seed": seed, "groups": groups}
    if setting == "Baseline":
        return job | {"checkpoint_dir": str(checkpoints)}
    return job | {"init_from": str(fp32_checkpoint(checkpoints, task, seed))}


def run_setting(setting: str, task: str, seed: int, groups: int | str | None, checkpoints: str | Path,
                spectrum: Mapping[str, Any] | None = None, **run_args: Any) -> list[dict[str, Any]]:
    """Run one row of the main table (``setting_run``; ``run_args``: the other ``run_glue`` arguments, e.g.
    ``epochs``, ``results_dir``, ``noise_rate`` for Quant-Noise). A QAT row whose FP32 starting point is not under
    ``checkpoints`` runs the Baseline of its task and seed first (again, if only its result files were kept)."""
    if setting != "Baseline" and not fp32_checkpoint(checkpoints, task, seed).is_file():
        baseline_args = {name: value for name, value in run_args.items() if name != "noise_rate"}
        run_glue(**setting_run("Baseline", task, seed, groups, checkpoints), **(baseline_args | {"resume": False}))
    return run_glue(**setting_run(setting, task, seed, groups, checkpoints, spectrum), **run_args)


def main_table_rows(spectrum: Mapping[str, Any] | None, groups: int | str | None) -> dict[str, dict[str, Any]]:
    """Q-BERT's main table row by row, in the paper's order: Baseline, then per bit width its DirectQ row (no
    fine-tuning) before its Q-BERT row, then the MP rows (only with a ``spectrum``, which sets their bits). Each
    row: ``w_bits`` and ``e_bits`` as printed, the ``label`` its result files are named by, the
    ``BertQuantConfig`` whose packed file is its size (``None``: the FP32 file), and MP rows' ``layer_bits``."""
    p = QBERT_PERCENTILE
    rows: dict[str, dict[str, Any]] = {"Baseline": dict(w_bits="32", e_bits="32", label="fp32", config=None)}
    for name, bits in SETTINGS.items():
        w, e = bits["weight_bits"], bits["embedding_bits"]
        directq = f"directq-w{w}-p{p:g}"
        if directq in DIRECTQ:
            rows[f"DirectQ {w}/{e}"] = dict(w_bits=str(w), e_bits=str(e), label=directq,
                                            config=post_training_config(directq, groups))
        rows[name] = dict(w_bits=str(w), e_bits=str(e), label=run_label("qbert", w, e, groups, percentile=p,
                                                                        init_from="fp32"),
                          config=qbert_config(w, e, groups=groups, percentile=p))
    if spectrum is None:
        return rows
    for name, mixed in MIXED_SETTINGS.items():
        job = setting_job(name, spectrum)
        w, e, layer_bits = job["weight_bits"], job["embedding_bits"], job["layer_bits"]
        rows[name] = dict(w_bits="/".join(map(str, mixed["choices"])) + " MP", e_bits=str(e),
                          label=run_label("qbert", w, e, groups, layer_bits, percentile=p, init_from="fp32"),
                          config=qbert_config(w, e, groups=groups, layer_bits=layer_bits, percentile=p),
                          layer_bits=layer_bits)
    return rows
