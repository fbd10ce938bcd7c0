"""The committed results and their notes: every result says which data it read (its files' SHA-256) or is named in
results/notes.toml as computed before that was recorded; every note names files that exist; notes reach the tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlib.experiments.data import OFFICIAL_SHA256, read_same_data
from qlib.experiments.report import data_label, notes_markdown, protocol_frame
from qlib.experiments.results import NOTES_FILE, notes_for, read_notes, read_results, write_json

RESULTS = Path(__file__).parents[1] / "results"
COMMITTED = sorted(p for p in RESULTS.rglob("*.json"))


def test_every_note_names_committed_result_files():
    notes = read_notes(RESULTS)
    missing = sorted(name for name in notes if not (RESULTS / name).is_file())
    assert not missing, f"{NOTES_FILE} names files that are not committed: {missing}"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_every_committed_result_records_the_hashes_of_its_data_or_is_noted_as_before_them(path):
    record = read_results(path.parent, superseded=True)
    record = next(r for r in record if Path(r["path"]) == path)
    data = record["provenance"].get("data", "absent")
    kinds = {note["kind"] for note in record["notes"]}
    if data == "absent":
        assert kinds & {"altered-data", "no-data-record"}, (
            f"{path} records no data hashes and {NOTES_FILE} does not say why: results must record "
            "provenance['data'] (qlib.experiments.data.data_provenance)")
    elif data is not None and data["source"] == "local":
        assert data["files"] and all(len(sha) == 64 for sha in data["files"].values())
        assert not kinds & {"altered-data", "no-data-record"}, f"{path} records its data; its note is wrong"


def test_every_q8bert_result_read_the_official_files():
    """The Q8BERT chapter says every run of its tables read the official files (the altered-copy rows were re-run)."""
    records = read_results(RESULTS / "q8bert") + read_results(RESULTS / "q8bert-sweep")
    assert records
    unofficial = sorted(r["path"] for r in records if data_label(r) != "official")
    assert not unofficial, f"the Q8BERT chapter says all its runs read the official files; these did not: {unofficial}"


def _record(tmp_path, name, data="absent", note=None):
    provenance = {"machine": {"device": "cpu"}} | ({} if data == "absent" else {"data": data})
    provenance |= {"note": note} if note else {}
    return write_json(tmp_path / "results" / name, {"task": "rte", "method": "fp32", "seed": int(name[-6]),
                                                    "provenance": provenance})


def test_notes_reach_the_records_and_are_said_once(tmp_path):
    official = {"source": "local", "folder": "/d",
                "files": {k: OFFICIAL_SHA256[k] for k in ("glue/rte/train.tsv", "glue/rte/dev.tsv")}}
    _record(tmp_path, "rte/fp32-seed0.json")
    _record(tmp_path, "rte/fp32-seed1.json", note="shared the CPU")
    _record(tmp_path, "rte/fp32-seed2.json", data=official)
    _record(tmp_path, "rte/fp32-seed3.json", data=official | {"files": {"glue/rte/dev.tsv": "0" * 64}})
    (tmp_path / "results" / NOTES_FILE).write_text(
        '[[note]]\nkind = "altered-data"\ntext = "old data"\nfiles = ["rte/fp32-seed0.json", "rte/fp32-seed1.json"]\n')
    records = read_results(tmp_path / "results" / "rte", superseded=True)
    assert [r["notes"] for r in records[:3]] == [[{"kind": "altered-data", "text": "old data"}]] * 2 + [[]]
    assert notes_for(tmp_path / "results" / "rte" / "fp32-seed1.json") == records[1]["notes"]
    assert [data_label(r) for r in records] == ["altered copy", "altered copy", "official", "local copy"]
    text = notes_markdown(records)
    assert text.count("old data") == 1 and "rte fp32 seed 0, rte fp32 seed 1" in text
    assert text.index("old data") < text.index("shared the CPU")  # the data caveat comes first
    assert notes_markdown(records[2:]) == ""


def test_a_task_being_re_run_on_the_official_files_shows_only_those_results(tmp_path):
    official = {"source": "local", "folder": "/d", "files": {"glue/rte/dev.tsv": OFFICIAL_SHA256["glue/rte/dev.tsv"]}}
    _record(tmp_path, "rte/fp32-seed0.json", data=official)
    _record(tmp_path, "rte/fp32-seed1.json")  # altered copy: superseded once the task's re-run has begun
    write_json(tmp_path / "results" / "cola" / "fp32-seed0.json",  # altered copy, no re-run yet: still shown
               {"task": "cola", "method": "fp32", "seed": 0, "provenance": {}})
    shown = [Path(r["path"]).relative_to(tmp_path / "results").as_posix() for r in read_results(tmp_path / "results")]
    assert shown == ["cola/fp32-seed0.json", "rte/fp32-seed0.json"]
    assert len(read_results(tmp_path / "results", superseded=True)) == 3


def test_a_bad_note_is_refused_naming_it(tmp_path):
    (tmp_path / NOTES_FILE).write_text('[[note]]\nkind = "typo"\ntext = "x"\nfiles = ["a.json"]\n')
    with pytest.raises(ValueError, match=r"note 1 needs kind \(one of .*altered-data"):
        read_notes(tmp_path)


def test_protocol_frame_says_which_data_each_run_read():
    records = read_results(RESULTS / "q8bert" / "rte")
    frame = protocol_frame(records)
    assert set(frame["data"]) <= {"official", "altered copy", "local copy", "hub"}


def test_two_runs_read_the_same_data_when_the_files_they_share_agree():
    dev, train = "glue/sst2/dev.tsv", "glue/sst2/train.tsv"
    dev_only = {"source": "local", "folder": "data", "files": {dev: OFFICIAL_SHA256[dev]}}
    baseline = {**dev_only, "files": {dev: OFFICIAL_SHA256[dev], train: OFFICIAL_SHA256[train]}}
    assert read_same_data(dev_only, baseline) and read_same_data(baseline, dev_only)
    assert not read_same_data({**dev_only, "files": {dev: "0" * 64}}, baseline)  # another dev file
    assert not read_same_data({**dev_only, "files": {"glue/cola/dev.tsv": "0" * 64}}, baseline)  # nothing shared
    assert not read_same_data(None, baseline) and not read_same_data(baseline, None)  # the altered copy's era
    hub = {"source": "hub", "folder": None, "files": {}}
    assert read_same_data(hub, hub) and not read_same_data(hub, baseline)


def test_sweep_frame_shows_each_tasks_points_and_its_pick(tmp_path):
    from qlib.experiments.experiment import sweep_folder, sweep_points
    from qlib.experiments.report import sweep_frame

    for point, score in zip(sweep_points(), [0.5, 0.7, 0.6, 0.7]):
        write_json(tmp_path / sweep_folder(point["lr"], point["epochs"]) / "rte" / "fp32-seed0.json",
                   {"metrics": {"accuracy": score}})
    write_json(tmp_path / sweep_folder(2e-5, 3) / "mrpc" / "fp32-seed0.json", {"metrics": {"f1": 0.8}})
    for point, score in zip(sweep_points(), [0.2, 0.3, 0.4, 0.5]):  # the best at the grid's largest lr and epochs
        write_json(tmp_path / sweep_folder(point["lr"], point["epochs"]) / "stsb" / "fp32-seed0.json",
                   {"metrics": {"pearson": score}})
    frame = sweep_frame(tmp_path)
    assert frame.loc["rte", "picked"] == "3 ep, lr 5e-05" and frame.loc["rte", "6 ep, lr 2e-05"] == 60.0
    assert frame.loc["stsb", "picked"] == "6 ep, lr 5e-05 (the grid's largest)"
    assert frame.loc["mrpc", "picked"] == "waits for 3 of 4" and frame.loc["mrpc", "3 ep, lr 5e-05"] == "not run"
    assert frame.loc["mrpc", "metric"] == "f1" and list(frame.index) == ["rte", "mrpc", "stsb", "cola"]


def test_data_caveat_counts_the_results_on_the_altered_copy():
    from qlib.experiments.report import data_caveat

    old = {"provenance": {}, "notes": [{"kind": "altered-data", "text": "old"}]}
    files = {"glue/rte/dev.tsv": OFFICIAL_SHA256["glue/rte/dev.tsv"]}
    new = {"provenance": {"data": {"source": "local", "files": files}}}
    assert data_caveat([old, new, old]).startswith("**2 of these 3 results were computed on an earlier, altered copy")
    assert data_caveat([new]) == "" and data_caveat([]) == ""


def test_sweep_runs_are_named_by_their_grid_point_in_the_notes(tmp_path):
    sweep = tmp_path / "results" / "q8bert-sweep"
    for lr in (2e-05, 5e-05):
        write_json(sweep / f"lr{lr:.0e}-ep3" / "rte" / "fp32-seed0.json",
                   {"experiment": "q8bert-sweep", "task": "rte", "method": "fp32", "seed": 0,
                    "params": {"epochs": 3, "lr": lr}, "provenance": {}})
    (tmp_path / "results" / NOTES_FILE).write_text(
        '[[note]]\nkind = "remark"\ntext = "shared the CPU"\n'
        'files = ["q8bert-sweep/lr2e-05-ep3/rte/fp32-seed0.json", "q8bert-sweep/lr5e-05-ep3/rte/fp32-seed0.json"]\n')
    records = read_results(sweep)
    text = notes_markdown(records)
    assert all(f"rte sweep 3 ep, lr {lr}" in text for lr in ("2e-05", "5e-05"))
