"""The library's layers, checked from its imports: a lower layer never imports an upper one, and the two layers
that share a rank (second order, deployment) never import each other. Every module must be placed in a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

QLIB = Path(__file__).parents[1] / "qlib"

LAYERS: list[tuple[str, int, set[str]]] = [  # (layer, rank, modules): a module may import only lower ranks or its own
    ("shared helpers", 0, {"checks", "atomic", "cpu"}),
    ("quantization core", 1, {"weight_quantizer", "quantizers", "observers", "quant_noise", "packing", "integer_ops",
                               "product_quantization"}),
    ("BERT made quantized", 2, {"config", "modules", "integer_modules", "pq_modules", "convert"}),
    ("second order", 3, {"hessian", "sensitivity"}),
    ("deployment", 3, {"checkpoint", "int8", "onnx_export"}),
    ("experiments", 4, {"data", "conll", "qa", "ner", "metrics", "models", "train", "probe", "results", "tasks", "distill", "spec", "experiment", "jobs",
                        "qbert", "q8bert_tables", "qbert_tables", "quant_noise_tables",
                        "protocol", "batch", "report", "speed", "compare", "papers"}),
    ("public API", 5, {"__init__"}),
]
LAYER_OF = {module: (name, rank) for name, rank, modules in LAYERS for module in modules}


def qlib_imports(path: Path) -> set[str]:
    """The qlib modules a file imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qlib":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("qlib.")}
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in QLIB.glob("*.py")}
    assert modules == set(LAYER_OF), (f"place these modules in a layer: {sorted(modules - set(LAYER_OF))}; "
                                      f"gone: {sorted(set(LAYER_OF) - modules)}")


@pytest.mark.parametrize("module", sorted(LAYER_OF))
def test_a_module_imports_only_lower_layers_or_its_own(module):
    layer, rank = LAYER_OF[module]
    upward = sorted(dep for dep in qlib_imports(QLIB / f"{module}.py") - {module}
                    if dep in LAYER_OF and LAYER_OF[dep][0] != layer and LAYER_OF[dep][1] >= rank)
    assert not upward, f"qlib.{module} ({layer}) imports {upward}, which sit in the same rank or above"


def test_the_checker_sees_lazy_and_package_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\nfrom qlib import convert_bert\nimport qlib.int8\n\ndef f():\n"
                    "    from qlib.report import notes_markdown\n")
    assert qlib_imports(path) == {"convert_bert", "int8", "report"}
