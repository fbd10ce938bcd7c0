"""benchmarks/batching.py on tiny GLUE files and a tiny model: both batch orders hold the same input tokens, the
grouped one pads fewer, and a run writes its counts and step times with provenance. Not a speed test: the ratios are
the benchmark's to print, on a quiet CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qlib.experiments.report import batching_frame
from qlib.experiments.results import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import batching  # noqa: E402

sys.path.pop(0)


def test_a_run_counts_both_orders_over_one_epoch_and_times_each(glue_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "batching.json"
    assert batching.main(["--tasks", "SST-2,rte", "--steps", "2", "--model", str(tiny_model_dir),
                          "--out", str(out)]) == 0
    run = read_json(out)
    assert run["params"]["tasks"] == ["sst2", "rte"] and run["params"]["model"] == str(tiny_model_dir)
    assert set(run["provenance"]["data"]["files"]) == {f"glue/{t}/{s}.tsv" for t in ("sst2", "rte")
                                                       for s in ("train", "dev")}
    for row in run["tasks"].values():
        random, grouped = row["random"], row["grouped"]
        assert random["input_tokens"] == grouped["input_tokens"] > 0  # the same examples, once each
        assert random["batches"] == grouped["batches"]
        assert random["padded_tokens"] >= grouped["padded_tokens"] >= grouped["input_tokens"]
        assert row["padding_ratio"] == random["padded_tokens"] / grouped["padded_tokens"]
        assert all(order[f"{m}_s_per_step"] > 0 for order in (random, grouped) for m in ("fp32", "qat"))
    table = batching_frame(run)  # as the Q8BERT chapter shows it
    assert sorted(table.index) == ["rte", "sst2"]
    padded = table["padded tokens per input token"]
    assert (padded["random"] >= padded["grouped"]).all() and (padded["grouped"] >= 1).all()
    assert list(table["step time, random ÷ grouped"]) == ["FP32", "QAT"]


def test_bad_steps_are_refused(capsys):
    with pytest.raises(SystemExit):
        batching.main(["--steps", "0"])
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
