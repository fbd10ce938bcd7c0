"""qlib.experiments.speed: the int8 benchmark's files read into the speed chapter's tables, one row per CPU class."""

from __future__ import annotations

import pandas as pd
import pytest

from qlib.experiments.results import write_json
from qlib.experiments.speed import (
    BURST_FACTOR,
    TARGETS,
    benchmark_runs,
    calm_at_point,
    calm_speedup,
    classes_side_by_side,
    export_against_engines,
    judge,
    latest_per_class,
    limits,
    round_speedups,
    run_for,
    runs_at_point,
    verdicts,
)


def run(date: str, cls: str | None, ms: dict[str, float], features=("avx2",), peaks=None) -> dict:
    latency = {f"batch{b}-seq128": {v: {"median_ms": m * b, "runs_ms": [m * b * f for f in (1.1, 1.0, 0.9)]}
                                     for v, m in ms.items()} for b in (1, 8)}
    record = {"shapes": {"bert-base": {"latency": latency, "achieved_gops": {
                  "qbook_int8": {"gemm_gops": 500.0, "forward_gops": 250.0}}}},
              "provenance": {"date": date, "machine": {"cpu_features": list(features)}}}
    if cls is not None:
        record["cpu"] = {"class": cls}
    if peaks:
        record["limits"] = peaks
    return record


@pytest.fixture
def folder(tmp_path):
    write_json(tmp_path / "int8_cpu-amx-1.json", run("2026-12-01T10:00", "AMX", {"qbook_int8": 10, "openvino_int8": 8,
                                                                                  "ort_int8": 20}))
    write_json(tmp_path / "int8_cpu-amx-2.json", run("2026-12-02T10:00", "AMX", {"qbook_int8": 10, "openvino_int8": 12,
                                                                                  "ort_int8": 20},
                                                       peaks={"int8_gemm_gops": 1000.0, "fp32_gemm_gops": 200.0}))
    write_json(tmp_path / "int8_cpu-old.json", run("2026-11-01T10:00", None, {"qbook_int8": 30, "fp32": 100},
                                                   features=("avx2", "avx512_vnni")))
    return tmp_path


def test_the_first_runs_class_comes_from_what_they_recorded():
    from qlib.experiments.speed import run_class

    first = {"cpu": {"vnni": True}, "provenance": {"machine": {"cpu": "AMD EPYC"}}}
    assert run_class(first) == "AVX-512 VNNI"
    assert run_class(first | {"provenance": {"machine": {"cpu": "Intel(R) Xeon(R)"}}}) == ""  # AMX or not: unknown


def test_runs_are_read_oldest_first_with_their_class(folder):
    runs = benchmark_runs(folder)
    assert [r["class"] for r in runs] == ["AVX-512 VNNI", "AMX", "AMX"]  # an old run's class from its features
    latest = latest_per_class(runs)
    assert set(latest) == {"AMX", "AVX-512 VNNI"} and latest["AMX"]["path"].endswith("int8_cpu-amx-2.json")
    full, short = (run("2026-12-03T10:00", "AMX", {"qbook_int8": 9}) | {"params": {"sweep_batches": batches}}
                   for batches in ([1], []))
    write_json(folder / "int8_cpu-amx-3.json", full)
    write_json(folder / "int8_cpu-amx-4.json", short | {"provenance": short["provenance"] | {"date": "2026-12-04"}})
    assert latest_per_class(benchmark_runs(folder))["AMX"]["path"].endswith("int8_cpu-amx-3.json")  # not the short one


def test_a_one_cpu_table_reads_the_run_of_a_class_or_of_this_machine(folder, monkeypatch):
    from qlib.experiments import speed

    runs = benchmark_runs(folder)
    assert run_for(runs, "AVX-512 VNNI")["class"] == "AVX-512 VNNI"
    with pytest.raises(ValueError, match=r"no committed run of CPU class 'AVX2'; runs exist for \['AMX', 'AVX-512"):
        run_for(runs, "AVX2")
    monkeypatch.setattr(speed, "cpu_class", lambda: "AVX-512 VNNI")
    assert run_for(runs)["class"] == "AVX-512 VNNI"  # this machine's class
    monkeypatch.setattr(speed, "cpu_class", lambda: "AVX2")
    assert run_for(runs) is max(latest_per_class(runs).values(), key=lambda r: r["provenance"]["date"])
    assert run_for([]) is None


def test_classes_side_by_side_and_their_verdicts(folder):
    latest = latest_per_class(benchmark_runs(folder))
    table = classes_side_by_side(latest)
    assert table.loc[("AMX", 8), "openvino_int8"] == 96 and table.loc[("AVX-512 VNNI", 1), "fp32"] == 100
    v = verdicts(latest).set_index(["CPU class", "batch", "qbook route", "vs"])
    assert v.loc[("AMX", 1, "qbook_int8", "openvino_int8"), "speed-up"] == pytest.approx(1.2)
    assert v.loc[("AMX", 1, "qbook_int8", "openvino_int8"), "verdict"] == "meets"
    assert v.loc[("AMX", 1, "qbook_int8", "ort_int8"), "verdict"] == "meets"  # 2.0x against a 1.25x target
    assert v.loc[("AVX-512 VNNI", 8, "qbook_int8", "fp32"), "speed-up"] == pytest.approx(100 / 30)
    assert v.loc[("AVX-512 VNNI", 8, "qbook_int8", "fp32"), "verdict"] == (
        "meets" if 100 / 30 >= TARGETS["AVX-512 VNNI"]["fp32"] else "misses")


def test_a_verdict_shows_its_spread_over_the_rounds_and_whether_the_run_settles_it(folder):
    latest = latest_per_class(benchmark_runs(folder))
    v = verdicts(latest).set_index(["CPU class", "batch", "qbook route", "vs"])
    row = v.loc[("AMX", 8, "qbook_int8", "openvino_int8")]  # each round 1.2x: the shared slowdown drops out
    assert row["lowest round"] == pytest.approx(1.2) and row["highest round"] == pytest.approx(1.2)
    assert bool(row["every round agrees"])
    noisy = run("2026-12-03T10:00", "AMX", {})
    noisy["shapes"]["bert-base"]["latency"] = {"batch1-seq128": {
        "qbook_int8": {"median_ms": 10.0, "runs_ms": [10.0, 10.0, 10.0]},
        "openvino_int8": {"median_ms": 9.5, "runs_ms": [9.0, 9.5, 10.5]}}}
    row = verdicts({"AMX": noisy}).iloc[0]
    assert row["verdict"] == "misses" and row["speed-up"] == pytest.approx(0.95)
    assert (row["lowest round"], row["highest round"]) == pytest.approx((0.9, 1.05))
    assert not row["every round agrees"]  # one round meets the 1.0x target: this run does not settle it


def test_the_calm_speed_up_leaves_out_the_calls_made_in_a_host_burst():
    other = {"median_ms": 30.0, "runs_ms": [20.0, 36.0, 30.0, 21.0], "probe_ms": [1.0, 1.8, 1.9, 1.1]}
    route = {"median_ms": 25.0, "runs_ms": [19.0, 25.0, 31.0, 18.0], "probe_ms": [1.0, 1.05, 2.0, 1.2]}
    calm = calm_speedup(other, route)  # calm: probes <= 1.3 ms; other 20, 21 against route 19, 25, 18
    assert calm == pytest.approx({"calm speed-up": 20.5 / 19.0, "calls in bursts": 3 / 8})
    assert judge(other, route, 1.0)["calm speed-up"] == pytest.approx(20.5 / 19.0)
    assert BURST_FACTOR * 1.0 < 1.8  # the burst probes above are above the line
    every_other_in_a_burst = other | {"probe_ms": [2.0, 2.0, 2.0, 2.0]}
    assert calm_speedup(every_other_in_a_burst, route | {"probe_ms": [1.0] * 4})["calm speed-up"] is None
    assert calm_speedup({"median_ms": 1.0, "runs_ms": [1.0]}, route) == {}  # a run from before the probes


def test_runs_that_probed_the_host_give_their_fastest_routes_calm_speed_ups(folder):
    probed = run("2026-12-06T10:00", "AMX", {})
    probed["path"] = str(folder / "int8_cpu-amx-9.json")
    probed["shapes"]["bert-base"]["latency"] = {"batch8-seq128": {
        "qbook_int8": {"median_ms": 30.0, "runs_ms": [30.0, 31.0], "probe_ms": [1.0, 1.0]},
        "qbook_int8_autotuned": {"median_ms": 20.0, "runs_ms": [18.0, 22.0], "probe_ms": [1.0, 2.0]},
        "openvino_int8": {"median_ms": 21.0, "runs_ms": [19.8, 24.0], "probe_ms": [1.1, 1.9]}}}
    write_json(folder / "int8_cpu-amx-9.json", probed)
    table = calm_at_point(benchmark_runs(folder), batch=8)
    assert list(table.index.str.split(" ").str[0]) == ["int8_cpu-amx-9"]  # the others recorded no probes
    row = table.iloc[0]
    assert row["fastest qbook route"] == "qbook_int8_autotuned"
    assert row["vs openvino_int8, calm"] == pytest.approx(19.8 / 18.0)  # the calls after a fast probe
    assert row["calls in bursts"] == pytest.approx(2 / 6)
    assert "vs ort_int8, calm" not in table  # not timed by this run


def test_round_speedups_pair_rounds_one_to_one():
    assert round_speedups([2.0, 3.0], [1.0, 2.0]) == (1.5, 2.0)
    with pytest.raises(ValueError, match="must pair up one to one, got 2 and 3 rounds"):
        round_speedups([2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="got 0 and 0 rounds"):
        round_speedups([], [])


def test_limits_set_what_qbook_reaches_beside_the_peaks(folder):
    table = limits(latest_per_class(benchmark_runs(folder)))
    assert list(table.index) == ["AMX"]  # the older class recorded no peaks
    assert table.loc["AMX", "qbook_int8 gemm (% of int8 peak)"] == pytest.approx(50.0)
    assert table.loc["AMX", "qbook_int8 forward (% of int8 peak)"] == pytest.approx(25.0)
    assert table.loc["AMX", "peak GEMM m × k × n"] is None  # not recorded by this run
    peaks = {"int8_gemm_gops": 1000.0, "fp32_gemm_gops": 200.0, "gemm_shape": [8, 16, 32]}
    shaped = run("2026-12-03T10:00", "AMX", {"qbook_int8": 10}, peaks=peaks)
    assert limits({"AMX": shaped}).loc["AMX", "peak GEMM m × k × n"] == "8 × 16 × 32"


def test_each_agreement_run_keeps_its_rows_even_on_the_same_model(tmp_path):
    from qlib.experiments.speed import int8_agreement_table

    def agreement(date: str, gap: float) -> dict:
        route = {"scores": {"accuracy": 0.8 + gap / 100}, "gap_points": gap, "target_points": 0.5,
                 "max_abs_logit_diff": 0.1, "mean_abs_logit_diff": 0.01, "same_prediction": 0.99}
        return {"task": "sst2", "examples": 872, "checkpoint": "trained by this run",
                "trained": {"train": {"train_examples": 4000}, "seed": 0},
                "scores": {"fake_quant": {"accuracy": 0.8}}, "routes": {"int8_7bit_weights": route},
                "provenance": {"date": date, "git_commit": "abcdef123", "machine": {"cpu": "x"}}}

    write_json(tmp_path / "a.json", agreement("2026-12-02T20:00:00", 0.57))
    write_json(tmp_path / "b.json", agreement("2026-12-02T20:04:00", 0.46))
    table, records = int8_agreement_table([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "missing.json"])
    assert len(records) == 2 and list(table.index.names) == ["run", "route"]
    assert table["gap (points)"].tolist() == [0.57, 0.46]
    assert table["within target"].tolist() == [False, True]
    assert table.index[0] == ("QAT on 4,000 sst2 examples, seed 0, 2026-12-02T20:00", "int8_7bit_weights")


def test_the_compiled_routes_accuracy_is_said_per_run_and_only_where_a_run_scored_it(tmp_path):
    from qlib.experiments.speed import int8_agreement_table, route_accuracy_lines

    def route(gap: float, **extra) -> dict:
        return {"scores": {"accuracy": 0.8 - gap / 100}, "gap_points": gap, "target_points": 0.2,
                "max_abs_logit_diff": 1.0, "mean_abs_logit_diff": 0.01, "same_prediction": 0.97, **extra}

    run_record = {"task": "sst2", "examples": 872, "checkpoint": "qat-seed0.safetensors",
                  "scores": {"fake_quant": {"accuracy": 0.8}}, "routes": {"int8": route(0.1)},
                  "provenance": {"date": "2026-12-05T04:56:00", "git_commit": "abcdef123", "machine": {"cpu": "x"}}}
    write_json(tmp_path / "a.json", run_record)
    assert route_accuracy_lines(int8_agreement_table([tmp_path / "a.json"])[0]) is None
    assert route_accuracy_lines(int8_agreement_table([])[0]) is None
    run_record["routes"]["int8_compiled_autotuned"] = route(0.57, batches="padded to 128 tokens",
                                                            fake_quant_scores={"accuracy": 0.8})
    write_json(tmp_path / "b.json", run_record)
    lines = route_accuracy_lines(int8_agreement_table([tmp_path / "b.json"])[0])
    assert lines == ("* `int8_compiled_autotuned` (checkpoint qat-seed0.safetensors, 2026-12-05T04:56, x): 0.57 points "
                     "from the fake-quantized model on 872 dev examples, outside its 0.2-point target.")
    assert "within its" in route_accuracy_lines(int8_agreement_table([tmp_path / "a.json"])[0], route="int8")


def test_the_ipq_decode_table_sets_ipq_against_fp32_per_shape_and_batch():
    from qlib.experiments.speed import ipq_decode_table

    timed = {"batch1-seq128": {"fp32": {"median_ms": 10.0}, "ipq": {"median_ms": 25.0},
                               "ipq_decoded_once": {"median_ms": 10.5}},
             "batch8-seq128": {"fp32": {"median_ms": 40.0}, "ipq": {"median_ms": 50.0},
                               "ipq_decoded_once": {"median_ms": 41.0}}}
    table = ipq_decode_table({"AMX": {"shapes": {"bert-base": {"latency": timed, "decode_all_ms": 14.0}}}})
    assert table.loc[("AMX", "bert-base", 1, 128), "iPQ / FP32"] == 2.5
    assert table.loc[("AMX", "bert-base", 8, 128), "iPQ / FP32"] == 1.25
    assert (table["decode all weights once ms"] == 14.0).all()
    assert ipq_decode_table({}).empty


def test_the_integer_nonlinearity_speed_sets_the_integer_route_against_the_float_one():
    from qlib.experiments.speed import integer_nonlinearity_speed

    timed = {f"batch{b}-seq128": {"fp32": {"median_ms": 100.0 * b}, "qbook_int8": {"median_ms": 30.0 * b},
                                  "qbook_int8_integer": {"median_ms": 120.0 * b}} for b in (1, 8)}
    run_ = {"shapes": {"bert-base": {"latency": timed}, "packaged": {"latency": timed}}}
    table = integer_nonlinearity_speed({"AMX": run_})
    assert list(table.index.names) == ["CPU class", "shape", "batch"] and len(table) == 4
    assert (table["integer / float nonlinearities"] == 4.0).all()
    assert integer_nonlinearity_speed({}).empty


def test_the_peers_kernels_are_listed_per_class_largest_first():
    from qlib.experiments.speed import peer_kernels

    nodes = {"MVN (jit_bf16)": 0.9, "FullyConnected (brgemm_avx512_amx_I8)": 11.0, "Subgraph (jit_avx512_i8)": 6.1}
    runs = {"AMX": {"shapes": {"bert-base": {"openvino_profile_by_node_ms": nodes}}},
            "AVX2": {"shapes": {"bert-base": {}}}}  # a run from before the peer was profiled
    table = peer_kernels(runs, top=2)
    assert list(table.index) == [("AMX", "FullyConnected (brgemm_avx512_amx_I8)"), ("AMX", "Subgraph (jit_avx512_i8)")]
    assert table["ms"].tolist() == [11.0, 6.1] and peer_kernels({"AVX2": runs["AVX2"]}).empty


def test_profiles_are_read_at_each_profiled_batch_old_runs_at_their_one_batch():
    from qlib.experiments.speed import newest_profiled, profile_at, profile_views, profiles

    groups = {"GEMM": 30.0, "attention": 8.0, "total": 40.0}
    old = {"class": "AMX", "params": {"profile_batch": 8, "seq": 128},
           "shapes": {"bert-base": {"profile_ms": {"qbook_int8": groups}}}}
    new = {"class": "AMX", "params": {"profile_batches": [8, 1], "seq": 128},
           "shapes": {"bert-base": {"profile_ms": {"qbook_int8": groups},
                                    "profile_ms_at": {"batch1-seq128": {"qbook_int8": {**groups, "GEMM": 5.0}}}}}}
    assert profile_at(old, 8, 128) == profile_at(new, 8, 128) == {"qbook_int8": groups}
    assert profile_at(old, 1, 128) == {} and profile_at(new, 1, 128)["qbook_int8"]["GEMM"] == 5.0
    assert profile_at(new, 8, 64) == {}  # another sequence length was never profiled
    assert newest_profiled([old], 1, 128) == {} and newest_profiled([new, old], 8, 128) == {"AMX": old}
    table = profiles(newest_profiled([old, new], 1, 128), batch=1)
    assert table.loc[("AMX", "qbook_int8"), "GEMM"] == 5.0
    old["provenance"], new["provenance"] = {"date": "2026-12-01"}, {"date": "2026-12-02"}
    assert profile_views([old, new], {"AMX": old}, 8, 128) == [  # the short run after the verdicts' full one
        ("batch 8, the verdicts' runs", 8, {"AMX": old}), ("batch 8, newer runs", 8, {"AMX": new}),
        ("batch 1, the newest run of each class that profiled it", 1, {"AMX": new})]
    assert [view[0] for view in profile_views([old, new], {"AMX": new}, 8, 128)] == [
        "batch 8, the verdicts' runs", "batch 1, the newest run of each class that profiled it"]


def test_judge_gives_the_speed_up_and_its_spread_and_a_verdict_only_where_a_target_is_set():
    other = {"median_ms": 12.0, "runs_ms": [11.0, 12.0, 13.0]}
    route = {"median_ms": 10.0, "runs_ms": [10.0, 10.0, 10.0]}
    assert judge(other, route, None) == pytest.approx({"speed-up": 1.2, "lowest round": 1.1, "highest round": 1.3})
    met = judge(other, route, 1.15)
    assert met["verdict"] == "meets" and met["target"] == 1.15 and met["every round agrees"] is False
    missed = judge(other, route, 1.5)
    assert missed["verdict"] == "misses" and missed["every round agrees"] is True


def test_every_run_at_a_point_shows_its_fastest_qbook_route(folder):
    write_json(folder / "int8_cpu-amx-3.json", run("2026-12-03T10:00", "AMX", {  # a short run: compiled routes only
        "qbook_int8_compiled": 9, "qbook_int8_compiled_bf16_attention": 6, "openvino_int8": 12}))
    write_json(folder / "int8_cpu-amx-4.json", run("2026-12-04T10:00", "AMX", {"fp32": 50, "ort_int8": 20}))
    table = runs_at_point(benchmark_runs(folder), batch=8)
    assert list(table.index.str.split(" ").str[0]) == ["int8_cpu-old", "int8_cpu-amx-1", "int8_cpu-amx-2",
                                                       "int8_cpu-amx-3"]  # amx-4 timed no qbook route
    short = table.iloc[-1]
    assert short["fastest qbook route"] == "qbook_int8_compiled_bf16_attention" and short["its ms"] == 48
    assert short["vs openvino_int8"] == pytest.approx(2.0) and pd.isna(short["vs ort_int8"])
    assert table.iloc[0]["FP32 ms"] == 800 and table.iloc[0]["its ms"] == 240


def test_the_sweep_comes_from_the_newest_full_run_of_this_machines_class(folder, monkeypatch):
    from qlib.experiments import speed

    write_json(folder / "int8_cpu-amx-5.json", run("2026-12-05T10:00", "AMX", {"qbook_int8": 9, "fp32": 40}) | {
        "params": {"sweep_batches": [1, 8]}})
    write_json(folder / "int8_cpu-vnni-6.json", run("2026-12-06T10:00", "AVX-512 VNNI", {"qbook_int8": 9}) | {
        "params": {"sweep_batches": [1, 8]}})
    write_json(folder / "int8_cpu-amx-7.json", run("2026-12-07T10:00", "AMX", {"qbook_int8": 9}) | {
        "params": {"sweep_batches": []}})  # a short run: no sweep
    runs = benchmark_runs(folder)
    monkeypatch.setattr(speed, "cpu_class", lambda: "AMX")
    assert speed.sweep_run(runs)["path"].endswith("int8_cpu-amx-5.json")
    monkeypatch.setattr(speed, "cpu_class", lambda: "AVX2")  # no run of this class: the newest full run of any
    assert speed.sweep_run(runs)["path"].endswith("int8_cpu-vnni-6.json")
    assert speed.sweep_run(runs[:3]) is None  # the fixture's runs recorded no sweep


def test_the_export_is_set_against_each_engines_own_int8_model():
    timed = run("2026-12-06T20:00", "AVX-512 VNNI", {"qbook_qdq_openvino": 9.0, "openvino_int8": 10.0,
                                                     "qbook_qdq_ort": 20.0, "fp32": 40.0})
    timed["shapes"]["bert-base"]["agreement"] = {"qbook_qdq_openvino": {"max_abs_diff_vs_fake_quantized": 0.01},
                                                 "openvino_int8": {"max_abs_diff_vs_fake_quantized": 0.04}}
    table = export_against_engines({"AVX-512 VNNI": timed})
    assert list(table.index) == [("AVX-512 VNNI", 1, "qbook_qdq_openvino"), ("AVX-512 VNNI", 8, "qbook_qdq_openvino")]
    row = table.loc[("AVX-512 VNNI", 8, "qbook_qdq_openvino")]  # ONNX Runtime's own static model was not timed
    assert row["against"] == "openvino_int8"
    assert (row["export ms"], row["its own ms"]) == (72.0, 80.0)
    assert row["speed-up of the export"] == pytest.approx(10.0 / 9.0)
    assert (row["export max |Δlogit|"], row["its own max |Δlogit|"]) == (0.01, 0.04)
    assert export_against_engines({"AVX-512 VNNI": timed}, seq=512).empty  # no point at that length
