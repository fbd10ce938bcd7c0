"""The library's layers, checked from its imports: each layer is a package of ``qlib``, a lower layer never imports
an upper one, and the two layers that share a rank (second order, deployment) never import each other. Every module
must sit in a layer's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

QLIB = Path(__file__).parents[1] / "qlib"

LAYERS: dict[str, int] = {  # package: rank; a module may import only lower ranks or its own package
    "common": 0,  # shared helpers
    "core": 1,  # the quantization core
    "bert": 2,  # BERT made quantized
    "second_order": 3,
    "deploy": 3,
    "experiments": 4,
}
PUBLIC_API = 5  # qlib/__init__.py


def modules() -> dict[str, str]:
    """Every module of qlib ("package.module") and its package ("" for qlib/__init__.py)."""
    found = {"__init__": ""}
    for path in QLIB.glob("*/*.py"):
        found[f"{path.parent.name}.{path.stem}"] = path.parent.name
    return found


def qlib_imports(path: Path) -> set[str]:
    """The qlib packages a file imports from anywhere in it (top level or inside a function); ``qlib`` itself for the
    public API (``from qlib import convert_bert``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "qlib":
                found.add(parts[1] if len(parts) > 1 else "qlib")
    return found


def test_every_module_sits_in_a_layer_package():
    loose = sorted(p.name for p in QLIB.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"move these modules into a layer's package: {loose}"
    assert {p.name for p in QLIB.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)
    for package in LAYERS:
        assert (QLIB / package / "__init__.py").is_file(), f"qlib/{package} has no __init__.py"


@pytest.mark.parametrize("module", sorted(m for m, package in modules().items() if package))
def test_a_module_imports_only_lower_layers_or_its_own(module):
    package, name = module.split(".")
    rank = LAYERS[package]
    imported = qlib_imports(QLIB / package / f"{name}.py") - {package}
    assert "qlib" not in imported, f"qlib.{module} imports the public API (qlib/__init__.py), which sits above it"
    upward = sorted(dep for dep in imported if LAYERS[dep] >= rank)
    assert not upward, f"qlib.{module} (rank {rank}) imports qlib.{upward}, which sit in the same rank or above"


def test_the_public_api_reaches_only_the_layers_below_experiments():
    assert max(LAYERS[p] for p in qlib_imports(QLIB / "__init__.py")) < LAYERS["experiments"]
    assert PUBLIC_API > max(LAYERS.values())


def test_the_checker_sees_lazy_and_package_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\nfrom qlib import convert_bert\nimport qlib.deploy.int8\n\ndef f():\n"
                    "    from qlib.experiments.report import notes_markdown\n")
    assert qlib_imports(path) == {"qlib", "deploy", "experiments"}


def test_every_module_has_its_page_in_the_api_reference():
    pages = "".join(p.read_text(encoding="utf-8") for p in (QLIB.parent / "api").glob("*.md"))
    missing = sorted(f"qlib.{m}" for m, package in modules().items()
                     if package and not m.endswith(".__init__") and f".. automodule:: qlib.{m}\n" not in pages)
    assert not missing, f"add these modules to a page under api/: {missing}"
