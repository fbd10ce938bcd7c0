"""Result files (atomic, provenance, corrupt files) and the papermill batch (grid, unknown parameters, failures)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from qlib.experiments.batch import check_parameter_types, expand_grid, main, parameter_types, parse_value
from qlib.experiments.results import provenance, read_json, read_results, write_json


def test_write_is_atomic_and_leaves_nothing_behind_on_failure(tmp_path):
    path = write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert read_json(path) == {"x": 1}
    assert path.stat().st_mode & 0o644 == 0o644  # readable by everyone, like any committed file
    with pytest.raises(ValueError):
        write_json(path, {"x": float("nan")})  # not valid JSON: refused before anything is replaced
    assert read_json(path) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_corrupt_result_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text('{"task": "sst2", "metr')
    with pytest.raises(ValueError, match=r"corrupt result file .*bad\.json"):
        read_results(tmp_path)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_json(tmp_path / "bad.json")


def test_provenance_has_commit_versions_machine_data_and_date():
    record = provenance(12.345, data={"source": "local", "folder": "/d", "files": {"glue/x.tsv": "ab"}})
    assert set(record) >= {"git_commit", "git_dirty", "data", "versions", "machine", "wall_time_s", "date"}
    assert record["wall_time_s"] == 12.35 and record["versions"]["torch"]
    assert record["machine"]["torch_threads"] >= 1 and record["data"]["files"] == {"glue/x.tsv": "ab"}
    assert set(record["machine"]["cpu_features"]) <= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                      "amx_bf16", "amx_int8"}
    assert set(record["machine"]["cpu_identity"]) == {"family", "model", "stepping", "microcode", "caches"}
    with pytest.raises(TypeError, match="data"):
        provenance(1.0)  # every writer says what data it read (None: none)


def test_the_cpu_identity_names_each_cache_level_and_skips_what_it_cannot_read(tmp_path):
    from qlib.common.cpu import cpu_identity

    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "64K"),
                                                 ("2", "Unified", "2048K"), ("3", "Unified", "491520K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    (tmp_path / "index4").mkdir()  # unreadable: no files
    identity = cpu_identity(tmp_path)
    assert identity["caches"] == {"L1d": "48K", "L1i": "64K", "L2": "2048K", "L3": "491520K"}
    assert cpu_identity(tmp_path / "missing")["caches"] == {}


def test_a_commit_override_is_recorded_as_one(monkeypatch):
    monkeypatch.setenv("QBOOK_GIT_COMMIT", "f" * 40)
    record = provenance(0.0, data=None)
    assert record["git_commit"] == "f" * 40 and record["git_commit_override"] is True
    monkeypatch.delenv("QBOOK_GIT_COMMIT")
    local = provenance(0.0, data=None)
    assert "git_commit_override" not in local and record["git_commit_local"] == local["git_commit"]


def test_an_untracked_file_under_qlib_makes_the_tree_dirty(tmp_path, monkeypatch):
    import subprocess

    import qlib.experiments.results as results

    repo = tmp_path / "repo"
    (repo / "qlib").mkdir(parents=True)
    (repo / "qlib" / "a.py").write_text("")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    monkeypatch.setattr(results, "_git", lambda *args: subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip())
    assert results.code_state()["git_dirty"] is False
    (repo / "results").mkdir()
    (repo / "results" / "r.json").write_text("{}")  # a result written by the run is data, not code
    assert results.code_state()["git_dirty"] is False
    (repo / "qlib" / "new_method.py").write_text("")
    assert results.code_state()["git_dirty"] is True


def test_parse_value_and_grid():
    assert [parse_value(v) for v in ("3", "false", "null", "0.5", "sst2")] == [3, False, None, 0.5, "sst2"]
    assert expand_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


@pytest.fixture
def job_notebook(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x = 1\nout = 'out.json'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json\nassert x != 2, 'x must not be 2'\njson.dump({'x': x}, open(f'{out}-{x}.json', 'w'))")
    nb.cells = [params, body]
    path = tmp_path / "job.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_batch_runs_every_job_keeps_notebooks_and_names_the_failure(job_notebook, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main([str(job_notebook), "--grid", "x=1,2,3", "-p", f"out={tmp_path / 'r'}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED job x-2: AssertionError: x must not be 2" in err
    assert json.loads((tmp_path / "r-3.json").read_text()) == {"x": 3}  # the batch went on after the failure
    assert {p.name for p in out.glob("x-*.ipynb")} == {"x-1.ipynb", "x-2.ipynb", "x-3.ipynb"}


def test_batch_refuses_unknown_parameters(job_notebook, tmp_path, capsys):
    code = main([str(job_notebook), "--grid", "y=1,2", "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "unknown parameter(s) ['y']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_job_names_are_plain_file_names():
    from qlib.experiments.batch import job_name

    assert job_name({"setting": "Q-BERT_MP 2/3", "seed": 0}) == "setting-Q-BERT_MP_2-3_seed-0"
    assert job_name({}) == "job"


@pytest.mark.parametrize("chapter", sorted(Path(__file__).parents[1].glob("chapters/*.ipynb")), ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_of_each_chapter(chapter):
    import ast

    import papermill

    cells = [c for c in nbformat.read(chapter, 4).cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        pytest.skip(f"{chapter.name} has no parameters cell")
    body = ast.parse(cells[0].source).body
    assigned = {t.id for node in body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assigned |= {node.target.id for node in body if isinstance(node, ast.AnnAssign)}
    assert set(papermill.inspect_notebook(str(chapter))) == assigned
    types = parameter_types(chapter)  # every parameter has a type a wrong value can be checked against
    assert set(types) == assigned and all(types.values())
    all_cells = nbformat.read(chapter, 4).cells
    after = all_cells[all_cells.index(cells[0]) + 1:]
    code = next(c for c in after if c.cell_type == "code")
    assert f'check_parameter_types("{chapter.name}", globals())' in code.source  # papermill -p is checked too


@pytest.fixture
def typed_notebook(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("from typing import Optional, Union\n\nquick = True\nlr = 5e-5\n"
                                       "epochs: Optional[int] = None\ngroups: Union[int, str] = 12\nname = 'a'")
    params.metadata["tags"] = ["parameters"]
    check = nbformat.v4.new_code_cell("from qlib.experiments.batch import check_parameter_types\n"
                                      f"check_parameter_types({str(tmp_path / 'typed.ipynb')!r}, globals())")
    nb.cells = [params, check]
    nbformat.write(nb, tmp_path / "typed.ipynb")
    return tmp_path / "typed.ipynb"


def test_parameter_types_come_from_defaults_and_annotations(typed_notebook):
    assert parameter_types(typed_notebook) == {"quick": (bool,), "lr": (float, int), "epochs": (int, type(None)),
                                               "groups": (int, str), "name": (str,)}
    check_parameter_types(typed_notebook, {"quick": False, "lr": 1, "epochs": 3, "groups": "row", "other": 1})
    for name, value, expected in [("quick", "flase", "bool"), ("quick", None, "bool"), ("epochs", 2.5, "int or None"),
                                  ("lr", True, "float or int"), ("name", 3, "str")]:
        with pytest.raises(TypeError, match=rf"parameter '{name}' of typed.ipynb must be {expected}, got {value!r}"):
            check_parameter_types(typed_notebook, {name: value})


def test_a_none_default_without_annotation_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("epochs = None")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "n.ipynb")
    with pytest.raises(ValueError, match="'epochs' defaults to None without an annotation.*Optional"):
        parameter_types(tmp_path / "n.ipynb")


def test_batch_refuses_a_wrong_type_before_running_anything(typed_notebook, tmp_path, capsys):
    code = main([str(typed_notebook), "-p", "quick=flase", "--out", str(tmp_path / "runs")])
    assert code == 2 and "parameter 'quick' of typed.ipynb must be bool, got 'flase'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_papermill_run_with_a_misspelt_value_fails_in_the_notebook(typed_notebook, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="parameter 'quick' of typed.ipynb must be bool"):
        papermill.execute_notebook(str(typed_notebook), str(tmp_path / "out.ipynb"), parameters={"quick": "flase"},
                                   progress_bar=False)
    papermill.execute_notebook(str(typed_notebook), str(tmp_path / "out.ipynb"), parameters={"quick": False},
                               progress_bar=False)


def test_provenance_names_the_code_the_process_started_with_and_a_change_before_the_write(monkeypatch):
    import qlib.experiments.results as results

    now = results.code_state()
    monkeypatch.setattr(results, "_CODE_AT_IMPORT", now)  # the tree as it was when the process started
    assert "code_at_write" not in provenance(0.0, data=None) and provenance(0.0, data=None)["git_commit"] == now[
        "git_commit"]
    started = {"git_commit": "a" * 40, "git_dirty": False}  # as if a commit landed while the run ran
    monkeypatch.setattr(results, "_CODE_AT_IMPORT", started)
    record = provenance(0.0, data=None)
    assert record["git_commit"] == "a" * 40 and record["git_dirty"] is False and record["code_at_write"] == now
