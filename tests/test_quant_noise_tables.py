"""The Quant-Noise chapter's tables from result files: Quant-Noise beside QAT, DirectQ and FP32 of the same bits,
the per-seed gaps to QAT, the protocol's missing runs, and the iPQ files and runs."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config, write_run
from transformers import BertForSequenceClassification

from qlib.experiments.protocol import (
    NOISE_STUDY_BLOCKS,
    NOISE_STUDY_RATES,
    NOISE_STUDY_SETTINGS,
    QUANT_NOISE_SETTINGS,
    noise_study_jobs,
)
from qlib.experiments.qbert import setting_spec
from qlib.experiments.quant_noise_tables import (
    against_qat,
    ipq_files,
    ipq_runs,
    missing_runs,
    noise_study,
    with_and_without_noise,
)
from qlib.experiments.spec import FROM_CHECKPOINT, RunSpec


@pytest.fixture
def model() -> BertForSequenceClassification:
    return BertForSequenceClassification(tiny_config(hidden_size=48, num_attention_heads=12, intermediate_size=96))


def qbert_params(bits: int, noise_rate: float) -> dict:
    return dict(trained="qbert", weight_bits=bits, embedding_bits=8, groups=12, percentile=99.9,
                init_from="runs/checkpoints/qbert/sst2/fp32-seed0.safetensors", noise_rate=noise_rate)


def test_quant_noise_is_compared_with_qat_of_its_bits_seed_by_seed(tmp_path, model):
    qbert, noise = tmp_path / "results" / "qbert", tmp_path / "results" / "quant-noise"
    qat = RunSpec("sst2", "qbert", weight_bits=2, groups=12, percentile=99.9, init_from=FROM_CHECKPOINT)
    noisy = qat.with_(noise_rate=0.5)
    for seed, (fp32, qat_score, noisy_score) in enumerate(((0.90, 0.80, 0.85), (0.88, 0.80, 0.83))):
        write_run(qbert, "sst2", "fp32", seed, fp32)
        write_run(qbert, "sst2", qat.label, seed, qat_score, **qbert_params(2, 1.0))
        write_run(noise, "sst2", noisy.label, seed, noisy_score, **qbert_params(2, 0.5))
    write_run(qbert, "sst2", "qbert-w3e8-g12-p99.9-ft", 0, 0.70, **qbert_params(3, 1.0))  # other bits: left out
    parts = against_qat("sst2", 12, noise, qbert, model)
    table = parts[0]
    assert set(table.index.get_level_values("method")) == {"fp32", qat.label, noisy.label}
    assert table.xs(noisy.label, level="method")["drop vs FP32 (%)"].iloc[0] == pytest.approx(
        ((0.90 + 0.88) / 2 - 0.84) / ((0.90 + 0.88) / 2) * 100, abs=0.01)
    gaps = next(p for p in parts if hasattr(p, "columns") and "mean gap" in p.columns)
    assert gaps.loc[(2, noisy.label)].tolist() == pytest.approx([2, 4.0, 1.41], abs=0.01)
    assert "sample std of 1.41 points over 2 seeds:" in next(p for p in parts if isinstance(p, str)
                                                             and p.startswith("Quant-Noise minus QAT"))
    assert against_qat("cola", 12, noise, qbert, model) == [
        f"*No committed Quant-Noise runs for cola yet (`{noise}/cola/`).*"]


def test_missing_runs_name_each_protocol_run_without_a_result(tmp_path):
    results = tmp_path / "results"
    said = missing_runs("sst2", tmp_path / "checkpoints", results / "quant-noise")
    assert said.startswith("Runs of the protocol") and said.count("seed") == 12  # 2 settings × 3 seeds × p = 0.5, 1
    said = missing_runs("cola", tmp_path / "checkpoints", results / "quant-noise")  # no sweep: no protocol yet
    assert said.startswith("*The protocol's Quant-Noise runs of cola wait for its protocol")


def test_ipq_files_are_measured_and_ipq_runs_listed(tmp_path, model):
    files = ipq_files(model, centroids=4)
    assert files.loc["FP32", "% of FP32"] == 100
    sizes = files["file_mb"]
    assert sizes["iPQ + int8 (k = 4)"] < sizes["Q8BERT int8"] < sizes["FP32"]
    assert ipq_runs(tmp_path).endswith("*none yet: the protocol runs them after the SST2 Baselines*.")


def test_the_noise_study_puts_each_p_and_block_size_beside_qat(tmp_path):
    results = tmp_path / "results"
    settings = {"sst2": QUANT_NOISE_SETTINGS["sst2"]}  # the first with the block sizes, the second p alone
    study = noise_study_jobs("ckpt", results=results, settings=settings)
    setting = QUANT_NOISE_SETTINGS["sst2"][0]
    qat = setting_spec(setting, "sst2", 0, 12, None)
    bits = qat.weight_bits
    for path in (write_run(results / "qbert", "sst2", qat.label, 0, 0.80, **qbert_params(bits, 1.0)),
                 write_run(results / "quant-noise-study", "sst2", study[0].spec.label, 0, 0.83,
                           **qbert_params(bits, 0.1)),
                 write_run(results / "quant-noise", "sst2", qat.with_(noise_rate=0.5).label, 0, 0.9)):
        record = json.loads(path.read_text())  # as on the official files: the run records its data
        if "quant-noise/" not in str(path):  # the main p = 0.5 row stays on the altered copy: not run yet
            record["provenance"]["data"] = {"source": "local", "folder": "data", "files": {}}
        path.write_text(json.dumps(record))
    (results / "notes.toml").write_text('[[note]]\nkind = "remark"\ntext = "From another Baseline."\nfiles = '
                                        f'["quant-noise-study/sst2/{study[0].spec.label}-seed0.json"]\n')
    sentence, table, spread, notes = noise_study("sst2", setting, "ckpt", results, settings=settings)
    assert "* From another Baseline. (*1 result: sst2 " in notes  # the remark beside the study's rows
    assert spread.startswith("Plain QAT (p = 1) of this setting has 1 committed seed(s): no seed-to-seed spread")
    seed1 = write_run(results / "qbert", "sst2", qat.label, 1, 0.82, **qbert_params(bits, 1.0))
    record = json.loads(seed1.read_text())
    record["provenance"]["data"] = {"source": "local", "folder": "data", "files": {}}  # on the official files
    seed1.write_text(json.dumps(record))
    spread = noise_study("sst2", setting, "ckpt", results, settings=settings)[2]
    assert spread == ("Plain QAT (p = 1) of this setting over its 2 committed seeds: 80.00 to 82.00. The study's rows "
                      "outside that range: p = 0.1 on blocks of 8 (above).")
    assert len(table) == 2 + len(NOISE_STUDY_RATES) + len(NOISE_STUDY_BLOCKS)
    assert table.loc[(1.0, 8), "score"] == 80 and table.loc[(0.1, 8), "vs p = 1 (points)"] == pytest.approx(3)
    assert table.loc[(0.5, NOISE_STUDY_BLOCKS[0]), "result"] == table.loc[(0.5, 8), "result"] == "not run yet"
    assert table.loc[(0.1, 8), "result"] == f"quant-noise-study/sst2/{study[0].spec.label}-seed0.json"
    assert sentence.startswith(f"{setting} (`{qat.label}` at p = 1) on sst2, seed 0")
    second = noise_study("sst2", QUANT_NOISE_SETTINGS["sst2"][1], "ckpt", results, settings=settings)[1]
    assert sorted(second.index) == sorted([(p, 8) for p in (*NOISE_STUDY_RATES, 0.5, 1.0)])  # no block sizes
    assert (second["result"] == "not run yet").all()
    with pytest.raises(ValueError, match=r"'Q-BERT 2/8' is not a noise study setting of 'sst2'; allowed: \("):
        noise_study("sst2", "Q-BERT 2/8", "ckpt", results, settings=settings)
    waiting = noise_study("cola", NOISE_STUDY_SETTINGS["cola"][0], "ckpt", results)[0]
    assert waiting.startswith("*The study of p and block size waits for cola's")


def test_each_quantizer_is_shown_trained_with_and_without_the_noise(tmp_path, model):
    results = tmp_path / "results"
    assert with_and_without_noise("sst2", results, model) == ["*No committed runs of sst2 for this comparison yet.*"]
    int8 = RunSpec("sst2", "qbert", weight_bits=8, groups=12, percentile=99.9, init_from=FROM_CHECKPOINT)
    for seed, (fp32, plain, noisy) in enumerate(((0.90, 0.88, 0.89), (0.92, 0.90, 0.93))):
        write_run(results / "qbert", "sst2", "fp32", seed, fp32)
        write_run(results / "qbert", "sst2", int8.label, seed, plain, **qbert_params(8, 1.0))
        write_run(results / "quant-noise", "sst2", int8.with_(noise_rate=0.5).label, seed, noisy,
                  **qbert_params(8, 0.5))
    write_run(results / "quant-noise", "sst2", "ipq-k256-int8-ft", 0, 0.85, trained="ipq", centroids=256,
              centroid_bits=8, init_from="runs/checkpoints/qbert/sst2/fp32-seed0.safetensors")
    table, verdicts, _ = with_and_without_noise("sst2", results, model)
    assert list(table.index) == ["Q-BERT 8/8", "Q-BERT 4/8", "iPQ + int8 (k = 256)"]
    assert verdicts.splitlines() == [
        "* Q-BERT 8/8: with noise − without = +2.00 points over 2 seed pair(s), beyond the spread (1.41 points): "
        "**the noise is better**; without noise it is 2.00 points below FP32 on these seeds, and the noise recovers "
        "100% of that. The 95 % interval of the mean gap over these pairs (Student's t) is [-10.71, +14.71] "
        "points, which includes 0.",
        "* Q-BERT 4/8: no seed has both rows yet.",
        "* iPQ + int8 (k = 256): no seed has both rows yet."]
    assert table.loc["Q-BERT 8/8", "with − without (points)"] == pytest.approx(2.0)  # (+1, +3) / 2
    assert table.loc["Q-BERT 8/8", "pairs"] == 2 and table.loc["Q-BERT 4/8", "without noise"] == "not run yet"
    assert table.loc["iPQ + int8 (k = 256)", "without noise"] == "85.00 (n=1)"
    assert table.loc["iPQ + int8 (k = 256)", "with noise"] == "not run yet"
    assert 0 < table.loc["Q-BERT 4/8", "file (MB)"] < table.loc["Q-BERT 8/8", "file (MB)"]  # measured files
    assert table.loc["iPQ + int8 (k = 256)", "file (MB)"] > 0  # a tiny model: its 256 centroids outweigh the codes
    write_run(results / "quant-noise", "sst2", "ipq-k256-int8-qn0.2-ft", 0, 0.86, trained="ipq", centroids=256,
              centroid_bits=8, noise_rate=0.2, init_from="runs/checkpoints/qbert/sst2/fp32-seed0.safetensors")
    verdicts = with_and_without_noise("sst2", results, model)[1]
    assert verdicts.splitlines()[2] == ("* iPQ + int8 (k = 256): with noise − without = +1.00 points over 1 seed "
                                        "pair(s): no verdict on one pair (the gap's own spread needs two).")


def test_a_gap_is_judged_against_its_spread_and_its_interval(tmp_path, model):
    results = tmp_path / "results"
    int4 = RunSpec("sst2", "qbert", weight_bits=4, groups=12, percentile=99.9, init_from=FROM_CHECKPOINT)
    int8 = int4.with_(weight_bits=8)
    for seed, (fp32, plain, noisy, plain8, noisy8) in enumerate(((0.90, 0.80, 0.81, 0.80, 0.77),
                                                                 (0.92, 0.82, 0.81, 0.82, 0.785))):
        write_run(results / "qbert", "sst2", "fp32", seed, fp32)
        write_run(results / "qbert", "sst2", int4.label, seed, plain, **qbert_params(4, 1.0))
        write_run(results / "quant-noise", "sst2", int4.with_(noise_rate=0.5).label, seed, noisy,
                  **qbert_params(4, 0.5))
        write_run(results / "qbert", "sst2", int8.label, seed, plain8, **qbert_params(8, 1.0))
        write_run(results / "quant-noise", "sst2", int8.with_(noise_rate=0.5).label, seed, noisy8,
                  **qbert_params(8, 0.5))
    int8_verdict, verdict = with_and_without_noise("sst2", results, model)[1].splitlines()[:2]
    assert int8_verdict.endswith("beyond the spread (1.41 points): **the noise is worse**; without noise it is 10.00 "
                                 "points below FP32 on these seeds, and the noise recovers -32% of that. The 95 % "
                                 "interval of the mean gap over these pairs (Student's t) is [-6.43, -0.07] points, "
                                 "which excludes 0.")
    assert verdict == ("* Q-BERT 4/8: with noise − without = +0.00 points over 2 seed pair(s), within the spread "
                       "(1.41 points): **no difference shown**; without noise it is 10.00 points below FP32 on these "
                       "seeds, and the noise recovers 0% of that. The 95 % interval of the mean gap over these pairs "
                       "(Student's t) is [-12.71, +12.71] points, which includes 0.")
