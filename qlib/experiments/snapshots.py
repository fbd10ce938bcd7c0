"""Resumable training: what ``finetune`` needs to go on where a killed process stopped, saved every few minutes, so
that a job cut short (a machine restarted, a session ended) continues from its last snapshot instead of starting
again, and ends with the weights it would have had without the stop.

A snapshot is one safetensors file (no pickle) per ``finetune`` call of a run, numbered in call order
(``finetune-0.safetensors``, ...: iPQ's stages are four calls), holding everything the next step depends on:

- the model's state dict: parameters, buffers (Q8BERT's EMA ranges) and the modules' extra state (PQ noise's mask
  generator, ``qlib.bert.pq_noise``);
- AdamW's moments and step counts, and the learning-rate schedule's position;
- the global torch RNG (dropout, Quant-Noise's scalar masks), and the CUDA one when the model is on a GPU;
- the data order: the loader's generator as it was when the epoch began; resuming draws the epoch's permutation from
  it again and skips the batches done.

A call that finished keeps its last snapshot, so a run of several calls replays the finished ones (their weights and
RNG are loaded, nothing is trained) and goes on with the one that was cut short. After training, each evaluation of
the trained model is kept beside the snapshots as it lands (``Snapshots.keep``), so a run killed during its
evaluations (SQuAD's dev set takes minutes per row) goes on with the rows not yet evaluated; a Hessian spectrum keeps
each eigenvalue it measures the same way (``qlib.experiments.qbert.run_spectrum``). ``Snapshots.clear`` removes all
of it once the results are written.

Where training stands (``Progress``: epoch, step, examples, training seconds so far, the global steps at which a
process resumed, and the git commit each process ran) travels in the file's metadata; a result trained across
processes records the last two.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from qlib.common.atomic import atomic_write
from qlib.experiments.results import code_state, read_json, write_json

EVALUATIONS_FILE = "evaluations.json"
"""The file beside a run's snapshots that keeps its measurements so far (key -> measurement: an evaluated row's, a
spectrum's eigenvalue)."""

SNAPSHOT_EVERY_S = 600.0
"""Seconds of training between two snapshots: at most that much is lost to a kill, for a few seconds of writing."""


@dataclass
class Progress:
    """Where one ``finetune`` call stands: ``step`` batches done of epoch ``epoch``, ``examples`` seen and training
    ``seconds`` spent by every process so far, the global steps at which a process ``resumed_at``, the git ``commits``
    of the processes (first to last), and whether the call ``finished``."""

    epoch: int = 0
    step: int = 0
    examples: int = 0
    seconds: float = 0.0
    resumed_at: list[int] = field(default_factory=list)
    commits: list[str | None] = field(default_factory=list)
    finished: bool = False


class Snapshots:
    """The snapshot files of one run's ``finetune`` calls, under ``directory``, written every ``every_s`` seconds of
    training (0: after every step)."""

    def __init__(self, directory: str | Path, every_s: float = SNAPSHOT_EVERY_S) -> None:
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not every_s >= 0:
            raise ValueError(f"every_s must be a number of seconds >= 0, got {every_s!r}")
        self.directory, self.every_s, self._calls = Path(directory), float(every_s), 0

    def claim(self) -> Path:
        """The file of the run's next ``finetune`` call (calls are numbered in the order they claim)."""
        path = self.directory / f"finetune-{self._calls}.safetensors"
        self._calls += 1
        return path

    def kept(self) -> dict[str, dict[str, Any]]:
        """The measurements ``keep`` kept so far, by key; {} when none."""
        path = self.directory / EVALUATIONS_FILE
        return read_json(path) if path.is_file() else {}

    def keep(self, key: str, measurement: dict[str, Any]) -> None:
        """Keep one measurement of the trained model under ``key`` (what was measured, e.g. an evaluated row's
        settings), atomically, beside the ones kept before, stamped with the process that made it (``made_by``: git
        commit and date), which a result that reuses it records."""
        made_by = {"git_commit": code_state()["git_commit"],
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(self.directory / EVALUATIONS_FILE, self.kept() | {key: measurement | {"made_by": made_by}})

    def clear(self) -> None:
        """Remove every snapshot and kept evaluation of the run (its results are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()  # a copy: tied weights must not share storage


def save_snapshot(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, progress: Progress,
                  epoch_data_state: torch.Tensor | None, identity: dict[str, Any]) -> Path:
    """Write the training state (see the module) to ``path``, atomically.

    Args:
        progress: where training stands.
        epoch_data_state: the loader's generator state when the current epoch began (None: the data order is fixed).
        identity: the call's settings (epochs, steps per epoch, learning rate); ``load_snapshot`` refuses another.
    """
    tensors = {f"model.{name}": _cpu_copy(value) for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, entries in optimizer_state["state"].items():
        tensors |= {f"optimizer.{index}.{key}": _cpu_copy(value) for key, value in entries.items()}  # AdamW: tensors
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    if epoch_data_state is not None:
        tensors["rng.data"] = epoch_data_state
    metadata = {"format": "pt", "progress": json.dumps(asdict(progress)), "identity": json.dumps(identity),
                "optimizer": json.dumps(optimizer_state["param_groups"]), "schedule": json.dumps(schedule.state_dict())}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_snapshot(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                  identity: dict[str, Any]) -> tuple[Progress, torch.Tensor | None]:
    """Restore a ``save_snapshot`` file into ``model``, ``optimizer``, ``schedule`` and the global RNG.

    Returns:
        (where training stands, the loader's generator state at the start of that epoch or None).

    Raises:
        ValueError: the snapshot is of a training with other settings than ``identity``.
    """
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        saved = json.loads(metadata["identity"])
        if saved != identity:
            raise ValueError(f"snapshot {path} is of another training ({saved}), not of this one ({identity}); "
                             "remove it to start this training afresh")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".")
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optimizer"])})
    schedule.load_state_dict(json.loads(metadata["schedule"]))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], next(model.parameters()).device)
    return Progress(**json.loads(metadata["progress"])), tensors.get("rng.data")
