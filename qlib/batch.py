"""Run a chapter as a batch of papermill jobs over a grid of parameters, keeping every executed notebook.

    python -m qlib.batch chapters/q8bert.ipynb --grid task=cola,rte --grid method=fp32,qat \\
        --grid seed=0,1,2 -p quick=false --out runs/q8bert

Jobs run one after another (each a fresh kernel, in the chapter's folder); the chapter is snapshotted first so
that editing it during a long batch changes nothing. A failing job is named with its error and its executed
notebook; the others still run, and the batch exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

import papermill


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


def run_batch(notebook: str | Path, grid: dict[str, list[Any]], fixed: dict[str, Any], out_dir: str | Path,
              fail_fast: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Execute ``notebook`` once per grid point; return (jobs succeeded, failures as (job, message) pairs)."""
    notebook, out_dir = Path(notebook).resolve(), Path(out_dir).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    for params in expand_grid(grid) or [{}]:  # every job's values, before the first job's minutes
        check_parameters(notebook, {**fixed, **params})
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"_source_{notebook.name}"
    shutil.copyfile(notebook, source)
    jobs = expand_grid(grid)
    failures: list[tuple[str, str]] = []
    succeeded = 0
    for i, params in enumerate(jobs, 1):
        name = job_name(params)
        output = out_dir / f"{name}.ipynb"
        print(f"[{i}/{len(jobs)}] {name}", flush=True)
        try:
            papermill.execute_notebook(str(source), str(output), parameters={**fixed, **params},
                                       cwd=str(notebook.parent), progress_bar=False)
            succeeded += 1
        except papermill.PapermillExecutionError as err:
            failures.append((name, f"{err.ename}: {err.evalue} (executed notebook: {output})"))
            print(f"FAILED {name}: {failures[-1][1]}", file=sys.stderr, flush=True)
            if fail_fast:
                break
    return succeeded, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--grid", action="append", type=_assignment, default=[], metavar="NAME=V1,V2",
                        help="a parameter and the comma-separated values to sweep")
    parser.add_argument("-p", "--param", action="append", type=_assignment, default=[], metavar="NAME=VALUE",
                        help="a parameter fixed for every job")
    parser.add_argument("--out", type=Path, required=True, help="folder for the executed notebooks")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing job")
    args = parser.parse_args(argv)
    grid = {name: [parse_value(v) for v in values.split(",")] for name, values in args.grid}
    fixed = {name: parse_value(value) for name, value in args.param}
    try:
        succeeded, failures = run_batch(args.notebook, grid, fixed, args.out, args.fail_fast)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, message in failures:
        print(f"FAILED job {name}: {message}", file=sys.stderr)
    print(f"{succeeded} jobs succeeded, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
