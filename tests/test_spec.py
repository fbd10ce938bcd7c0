"""RunSpec: a run's one identity. Labels are made in one place and read back from labels and result files, every
committed result included; knobs a method lacks are refused; the spec survives JSON, pickling and copying."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib.core.observers import Q8BERT_EMA_DECAY
from qlib.core.ternary import TernarySpec
from qlib.experiments.results import read_results
from qlib.experiments.spec import FROM_CHECKPOINT, PAPERS, RunSpec, TrainingProtocol

RESULTS = Path(__file__).parents[1] / "results"

bits = st.integers(2, 8)
specs = st.one_of(
    st.builds(RunSpec, task=st.sampled_from(["sst2", "cola", "rte"]), method=st.just("fp32"), seed=st.integers(0, 9),
              init_from=st.sampled_from([None, FROM_CHECKPOINT])),
    st.builds(RunSpec, task=st.just("rte"), method=st.just("dq"), seed=st.integers(0, 9)),
    st.builds(RunSpec, task=st.just("rte"), method=st.just("directq"), weight_bits=bits,
              percentile=st.sampled_from([None, 99.9, 99.0]), groups=st.sampled_from([None, 12, "row"])),
    st.builds(RunSpec, task=st.just("mrpc"), method=st.just("qat"), weight_bits=st.sampled_from([8, 7]),
              ema_decay=st.sampled_from([None, 0.99, 0.999, Q8BERT_EMA_DECAY]), integer_nonlinearities=st.booleans(),
              init_from=st.sampled_from([None, FROM_CHECKPOINT])),
    st.builds(RunSpec, task=st.just("sst2"), method=st.just("qbert"), seed=st.integers(0, 9), weight_bits=bits,
              embedding_bits=bits, groups=st.sampled_from([None, 1, 12, 48, "row"]),
              layer_bits=st.dictionaries(st.sampled_from([f"encoder.layer.{i}" for i in range(6)]), bits, max_size=6),
              percentile=st.sampled_from([None, 99.9]), noise_rate=st.sampled_from([1.0, 0.5, 0.25]),
              integer_nonlinearities=st.booleans(),
              init_from=st.sampled_from([None, FROM_CHECKPOINT]),
              protocol=st.builds(TrainingProtocol, epochs=st.integers(1, 6), lr=st.sampled_from([2e-5, 5e-5]))),
    st.builds(RunSpec, task=st.just("sst2"), method=st.just("qbert"), seed=st.integers(0, 9), weight_bits=st.just(2),
              embedding_bits=bits, groups=st.sampled_from([None, 12]), ternary=st.just(True),
              distillation=st.sampled_from([None, "logits", "hidden"]), init_from=st.just(FROM_CHECKPOINT)),
    st.builds(RunSpec, task=st.just("sst2"), method=st.just("ipq"), seed=st.integers(0, 9),
              centroids=st.sampled_from([16, 256]), centroid_bits=st.sampled_from([None, 8]),
              noise_rate=st.sampled_from([1.0, 0.2, 0.05]), init_from=st.just(FROM_CHECKPOINT)),
    st.builds(RunSpec, task=st.just("cola"), method=st.just("qbert"), weight_bits=bits, groups=st.just(12),
              noise_rate=st.sampled_from([0.1, 0.5]), noise_block=st.sampled_from([4, 8, 32]),
              init_from=st.just(FROM_CHECKPOINT)),
)


@settings(max_examples=200, deadline=None)
@given(specs)
def test_a_label_reads_back_as_the_run_it_names(spec):
    known = {"layer_bits": dict(spec.layer_bits)} if spec.layer_bits else {}
    known |= {"groups": spec.groups} if spec.method == "directq" else {}
    back = RunSpec.from_label(spec.label, spec.task, spec.seed, protocol=spec.protocol, **known)
    assert back == spec and back.label == spec.label
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec == copy.deepcopy(spec)
    assert hash(pickle.loads(pickle.dumps(spec))) == hash(spec)
    assert spec.result_path("r") == Path("r") / spec.task / f"{spec.label}-seed{spec.seed}.json"
    assert spec.paper in PAPERS
    assert (spec.quant_config() is None) == (spec.method == "fp32" or spec.method == "ipq" and not spec.centroid_bits)


def test_every_committed_result_reads_back_as_the_spec_its_file_is_named_by():
    records = [r for folder in ("q8bert", "q8bert-sweep", "qbert", "quant-noise")
               for r in read_results(RESULTS / folder) if "params" in r and "method" in r]
    assert len(records) > 20
    for record in records:
        spec = RunSpec.from_record(record)
        assert spec.label == record["method"] and Path(record["path"]).name == f"{spec.label}-seed{spec.seed}.json"
        assert Path(record["path"]).parent.name == spec.task


def test_labels_of_the_papers_rows():
    assert RunSpec("SST-2").label == "fp32" and RunSpec("sst2").task == "sst2"
    assert RunSpec("rte", "qat", ema_decay=Q8BERT_EMA_DECAY).label == "qat"
    assert RunSpec("rte", "qat", ema_decay=0.99).label == "qat-ema0.99"
    assert RunSpec("rte", "qat", integer_nonlinearities=True).label == "qat-int"
    assert RunSpec("rte", "qat", integer_nonlinearities=True).quant_config().integer_nonlinearities
    seven = RunSpec("sst2", "qat", weight_bits=7, ema_decay=0.99)
    assert seven.label == "qat-w7-ema0.99" and seven.paper == "Q8BERT (QAT)"
    assert (seven.quant_config().default.weight.bits, seven.quant_config().default.activation.bits) == (7, 8)
    assert seven.quant_config().embeddings.bits == 8
    assert RunSpec("rte", "directq", weight_bits=3, percentile=99.9, groups=12).label == "directq-w3-p99.9"
    assert RunSpec("sst2", "qbert", weight_bits=3, groups="row").label == "qbert-w3e8-per-row"
    mixed = RunSpec("sst2", "qbert", weight_bits=2, groups=12, layer_bits={"encoder.layer.0": 4, "encoder.layer.1": 2})
    assert mixed.label == "qbert-w2e8-g12-mp2-4" and mixed.paper == "Q-BERT_MP"
    noisy = RunSpec("sst2", "qbert", weight_bits=2, groups=12, percentile=99.9, noise_rate=0.5, init_from="x")
    assert noisy.label == "qbert-w2e8-g12-p99.9-qn0.5-ft" and noisy.paper == "Quant-Noise"
    assert noisy.with_(noise_block=4).label == "qbert-w2e8-g12-p99.9-qn0.5-b4-ft"
    assert noisy.with_(noise_block=4).quant_config().default.noise_block == 4
    ipq = RunSpec("sst2", "ipq", centroid_bits=8, init_from="x")
    assert ipq.label == "ipq-k256-int8-ft" and ipq.paper == "Quant-Noise (iPQ)"
    assert ipq.with_(noise_rate=0.2).label == "ipq-k256-int8-qn0.2-ft"
    assert (ipq.with_(epochs=2).passes, ipq.with_(epochs=1, noise_rate=0.2).passes) == (6, 4)  # per stage, noise first
    assert (noisy.with_(epochs=2).passes, RunSpec("sst2", "dq").passes) == (2, 0)
    assert ipq.quant_config().default.activation.bits == 8
    with pytest.raises(ValueError, match="ipq quantizes a trained model: give init_from"):
        RunSpec("sst2", "ipq")
    with pytest.raises(ValueError, match="centroids must be an integer k in 2..256, got 300"):
        RunSpec("sst2", "ipq", centroids=300, init_from="x")
    with pytest.raises(ValueError, match="centroids=16 is not a knob of method 'qat'"):
        RunSpec("sst2", "qat", centroids=16)
    assert [RunSpec("sst2", m).paper for m in ("fp32", "dq", "qat", "qbert")] == [
        "FP32", "Q8BERT (DQ)", "Q8BERT (QAT)", "Q-BERT"]
    ternary = RunSpec("sst2", "qbert", weight_bits=2, ternary=True, init_from="x", distillation="hidden")
    assert ternary.label == "qbert-w2e8-twn-kdh-ft" and ternary.paper == "TernaryBERT (TWN)"
    assert ternary.quant_config().default.weight == TernarySpec(groups=1)  # one scale per matrix, as TernaryBERT
    assert ternary.with_(groups=12).quant_config().default.weight == TernarySpec(groups=12)


def test_distilled_runs_name_their_mode_and_need_their_teacher():
    logits = RunSpec("sst2", "qat", init_from="fp32.safetensors", distillation="logits")
    hidden = RunSpec("sst2", "qbert", weight_bits=2, groups=12, percentile=99.9, init_from="fp32.safetensors",
                     distillation="hidden", integer_nonlinearities=True)
    assert logits.label == "qat-kd-ft" and hidden.label == "qbert-w2e8-g12-p99.9-kdh-int-ft"
    for spec in (logits, hidden):
        assert RunSpec.from_label(spec.label, "sst2", init_from="fp32.safetensors") == spec
    with pytest.raises(ValueError, match="distillation needs its teacher: init_from"):
        RunSpec("sst2", "qat", distillation="logits")
    with pytest.raises(ValueError, match="unknown distillation 'attention'; allowed: \\('logits', 'hidden'\\)"):
        RunSpec("sst2", "qat", init_from="x", distillation="attention")
    with pytest.raises(ValueError, match="distillation='logits' is not a knob of method 'fp32'"):
        RunSpec("sst2", "fp32", init_from="x", distillation="logits")


def test_configs_are_what_each_row_is_evaluated_with():
    dq = RunSpec("sst2", "dq").quant_config()
    assert dq.default.observer == "dynamic" and dq.default.weight.bits == 8 and dq.default.weight.symmetric
    direct = RunSpec("sst2", "directq", weight_bits=3, groups=4, percentile=99.9).quant_config().default
    assert (direct.weight.bits, direct.weight.groups, direct.weight.percentile, direct.observer) == (
        3, 4, 99.9, "dynamic")
    assert RunSpec("sst2", "qat", ema_decay=0.99).quant_config().default.ema_decay == 0.99
    mixed = RunSpec("sst2", "qbert", weight_bits=2, layer_bits={"encoder.layer.0": 3}, noise_rate=0.5).quant_config()
    assert mixed.layer_for("encoder.layer.0.output.dense").weight.bits == 3 and mixed.default.weight.bits == 2
    assert mixed.default.noise_rate == 0.5


def test_post_training_rows_know_their_trained_run():
    dq = RunSpec("rte", "dq", 2, protocol=TrainingProtocol(epochs=6, lr=2e-5))
    assert dq.is_post_training and dq.trained_spec == RunSpec("rte", "fp32", 2, protocol=dq.protocol)
    assert not RunSpec("rte", "qat").is_post_training and RunSpec("rte", "qat").trained_spec == RunSpec("rte", "qat")


def test_an_old_record_without_a_spec_is_read_from_its_params():
    params = {"method": "fp32", "epochs": 1, "lr": 5e-5, "groups": 12, "weight_bits": 8, "post_training": ["dq"]}
    old = {"task": "sst2", "method": "directq-w2-p99.9", "seed": 1, "params": params}
    protocol = TrainingProtocol(epochs=1, group_by_length=False)  # written before batches were grouped by length
    assert RunSpec.from_record(old) == RunSpec("sst2", "directq", 1, weight_bits=2, groups=12, percentile=99.9,
                                               protocol=protocol)
    assert RunSpec.from_record(old | {"method": "fp32"}) == RunSpec("sst2", "fp32", 1, protocol=protocol)


def test_a_record_from_before_batches_were_grouped_by_length_reads_back_as_random_batches():
    spec = RunSpec("rte", "qat", 1, protocol=TrainingProtocol(epochs=6, lr=2e-5))
    assert spec.protocol.group_by_length  # the protocol's default
    record = {"task": "rte", "method": "qat", "seed": 1, "spec": spec.to_dict()}
    assert RunSpec.from_record(record) == spec
    del record["spec"]["protocol"]["group_by_length"]  # as written before the field existed
    assert RunSpec.from_record(record) == spec.with_(group_by_length=False)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="int4"), "unknown method 'int4'; allowed"),
    (dict(method="qat", noise_rate=0.5), "noise_rate=0.5 is not a knob of method 'qat'; it is for qbert"),
    (dict(method="fp32", weight_bits=4), "weight_bits=4 is not a knob of method 'fp32'"),
    (dict(method="dq", init_from="x"), "init_from='x' is not a knob of method 'dq'"),
    (dict(method="qbert", noise_rate=1.5), r"noise_rate must be in \(0, 1\], got 1.5"),
    (dict(method="qbert", noise_block=4), "noise_block=4 needs Quant-Noise"),
    (dict(method="qbert", noise_rate=0.5, noise_block=0), "noise_block must be a positive integer, got 0"),
    (dict(method="qat", noise_rate=0.5), "noise_rate=0.5 is not a knob of method 'qat'"),
    (dict(method="qat", weight_bits=4), r"weight_bits=4 is not one of qat's \(8, 7\): Q8BERT's 8, or 7"),
    (dict(method="qbert", weight_bits=9), "bits must be an integer in 2..8, got 9"),
    (dict(method="qbert", groups="rows"), "groups must be a positive integer G, 'row' or None; got 'rows'"),
    (dict(method="qbert", groups=0), "groups must be a positive integer G, 'row' or None; got 0"),
    (dict(method="qbert", percentile=40), r"percentile must be in \(50, 100\], got 40"),
    (dict(seed=-1), "seed must be a non-negative integer, got -1"),
    (dict(method="qat", integer_nonlinearities="yes"), "integer_nonlinearities must be True or False, got 'yes'"),
    (dict(task="imdb"), "unknown task 'imdb'"),
    (dict(method="qat", ternary=True), "ternary=True is not a knob of method 'qat'; it is for qbert"),
    (dict(method="qbert", ternary=1), "ternary must be True or False, got 1"),
    (dict(method="qbert", ternary=True), "weight_bits=8 does not go with ternary=True: ternary weights take "
                                         "weight_bits=2"),
    (dict(method="qbert", ternary=True, weight_bits=2, percentile=99.9), "percentile=99.9 does not go with ternary"),
    (dict(method="qbert", ternary=True, weight_bits=2, groups="row"), "groups='row' does not go with ternary"),
    (dict(method="qbert", ternary=True, weight_bits=2, layer_bits={"encoder.layer.0": 3}),
     "layer_bits={'encoder.layer.0': 3} does not go with ternary"),
    (dict(protocol=TrainingProtocol()), None),
])
def test_bad_specs_are_refused_naming_the_value(kwargs, message):
    arguments = {"task": "sst2"} | kwargs
    if message is None:
        RunSpec(**arguments)
        return
    with pytest.raises(ValueError, match=message):
        RunSpec(**arguments)


@pytest.mark.parametrize("kwargs,message", [
    (dict(epochs=0), "epochs must be a positive integer, got 0"),
    (dict(lr=-1.0), "lr must be a positive number, got -1.0"),
    (dict(max_train_examples=0), "max_train_examples must be a positive integer or None, got 0"),
    (dict(source="web"), "unknown source 'web'"),
    (dict(group_by_length="yes"), "group_by_length must be True or False, got 'yes'"),
])
def test_bad_protocols_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingProtocol(**kwargs)


def test_bad_labels_and_labels_that_need_more_than_they_hold():
    with pytest.raises(ValueError, match="unknown result label 'int4'"):
        RunSpec.from_label("int4", "sst2")
    with pytest.raises(ValueError, match="names a mixed-precision run: pass its layer_bits"):
        RunSpec.from_label("qbert-w2e8-g12-mp2-3", "sst2")
    with pytest.raises(ValueError, match="describe different runs"):
        RunSpec.from_label("qbert-w2e8-g12-mp2-3", "sst2", layer_bits={"encoder.layer.0": 4})
    with pytest.raises(ValueError, match="from the pretrained model, not init_from"):
        RunSpec.from_label("qbert-w2e8", "sst2", init_from="ckpt.safetensors")
    with pytest.raises(ValueError, match=r"unknown RunSpec field\(s\) \['bits'\]"):
        RunSpec.from_dict({"task": "sst2", "bits": 4})


def test_a_spec_is_frozen_and_changes_make_a_new_checked_spec():
    spec = RunSpec("sst2", "qbert", layer_bits={"encoder.layer.0": 3})
    with pytest.raises(TypeError, match="layer_bits cannot change"):
        spec.layer_bits["encoder.layer.1"] = 2
    with pytest.raises(AttributeError):
        spec.seed = 3
    longer = spec.with_(epochs=6, seed=2)
    assert (longer.protocol.epochs, longer.seed, spec.protocol.epochs) == (6, 2, 3)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        spec.with_(epochs=0)
