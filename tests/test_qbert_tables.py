"""The Q-BERT II chapter's tables from result files: each row's drop against FP32 on the same seeds, the margin kept
over the constant answer, the verdicts (MP bound, rows below the floor, DirectQ 2/8's collapse), the measured sizes,
and the group-wise ablation's spread; plus ``qlib.experiments.report.show``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import RESULT_TEMPLATE as TEMPLATE
from conftest import write_run

from qlib.experiments.protocol import baseline_job
from qlib.experiments.qbert import DIRECTQ, main_table_rows
from qlib.experiments.qbert_tables import (
    batch_size_effect,
    batch_size_verdicts,
    committed_spectra,
    drops_across_tasks,
    float16_floats,
    group_ablation,
    main_table,
    main_tables,
    missing_runs,
    saddle_points,
    size_table,
    spectra_across_tasks,
)
from qlib.experiments.report import show


@pytest.fixture
def results(tmp_path) -> Path:
    qbert = tmp_path / "results" / "qbert"
    for seed, fp32 in ((0, 0.90), (1, 0.88)):
        write_run(qbert, "sst2", "fp32", seed, fp32)
        write_run(qbert, "sst2", "directq-w2-p99.9", seed, 0.52)  # 2 points above the constant answer
        write_run(qbert, "sst2", "directq-w4-p99.9", seed, 0.45)  # below it
    write_run(qbert, "sst2", "qbert-w3e8-g12-p99.9-ft", 0, 0.86)
    write_run(qbert, "sst2", "qbert-w3e8-g1-p99.9-ft", 0, 0.84)
    (tmp_path / "results" / "benchmarks").mkdir()
    (tmp_path / "results" / "benchmarks" / "constant_answer.json").write_text(json.dumps({"tasks": {"sst2": {
        "constant answer": {"accuracy": 0.50}, "dev examples": 872, "label counts": {"negative": 436, "positive": 436},
        "metric": "accuracy"}}}))
    return qbert


@pytest.fixture
def sizes() -> pd.DataFrame:
    rows = main_table_rows(None, 12, "sst2")
    return pd.DataFrame({"w-bits": [r["w_bits"] for r in rows.values()], "e-bits": [r["e_bits"] for r in rows.values()],
                         "w/o embedding (MB)": 1.0, "embedding (MB)": 1.0}, index=list(rows))


def test_each_row_gets_its_drop_on_the_same_seeds_its_margin_kept_and_the_verdicts(results, sizes):
    floors = results.parent / "benchmarks" / "constant_answer.json"
    table = main_table("sst2", main_table_rows(None, 12, "sst2"), sizes, results, floors)
    assert table.metric == "accuracy"
    row = table.table.loc["DirectQ 2/8"]
    assert row["ours"].startswith("52.00") and row["drop vs FP32 (%)"] == f"{(89 - 52) / 89 * 100:+.2f}"
    assert row["margin kept (%)"] == f"{(52 - 50) / (89 - 50) * 100:.0f}"
    qbert3 = table.table.loc["Q-BERT 3/8"]  # seed 0 only: against seed 0's FP32 (90), not the mean over both
    assert qbert3["drop vs FP32 (%)"] == f"{(90 - 86) / 90 * 100:+.2f}"
    assert table.table.loc["Q-BERT 2/8", "ours"] == "not run"
    assert table.table.loc["Q-BERT 2/8", "drop vs FP32 (%)"] == ""
    said = "\n".join(table.verdicts)
    assert "FP32 is 39.00 points above it" in said
    assert "**Below the constant answer**: DirectQ 4/8" in said
    assert "closer to the constant answer than to FP32: it collapses" in said
    assert table.protocol is not None and list(table.protocol.index.names) == ["method", "seed"]
    parts = table.parts()
    assert parts[0] == "### SST2: dev accuracy (%)" and parts[1] is table.table


def test_an_mp_verdict_gives_the_mean_drop_against_the_bound_and_each_seeds_drop(results, sizes):
    layers = [f"encoder.layer.{i}" for i in range(6)]
    rows = main_table_rows(spectrum(dict(zip(layers, (6.0, 5.0, 4.0, 3.0, 2.0, 1.0)))), 12, "sst2")
    for seed, accuracy in ((0, 0.885), (1, 0.855)):  # FP32 90 and 88: drops 1.67 and 2.84, mean 2.25 (89 vs 87)
        write_run(results, "sst2", rows["Q-BERT_MP 2/3"]["label"], seed, accuracy,
                  trained="qbert", weight_bits=2, groups=12, percentile=99.9, init_from="fp32",
                  layer_bits=rows["Q-BERT_MP 2/3"]["layer_bits"])
    floors = results.parent / "benchmarks" / "constant_answer.json"
    said = "\n".join(main_table("sst2", rows, sizes, results, floors).verdicts)
    assert (f"**Q-BERT_MP 2/3**: {(89 - 87) / 89 * 100:+.2f} % against FP32, within the paper's 2.3 % bound "
            f"(per seed: {(90 - 88.5) / 90 * 100:+.2f} on seed 0, {(88 - 85.5) / 88 * 100:+.2f} on seed 1)") in said
    assert "**Q-BERT_MP 2/4**: not run yet" in said


def test_a_task_without_results_still_gets_its_rows_marked_not_run_but_other_tasks_need_results(results, sizes):
    tables = main_tables(["cola", "sst2", "rte"], 12, sizes, results)
    assert list(tables) == ["cola", "sst2"]  # rte has no results: left out; the chapter's own task never is
    assert set(tables["cola"].table["ours"]) == {"not run"} and tables["cola"].protocol is None
    assert "MP" not in " ".join(tables["cola"].rows)  # no spectrum: no mixed-precision rows


def test_sizes_are_measured_from_packed_files(tiny_model_dir):
    from qlib.experiments.models import load_classifier

    model, _ = load_classifier(str(tiny_model_dir), num_labels=2)
    rows = {name: row for name, row in main_table_rows(None, 2, "sst2").items()
            if name in ("Baseline", "Q-BERT 8/8", "Q-BERT 2/8")}
    sizes = size_table(model, rows)
    assert sizes.loc["Baseline", "w/o embedding vs FP32 (%)"] == 100
    assert sizes.loc["Q-BERT 2/8", "of which codes (MB)"] < sizes.loc["Q-BERT 8/8", "of which codes (MB)"]
    assert 0 < sizes.loc["Q-BERT 8/8", "w/o embedding vs FP32 (%)"] < 50


def test_the_group_ablation_reports_the_spread_against_seed_noise(results, sizes):
    from conftest import tiny_config
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_config(hidden_size=48, num_attention_heads=12, intermediate_size=96))
    tables = main_tables(["sst2"], 12, sizes, results)
    ablation, spreads = group_ablation(model, tables, heads=12)
    assert list(ablation.index) == ["G = 1", "G = 12 (per head)", "G = 48 (4 per head)", "per row"]
    assert ablation.loc["G = 1", "SST2 dev accuracy (%)"].startswith("84.00")
    assert ablation.loc["per row", "SST2 dev accuracy (%)"] == "not run"
    assert ablation.loc["G = 1", "file (MB)"] < ablation.loc["per row", "file (MB)"]  # a scale and offset per group
    assert spreads == ["**SST2**: 2 groupings span 2.00 points (lowest G = 1, highest G = 12 (per head)); the "
                       "per-head row has one seed, so the seed-to-seed noise is not measured here"]


def test_show_displays_text_as_markdown_figures_as_png_and_skips_none(monkeypatch):
    from IPython import display as ipython_display
    from matplotlib.figure import Figure

    shown = []
    monkeypatch.setattr(ipython_display, "display", lambda part: shown.append(part))
    figure = Figure()
    figure.subplots().plot([0, 1])
    show("**bold**", None, figure, pd.DataFrame({"a": [1]}))
    assert [type(p).__name__ for p in shown] == ["Markdown", "Image", "DataFrame"]
    assert shown[0].data == "**bold**" and shown[1].data[:4] == b"\x89PNG"


def spectrum(omegas: dict[str, float], tops: dict[str, list[float]] | None = None, init_from=None) -> dict:
    """A spectrum result as ``run_spectrum`` writes it, with the Ω and top eigenvalues given per block."""
    tops = tops or {}
    return {"blocks": {n: {"omega": o, "top": tops.get(n, [o, o]), "converged": True, "smallest": []}
                       for n, o in omegas.items()},
            "params": {"model": "tiny", "init_from": init_from, "finetune_examples": 96, "subsets": 2,
                       "subset_size": 4, "max_length": 64},
            "spectrum_seconds": 60.0, "provenance": {"git_commit": "0123456789"}, "notes": []}


def test_spectra_side_by_side_name_the_raised_layers_and_those_on_an_unsound_omega():
    layers = [f"encoder.layer.{i}" for i in range(4)]
    first = spectrum(dict(zip(layers, (4.0, 3.0, 2.0, 1.0))), init_from="fp32.safetensors")
    second = spectrum(dict(zip(layers, (1.0, 2.0, 3.0, 4.0))), tops={"encoder.layer.3": [5.0, -3.0]})
    parts = spectra_across_tasks({"sst2": first, "cola, short fine-tune": second})
    assert parts[1] == "Layers at 3 bits in Q-BERT_MP 2/3: **sst2**: 0, 1; **cola, short fine-tune**: 2, 3"
    assert parts[2] == ("Of those, raised on an unsound Ω: **sst2**: none; **cola, short fine-tune**: layer 3 (top λ "
                        "negative on 1 of 2 subsets)")
    assert parts[4].loc["sst2", "cola, short fine-tune"] == -1.0  # opposite rankings
    assert parts[5]["measured on"].tolist() == ["FP32 Baseline", "96-example fine-tune"]
    assert parts[5]["tokens per example (at most)"].tolist() == [64, 64]  # SQuAD's windows: 256
    assert parts[5].loc["cola, short fine-tune", "blocks with a negative top λ"] == 1
    assert spectra_across_tasks({"sst2": first}) == ["*Only 1 committed spectrum: the comparison needs two.*"]


def test_committed_spectra_are_read_with_their_names(tmp_path):
    (tmp_path / "short-finetune").mkdir()
    for path in (tmp_path / "spectrum-sst2.json", tmp_path / "short-finetune" / "spectrum-cola.json"):
        path.write_text(json.dumps(spectrum({"encoder.layer.0": 1.0})))
    assert list(committed_spectra(tmp_path)) == ["sst2", "cola, short fine-tune"]


def test_the_score_vs_size_figure_has_a_panel_per_task_two_a_row(results, sizes):
    from qlib.experiments.qbert_tables import score_vs_size

    tables = main_tables(["sst2"], 12, sizes, results)
    figure = score_vs_size({**tables, "copy": tables["sst2"], "third": tables["sst2"]}, sizes)
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(visible) == 3 and len(figure.axes) == 4  # 2 × 2, the fourth hidden
    assert visible[0].get_title().startswith("SST2")
    empty = main_tables(["cola"], 12, sizes, results)
    assert score_vs_size(empty, sizes) is None


def test_show_skips_empty_text(monkeypatch):
    from IPython import display as ipython_display

    shown = []
    monkeypatch.setattr(ipython_display, "display", lambda part: shown.append(part))
    show("", "  \n", None, "kept")
    assert [p.data for p in shown] == ["kept"]


def test_saddle_points_and_the_batch_size_study_read_each_spectrum():
    def spectrum(top, smallest, study=None):
        return {"blocks": {"encoder.layer.0": {"top": top, "smallest": smallest},
                           "embeddings": {"top": [2.0, 2.0], "smallest": [0.5]}},
                "batch_size_effect": study or {"block": "encoder.layer.0", "sizes": {}}}

    spectra = {"squad": spectrum([3.0, 2.0], [-0.4]),  # clearly below -1e-3·mean: a saddle point
               "sst2": spectrum([3.0, 2.0], [-1e-4], {"block": "encoder.layer.0",  # within the noise: not negative
                                                      "sizes": {"64": {"top": [1.0, 1.5, 2.0], "converged": False},
                                                                "8": {"top": [4.0, -2.0], "converged": True}}})}
    spectra["squad"] |= {"provenance": {"data": {"source": "local", "folder": "data", "files": {}}},
                         "params": {"subset_size": 32}}
    squad, sst2 = saddle_points(spectra)
    assert squad == ("**squad**: negative curvature in 1 of 2 blocks (layer.0) on subsets of 32 examples: not a "
                     "minimum of those subsets' loss, a saddle point by Q-BERT's test")
    assert sst2.startswith("**sst2** (on the earlier, altered copy of the data): no block shows negative curvature (2 "
                           "smallest eigenvalues measured)")
    study = batch_size_effect(spectra)
    assert list(study.index) == [("sst2", 8), ("sst2", 64)]  # by size; the spectrum without a study has no rows
    assert study.loc[("sst2", 8), "mean λ"] == 1.0 and study.loc[("sst2", 64), "batches"] == 3
    assert study["negative λ"].tolist() == [1, 0]
    assert not study.loc[("sst2", 64), "converged"] and batch_size_effect({"squad": spectra["squad"]}) is None
    assert study["first batch λ·B"].tolist() == [32.0, 64.0]  # the first batch's top λ times its size
    assert batch_size_verdicts(study) == ["**sst2** (encoder.layer.0): a negative top λ on 1 of 2 batches of 8, 0 of 3 "
                                          "batches of 64: the negative curvature of the smaller batches is not seen at "
                                          "64 examples; the first batch's λ·B goes from 32 to 64 over the sizes (a "
                                          "factor of 2.00)"]
    study.loc[("sst2", 64), "negative λ"], study.loc[("sst2", 8), "negative λ"] = 1, 0
    study.loc[("sst2", 64), "first batch λ·B"] = -64.0  # a negative first batch: no spread is given
    assert batch_size_verdicts(study)[0].endswith("1 of 3 batches of 64: still seen at 64 examples")
    study["negative λ"] = 0
    assert batch_size_verdicts(study)[0].endswith(": no batch has one")


def test_the_tasks_are_ordered_by_their_drop_and_the_papers_ordering_is_checked(results, sizes):
    layers = [f"encoder.layer.{i}" for i in range(6)]
    omegas = dict(zip(layers, (6.0, 5.0, 4.0, 3.0, 2.0, 1.0)))
    saddle = spectrum(omegas, tops={"encoder.layer.1": [4.0, -2.0]})  # a negative top λ: negative curvature
    rows = {task: main_table_rows(spectrum(omegas), 12, task) for task in ("sst2", "conll2003", "squad")}
    mp = rows["sst2"]["Q-BERT_MP 2/3"]
    write_run(results, "sst2", mp["label"], 0, 0.88, trained="qbert", weight_bits=2, groups=12, percentile=99.9,
              init_from="fp32", layer_bits=mp["layer_bits"])  # FP32 90 on seed 0: a 2.22 % drop
    for seed, fp32, score in ((0, 0.90, 0.81), (1, 0.80, 0.76)):  # drops 10 % and 5 %: 7.65 % on the means
        write_run(results, "conll2003", "fp32", seed, fp32)
        write_run(results, "conll2003", mp["label"], seed, score, trained="qbert", weight_bits=2, groups=12,
                  percentile=99.9, init_from="fp32", layer_bits=mp["layer_bits"])
    write_run(results, "squad", "fp32", 0, 0.80)
    floors = results.parent / "benchmarks" / "constant_answer.json"
    tables = {task: main_table(task, rows[task], sizes, results, floors) for task in rows}
    _, drops, saddles, said = drops_across_tasks(tables, {"sst2": spectrum(omegas), "squad": saddle})
    assert list(drops.columns) == ["sst2", "conll2003", "squad"] and drops.index[0] == "DirectQ 4/8"
    assert drops.loc["Q-BERT_MP 2/3", "conll2003"] == f"{(85 - 78.5) / 85 * 100:+.2f} (n=2)"
    assert drops.loc["Q-BERT_MP 2/3", "sst2"] == f"{(90 - 88) / 90 * 100:+.2f} (n=1)"
    assert drops.loc["Q-BERT_MP 2/3", "squad"] == "not run"
    assert saddles.iloc[:, 0].to_dict() == {"sst2": "no", "conll2003": "no spectrum committed",
                                            "squad": "yes: 1 of 6 blocks"}
    assert (f"**Q-BERT_MP 2/3**: conll2003 {(85 - 78.5) / 85 * 100:+.2f} %, then sst2 {(90 - 88) / 90 * 100:+.2f} %"
            in said)
    assert ("**The paper's ordering** (squad loses the most; checked at Q-BERT_MP 2/3): waits for Q-BERT_MP 2/3 "
            "on squad") in said
    assert ("shows in the Baselines of squad (not in sst2); more blocks with it in squad than in any other task "
            "(counts in the negative-curvature table above)") in said
    also_curved = {"sst2": spectrum(omegas, tops={"encoder.layer.2": [-1.0, 3.0]}), "squad": saddle}
    assert ("shows in the Baselines of sst2, squad; not more blocks with it in squad than in every other task "
            "(counts in the negative-curvature table above), so the spectra do not single squad out"
            ) in drops_across_tasks(tables, also_curved)[3]
    assert drops_across_tasks(tables, {"squad": saddle})[3].endswith("shows in the Baselines of squad")
    for score, every_seed in ((0.70, "above"), (0.73, "not above")):  # drops of 12.5 % and 8.75 %
        write_run(results, "squad", mp["label"], 0, score, trained="qbert", weight_bits=2, groups=12,
                  percentile=99.9, init_from="fp32", layer_bits=mp["layer_bits"])
        tables["squad"] = main_table("squad", rows["squad"], sizes, results, floors)
        assert (f"(squad loses the most; checked at Q-BERT_MP 2/3): **holds** on the means; on every seed: squad's "
                f"smallest drop ({(80 - score * 100) / 80 * 100:+.2f} on seed 0) is {every_seed} the others' largest "
                "(conll2003 +10.00 on seed 0)") in drops_across_tasks(tables, {})[3]  # conll2003's seed 0 loses 10 %
    sharper = spectrum({layer: 2 * omega for layer, omega in omegas.items()})  # Σ Ω 42 against 21
    assert ("**The size of the curvature** (Ω summed over the Baseline's blocks): squad 42, sst2 21: the task with the "
            "largest, squad, loses the most at Q-BERT_MP 2/3") in drops_across_tasks(tables, {"sst2": spectrum(omegas),
                                                                                          "squad": sharper})[3]
    said = drops_across_tasks(tables, {"sst2": spectrum(omegas), "squad": sharper, "conll2003": spectrum(
        {layer: 5 * omega for layer, omega in omegas.items()})})[3]
    assert said.endswith("conll2003 105, squad 42, sst2 21: squad loses the most at Q-BERT_MP 2/3, not conll2003, "
                         "whose sum is the largest; the drops come in another order on the means (squad, conll2003, "
                         "sst2)")
    assert "size of the curvature" not in drops_across_tasks(tables, {"squad": sharper})[3]  # one task: no comparison
    write_run(results, "squad", mp["label"], 0, 0.75, trained="qbert", weight_bits=2, groups=12, percentile=99.9,
              init_from="fp32", layer_bits=mp["layer_bits"])  # 6.25 %: below conll2003's 7.65 % on the means
    tables["squad"] = main_table("squad", rows["squad"], sizes, results, floors)
    assert ("**does not hold** on the means: conll2003 loses more; on every seed: conll2003's smallest drop (+5.00 "
            "on seed 1) is not above the others' largest (squad +6.25 on seed 0)") in drops_across_tasks(tables, {})[3]
    write_run(results, "rte", "fp32", 0, 0.70)  # a Baseline alone scores no row
    only_fp32 = {"sst2": tables["sst2"], "rte": main_table("rte", main_table_rows(None, 12, "rte"), sizes, results,
                                                            floors)}
    assert only_fp32["rte"].drops.to_dict() == {"Baseline": 0.0}
    assert drops_across_tasks(only_fp32, {}) == ["*The comparison across tasks needs scored rows on two tasks.*"]


def test_missing_runs_are_named_with_their_cost_estimated_from_measured_runs(tmp_path):
    from qlib.experiments.spec import RunSpec, TrainingProtocol

    sizing = json.loads(TEMPLATE.read_text())  # a 320-question FP32 run: 120 s of training, 20 s of evaluation
    spec = RunSpec("squad", "fp32", protocol=TrainingProtocol(max_train_examples=320, max_length=256, epochs=1))
    sizing |= {"task": "squad", "method": "fp32", "spec": spec.to_dict(), "eval": {"examples": 320, "seconds": 20.0},
               "params": sizing["params"] | {"max_train_examples": 320, "epochs": 1},
               "train": sizing["train"] | {"seconds": 120.0, "train_examples": 356},
               "provenance": sizing["provenance"] | {"data": {"source": "local", "folder": "data", "files": {}}}}
    (tmp_path / "squad-sizing" / "squad").mkdir(parents=True)
    (tmp_path / "squad-sizing" / "squad" / "fp32-seed0.json").write_text(json.dumps(sizing))
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "constant_answer.json").write_text(json.dumps({"tasks": {"squad": {
        "dev examples": 10570}}}))
    table = missing_runs("squad", main_table_rows(None, 12, "squad"), tmp_path / "qbert")
    assert list(table.index) == ["Baseline", "Q-BERT 8/8", "Q-BERT 4/8", "Q-BERT 3/8", "Q-BERT 2/8"]  # no DirectQ
    training, evaluation = 120 / 320 * 20_000, 20 * 10570 / 320  # the protocol's 20 k questions, the whole dev set
    assert len(DIRECTQ) == 6  # DirectQ 4/3/2, with and without the clip: each evaluated on the Baseline's weights
    # SQuAD's Baseline is also Q8BERT's FP32 run: its job evaluates Q8BERT's DQ row as well
    assert baseline_job("squad", 0, tmp_path).evaluations == 8 == 2 + len(DIRECTQ)
    assert table.loc["Baseline", "est. h per run"] == pytest.approx((training + 8 * evaluation) / 3600, abs=0.01)
    assert table.loc["Q-BERT 2/8", "est. h in all"] == pytest.approx(3 * (training + evaluation) / 3600, abs=0.01)
    assert table.loc["Baseline", "seeds missing"] == "0, 1, 2" and table.loc["Baseline", "estimated from"] == (
        "1 measured FP32 run(s), from random batches (an overestimate); training and 8 dev evaluations (its own, "
        "its post-training rows')")  # the template's run predates grouping
    assert table.loc["Q-BERT 3/8", "estimated from"] == (
        "FP32's speed (1 run(s)), a lower bound, from random batches (an overestimate)")
    for folder, record in (("q8bert", sizing),  # the same run, written for a second chapter: it counts once
                           ("gpu", sizing | {"train": sizing["train"] | {"seconds": 1.0}, "provenance": sizing[
                               "provenance"] | {"machine": {"device": "cuda"}}})):  # a GPU's time: not a CPU cost
        (tmp_path / folder / "squad").mkdir(parents=True)
        (tmp_path / folder / "squad" / "fp32-seed0.json").write_text(json.dumps(record))
    again = missing_runs("squad", main_table_rows(None, 12, "squad"), tmp_path / "qbert")
    assert again.loc["Baseline", "estimated from"] == table.loc["Baseline", "estimated from"]
    assert again.loc["Baseline", "est. h per run"] == table.loc["Baseline", "est. h per run"]
    (tmp_path / "benchmarks" / "batching-avx2-2026-01-01T0000.json").write_text(json.dumps({
        "provenance": {"date": "2026-01-01T00:00:00+00:00"},
        "tasks": {"squad": {"fp32_speedup": 2.0, "qat_speedup": 1.5}}}))
    table = missing_runs("squad", main_table_rows(None, 12, "squad"), tmp_path / "qbert")
    assert table.loc["Baseline", "est. h per run"] == pytest.approx(
        (training / 2.0 + 8 * evaluation) / 3600, abs=0.01)  # training at the measured speed-up
    assert table.loc["Baseline", "estimated from"].startswith(
        "1 measured FP32 run(s), from random batches ÷ their measured speed-up; training and 8")
    assert missing_runs("conll2003", main_table_rows(None, 12, "conll2003"), tmp_path / "qbert").loc[
        "Baseline", "estimated from"] == "no run measured"
    assert baseline_job("conll2003", 0, tmp_path).evaluations == 1 + len(DIRECTQ)  # no Q8BERT row on CoNLL-03


def test_a_float16_run_gets_a_drop_only_against_the_baseline_on_the_same_data(tmp_path):
    results = tmp_path / "results" / "qbert"
    baseline = write_run(results, "sst2", "fp32", 0, 0.90)
    official = {"source": "files", "files": {"glue/sst2/dev.tsv": "ab" * 32}, "folder": "/data"}
    run = {"task": "sst2", "seed": 0, "metric": "accuracy", "result": "results/qbert/sst2/mp-seed0.json",
           "scores": {"float32": {"accuracy": 0.89}, "float16": {"accuracy": 0.88}},
           "sizes_bytes": {"float16": {"other": 0.5e6}}, "max_abs_logit_diff": 1e-3, "same_prediction": 1.0,
           "examples": 872, "layer_bits": {"encoder.layer.0": 3, "encoder.layer.1": 2},
           "provenance": {"git_commit": "0123456789", "data": None}}
    bench = tmp_path / "results" / "benchmarks" / "float16_floats-sst2-mp-seed0.json"
    bench.parent.mkdir(parents=True)
    sizes = pd.DataFrame({"w/o embedding (MB)": [10.0]}, index=["Baseline"])

    def written(run_data, baseline_data):
        bench.write_text(json.dumps(run | {"provenance": run["provenance"] | {"data": run_data}}))
        record = json.loads(baseline.read_text())
        record["provenance"]["data"] = baseline_data
        baseline.write_text(json.dumps(record))
        return float16_floats(results, sizes)

    table, said = written(None, official)  # the float16 run on the altered copy, its Baseline re-run since
    assert pd.isna(table["float16 drop vs FP32 (%)"].iloc[0])
    assert any("has no drop beside it" in line for line in said)
    other_dev = official | {"files": {"glue/sst2/dev.tsv": "cd" * 32}}
    table, _ = written(other_dev, official | {"files": official["files"] | {"glue/sst2/train.tsv": "ef" * 32}})
    assert pd.isna(table["float16 drop vs FP32 (%)"].iloc[0])  # another dev file: no drop either
    table, said = written(official, official | {"files": official["files"] | {"glue/sst2/train.tsv": "ef" * 32}})
    assert table["float16 drop vs FP32 (%)"].iloc[0] == pytest.approx(100 * (0.90 - 0.88) / 0.90, abs=1e-4)  # 4 places
    assert any("a drop of +2.22 % against its FP32 Baseline" in line and "**met**" in line for line in said)
