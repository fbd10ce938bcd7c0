"""Result files: one JSON per run, with provenance, written atomically and read back with clear errors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from qlib.common.atomic import atomic_write
from qlib.common.cpu import CPU_CLASSES, cpu_class, cpu_features, cpu_identity, cpu_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

PACKAGES = ("torch", "transformers", "datasets", "numpy", "scikit-learn", "safetensors", "qbook")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def code_state() -> dict[str, Any]:
    """The code a run ran: the git commit, and whether the tree differs from it (tracked changes outside
    ``results/``, or untracked files under ``qlib/``). ``QBOOK_GIT_COMMIT``, when set, names the commit for a copy of
    the tree that runs without its git (another machine); the record then says it is an override and keeps the
    local git's own answer beside it."""
    local = _git("rev-parse", "HEAD")
    # Result files are data, not code: a run that writes a result does not make its own code dirty.
    tracked = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results")
    untracked = _git("status", "--porcelain", "--untracked-files=all", "--", ":(top)qlib")
    dirty = None if tracked is None or untracked is None else bool(tracked or untracked)
    override = os.environ.get("QBOOK_GIT_COMMIT")
    state: dict[str, Any] = {"git_commit": override or local, "git_dirty": dirty}
    if override:
        state |= {"git_commit_override": True, "git_commit_local": local}
    return state


_CODE_AT_IMPORT = code_state()
"""``code_state`` when this process imported this module, before its run began: the code the process runs (Python
keeps the modules it imported, whatever the tree becomes while it runs)."""


def provenance(wall_time_s: float, device: torch.device | str = "cpu", *,
               data: dict[str, Any] | None) -> dict[str, Any]:
    """Where a result came from: the code (``code_state`` when the process started, the code it ran; where the tree
    changed before the record is written, ``code_at_write`` gives the state then), the data files it read with their
    SHA-256 (``data``, from ``qlib.experiments.data.data_provenance``; ``None`` only for a result that read no data
    file), versions, machine and the device the work ran on, wall time, date. Written once, by the run; nothing edits
    it afterwards."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    now = code_state()
    started = now if now.get("git_commit_override") else _CODE_AT_IMPORT  # a copy without git: only the override
    return {
        **started, **({} if now == started else {"code_at_write": now}),
        "data": data,
        "versions": {"python": platform.python_version(), **versions},
        "machine": {"cpu": cpu_model(), "cpu_features": cpu_features(), "cpu_identity": cpu_identity(),
                    "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "device": _device_name(device),
                    # > cores means the run shared the CPU with other work: its timings are not clean.
                    "load_avg_1_5_15_min": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
                    else None},
        "wall_time_s": round(wall_time_s, 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` atomically (``atomic_write``); NaN/Inf are refused before anything is written."""
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def benchmark_path(name: str, folder: str | os.PathLike = "results/benchmarks") -> Path:
    """A new result file for one run of benchmark ``name``: ``<folder>/<name>-<CPU class>-<UTC minute>.json``
    (class ``amx``, ``avx512-vnni``, ``avx2`` or ``other``), so that no run writes over a committed one; a
    ``FileExistsError`` if a run in the same minute already wrote it."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    path = Path(folder) / f"{name}-{CPU_CLASSES.get(cpu_class(), 'other')}-{stamp}.json"
    if path.exists():
        raise FileExistsError(f"{path} exists: a result is written once; wait a minute or pass another --out")
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read one result file; a corrupt or non-object file raises ``ValueError`` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt result file {path}: {err}; delete it and re-run that job") from err
    if not isinstance(record, dict):
        raise ValueError(f"corrupt result file {path}: expected a JSON object, got {type(record).__name__}")
    return record


NOTES_FILE = "notes.toml"
NOTE_KINDS = ("altered-data", "no-data-record", "edited", "other-stack", "remark")
"""What a note says about its files: computed on the earlier altered data; written before results recorded their
data (and read none); edited by hand after the run; run with another software stack; any other remark."""


def read_notes(root: str | os.PathLike) -> dict[str, list[dict[str, str]]]:
    """The notes of ``<root>/notes.toml`` per result file (path relative to ``root``): [{"kind", "text"}, ...]; {}
    without the file. A note of an unknown kind, or without files or text, raises ``ValueError`` naming it."""
    path = Path(root) / NOTES_FILE
    if not path.is_file():
        return {}
    try:
        notes = tomllib.loads(path.read_text(encoding="utf-8")).get("note", [])
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from err
    by_file: dict[str, list[dict[str, str]]] = {}
    for number, note in enumerate(notes, 1):
        if note.get("kind") not in NOTE_KINDS or not note.get("text") or not note.get("files"):
            raise ValueError(f"{path}: note {number} needs kind (one of {NOTE_KINDS}), text and files; got "
                             f"kind={note.get('kind')!r}")
        for name in note["files"]:
            by_file.setdefault(name, []).append({"kind": note["kind"], "text": " ".join(note["text"].split())})
    return by_file


def notes_for(path: str | os.PathLike) -> list[dict[str, str]]:
    """The notes on one result file: those of the ``notes.toml`` in the nearest folder above it that has one."""
    path = Path(path).resolve()
    for folder in path.parents:
        if (folder / NOTES_FILE).is_file():
            return read_notes(folder).get(path.relative_to(folder).as_posix(), [])
    return []


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """One result file as the tables use it: its record (``read_json``) with its ``path`` and the ``notes`` that
    ``notes.toml`` keeps on it (``notes_for``)."""
    return read_json(path) | {"path": str(path), "notes": notes_for(path)}


def records_data(record: dict[str, Any]) -> bool:
    """Whether a result record (or a spectrum's) records the data it read (``provenance['data']``); one from before
    results recorded their data was computed on the earlier, altered copy of GLUE."""
    return record.get("provenance", {}).get("data") is not None


def records_its_data(path: str | os.PathLike) -> bool:
    """Whether the result file at ``path`` exists and records the data it read (``provenance['data']``: the files'
    SHA-256, or the hub). A result from before results recorded their data (the earlier, altered copy of GLUE) does
    not: the protocol re-runs it on the official files."""
    path = Path(path)
    return path.is_file() and records_data(read_json(path))


def read_results(folder: str | os.PathLike, superseded: bool = False) -> list[dict[str, Any]]:
    """Every ``*.json`` result under ``folder`` (recursively), each with its ``path`` and the ``notes`` that
    ``notes.toml`` keeps on it (``notes_for``); [] if there is none.

    A task whose re-run on the official files has begun (some result of it under ``folder`` records its data) keeps
    only those results: its older ones, on the earlier, altered copy, are left out (``superseded=True`` keeps them),
    so that no table averages runs on two different datasets while the protocol replaces them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    records = [read_result(p) for p in sorted(folder.rglob("*.json"))]
    rerun = {r.get("task") for r in records if records_data(r)}
    return [r for r in records if superseded or records_data(r) or r.get("task") not in rerun]
