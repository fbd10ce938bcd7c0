"""Run a chapter as a batch of papermill jobs over a grid of parameters, keeping every executed notebook.

    python -m qlib.experiments.batch chapters/q8bert.ipynb --grid task=cola,rte --grid method=fp32,qat \\
        --grid seed=0,1,2 -p quick=false --out runs/q8bert

Each grid point is a ``NotebookJob``, run by the same Dask machinery as ``python -m qlib.experiments.protocol``
(``qlib.experiments.jobs``): on a local cluster (``--workers``, default one at a time) or an existing one
(``--scheduler``). Each job is a fresh kernel in the chapter's folder; the chapter is snapshotted first so that editing
it during a long batch changes nothing. A failing job is named with its error and its executed notebook; the others
still run, and the batch exits non-zero at the end. (A batch re-runs every grid point; the chapters themselves skip runs
whose result files exist.)"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import papermill

from qlib.experiments.jobs import close_client, execute, make_client


def parse_value(text: str) -> Any:
    """``3`` → 3, ``false`` → False, ``null`` → None, ``0.5`` → 0.5, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order (the last name varies fastest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
                           "None": type(None)}


def _annotation_types(annotation: str, name: str, notebook: Path) -> tuple[type, ...]:
    """``Optional[int]`` → (int, NoneType); ``Union[int, str]`` → (int, str); ``float`` → (float,)."""
    match = re.fullmatch(r"\s*(Optional|Union)\[(.*)\]\s*", annotation)
    names = [n.strip() for n in match.group(2).split(",")] if match else [annotation.strip()]
    if match and match.group(1) == "Optional":
        names.append("None")
    unknown = [n for n in names if n not in _TYPES]
    if unknown:
        raise ValueError(f"{notebook}: parameter {name!r} is annotated {annotation!r}; qlib understands "
                         f"{', '.join(_TYPES)}, Optional[...] and Union[...]")
    return tuple(_TYPES[n] for n in names)


def parameter_types(notebook: str | Path) -> dict[str, tuple[type, ...]]:
    """Each parameter of the notebook's ``parameters`` cell and the types its value may take: those its annotation
    names (``epochs: Optional[int] = None``), else its default's type. A float also takes an int; a parameter
    whose default is None needs an annotation."""
    notebook = Path(notebook)
    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'; papermill cannot parameterize it")
    types = {}
    for name, info in declared.items():
        if info["inferred_type_name"] != "None":
            types[name] = _annotation_types(info["inferred_type_name"], name, notebook)
            continue
        default = ast.literal_eval(info["default"])
        if default is None:
            raise ValueError(f"{notebook}: parameter {name!r} defaults to None without an annotation; write "
                             f"e.g. `{name}: Optional[int] = None` so a wrong value can be refused")
        types[name] = (type(default),)
    return {name: (*t, int) if float in t and int not in t else t for name, t in types.items()}


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def check_parameter_types(notebook: str | Path, values: Mapping[str, Any]) -> None:
    """Refuse a value of a declared parameter whose type its ``parameter_types`` do not allow (``quick='flase'``
    or ``quick=None`` for ``quick = True``), naming the parameter and the expected type. Names the notebook does
    not declare are ignored, so a chapter can pass its ``globals()``."""
    for name, types in parameter_types(notebook).items():
        if name in values:
            value = values[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise TypeError(f"parameter {name!r} of {Path(notebook).name} must be {_type_names(types)}, got "
                                f"{value!r} ({type(value).__name__}); e.g. -p {name} true, not a misspelling")


def check_parameters(notebook: str | Path, params: Mapping[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not declare (papermill would only warn), and
    values of the wrong type (``check_parameter_types``)."""
    declared = parameter_types(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {notebook}; allowed: {sorted(declared)}")
    check_parameter_types(notebook, params)


def job_name(params: dict[str, Any]) -> str:
    """A file name for one grid point: ``setting-Q-BERT_MP_2-3_seed-0`` (path separators and spaces replaced)."""
    name = "_".join(f"{k}-{v}" for k, v in params.items()) or "job"
    return re.sub(r"[^\w.+=-]", "_", name.replace("/", "-"))


@dataclass(frozen=True)
class NotebookJob:
    """One papermill execution of ``source`` (a chapter's snapshot) with ``parameters``, kept at ``output``, run in
    the chapter's folder ``cwd``; a job of ``qlib.experiments.jobs.execute``. ``job``: the protocol job the execution
    runs (its result files tell whether it is done), if any."""

    name: str
    source: str
    output: str
    cwd: str
    parameters: Mapping[str, Any] = field(hash=False)
    needs: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)
    job: Any = None

    def done(self) -> bool:  # a batch executes every grid point; the chapter skips the runs whose results exist
        return self.job is not None and self.job.done()

    def recorded(self) -> bool:
        return self.job is not None and self.job.recorded()

    def __call__(self) -> str:
        Path(self.output).parent.mkdir(parents=True, exist_ok=True)
        try:
            papermill.execute_notebook(self.source, self.output, parameters=dict(self.parameters), cwd=self.cwd,
                                       progress_bar=False)
        except papermill.PapermillExecutionError as err:  # re-raised plainly: the message is what the batch reports
            raise RuntimeError(f"{err.ename}: {err.evalue} (executed notebook: {self.output})") from None
        return f"executed notebook: {self.output}"


def run_batch(notebook: str | Path, grid: dict[str, list[Any]], fixed: dict[str, Any], out_dir: str | Path,
              fail_fast: bool = False, scheduler: str | None = None,
              workers: int | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Execute ``notebook`` once per grid point on Dask (``qlib.experiments.jobs``); return (jobs succeeded, failures as
    (job, message) pairs)."""
    notebook, out_dir = Path(notebook).resolve(), Path(out_dir).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    for params in expand_grid(grid) or [{}]:  # every job's values, before the first job's minutes
        check_parameters(notebook, {**fixed, **params})
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"_source_{notebook.name}"
    shutil.copyfile(notebook, source)
    jobs = [NotebookJob(job_name(params), str(source), str(out_dir / f"{job_name(params)}.ipynb"),
                        str(notebook.parent), {**fixed, **params}) for params in expand_grid(grid)]
    client, threads = make_client(scheduler, workers)
    try:
        report = execute(jobs, client, threads, resume=False, fail_fast=fail_fast)
    finally:
        close_client(client)
    failures = [(o.name, o.error.removeprefix("RuntimeError: ")) for o in report.outcomes if o.status != "done"]
    return len(report.by_status("done")), failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.experiments.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--grid", action="append", type=_assignment, default=[], metavar="NAME=V1,V2",
                        help="a parameter and the comma-separated values to sweep")
    parser.add_argument("-p", "--param", action="append", type=_assignment, default=[], metavar="NAME=VALUE",
                        help="a parameter fixed for every job")
    parser.add_argument("--out", type=Path, required=True, help="folder for the executed notebooks")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing job")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (tcp://host:8786); default: a local cluster")
    parser.add_argument("--workers", type=int, default=None,
                        help="local cluster: notebooks executed at once (default 1)")
    args = parser.parse_args(argv)
    grid = {name: [parse_value(v) for v in values.split(",")] for name, values in args.grid}
    fixed = {name: parse_value(value) for name, value in args.param}
    try:
        succeeded, failures = run_batch(args.notebook, grid, fixed, args.out, args.fail_fast, args.scheduler,
                                        args.workers)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, message in failures:
        print(f"FAILED job {name}: {message}", file=sys.stderr)
    print(f"{succeeded} jobs succeeded, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
