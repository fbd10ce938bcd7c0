"""Power iteration against explicit Hessians; Q-BERT's Ω on a constructed case; mixed-precision bit assignment."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call
from transformers import BertForSequenceClassification

from qlib.second_order.hessian import power_iteration
from qlib.second_order.sensitivity import assign_bits, layer_blocks, layer_spectrum, negative_curvature, omega


def test_power_iteration_finds_the_top_eigenvalues_of_a_quadratic():
    eigenvalues = torch.tensor([5.0, 3.0, 1.0, -2.0, 0.5])
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))
    a = q @ torch.diag(eigenvalues) @ q.T
    x = torch.randn(5, requires_grad=True)
    pairs = power_iteration(lambda: 0.5 * x @ a @ x, [x], top_k=2, max_iter=500, tol=1e-8)
    assert [p.eigenvalue for p in pairs] == [pytest.approx(5.0, rel=1e-4), pytest.approx(3.0, rel=1e-4)]
    assert all(p.converged for p in pairs)
    assert abs(float(pairs[0].eigenvector[0] @ (q[:, 0]))) == pytest.approx(1.0, abs=1e-3)
    lowest = power_iteration(lambda: 0.5 * x @ a @ x, [x], max_iter=500, tol=1e-8, shift=5.0)[0]
    assert lowest.eigenvalue == pytest.approx(-2.0, rel=1e-3)  # a negative eigenvalue: a saddle point


def test_power_iteration_matches_the_explicit_hessian_of_a_tiny_bert():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=16, intermediate_size=32)
    config._attn_implementation = "eager"  # double backward through SDPA is not implemented on CPU
    model = BertForSequenceClassification(config).eval()
    batch = {"input_ids": torch.randint(5, 64, (4, 6)), "labels": torch.tensor([0, 1, 1, 0])}
    name = "bert.encoder.layer.0.attention.self.query.weight"
    weight = model.get_submodule(name.rsplit(".", 1)[0]).weight

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {name: w.reshape(weight.shape)}, kwargs=batch).loss

    hessian = torch.autograd.functional.hessian(loss_of, weight.detach().reshape(-1))
    expected = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    dominant = expected[expected.abs().argmax()].item()
    found = power_iteration(lambda: model(**batch).loss, [weight], max_iter=1000, tol=1e-7)[0]
    assert found.converged and found.eigenvalue == pytest.approx(dominant, rel=1e-3)


def test_non_convergence_is_reported_not_hidden():
    x = torch.randn(4, requires_grad=True)
    a = torch.diag(torch.tensor([1.0, 0.999, 0.998, 0.5]))
    with pytest.warns(RuntimeWarning, match="did not converge in 2 iterations"):
        pair = power_iteration(lambda: 0.5 * x @ a @ x, [x], max_iter=2, tol=1e-12)[0]
    assert not pair.converged and pair.iterations == 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=2, max_size=6), st.integers(1, 3), st.integers(0, 2**16))
def test_every_estimate_lies_between_the_extreme_eigenvalues(eigenvalues, iterations, seed):
    """A stopped power iteration's estimate is a Rayleigh quotient vᵀHv of a unit v, so λ_min ≤ it ≤ λ_max: a
    negative estimate proves negative curvature whether or not the iteration converged (the saddle check relies on
    it)."""
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # most stop unconverged: that is the case under test
        estimate = power_iteration(lambda: 0.5 * x @ a @ x, [x], max_iter=iterations, tol=1e-12, seed=seed)[0]
    assert min(eigenvalues) - 1e-9 <= estimate.eigenvalue <= max(eigenvalues) + 1e-9


def test_omega_on_a_constructed_case():
    # mean -2, population std of (-1, -3) = 1: Ω = |-2| + 1
    assert omega([-1.0, -3.0]) == pytest.approx(3.0)
    assert omega([4.0]) == 4.0
    with pytest.raises(ValueError, match="finite eigenvalues"):
        omega([1.0, float("nan")])


def test_negative_curvature_ignores_noise_and_counts_subsets():
    # mean top λ ≈ 7.5: ε ≈ 0.0075, so -0.005 is noise and -0.5 a negative direction; with mean 15, ε = 0.015
    assert negative_curvature([10.0, 20.5, -0.005, -0.5]) == {"negative_top_subsets": 1, "negative_curvature": True}
    assert negative_curvature([10.0, 20.0], smallest=-0.009) == {"negative_top_subsets": 0, "negative_curvature": False}
    assert negative_curvature([10.0, 20.0], smallest=-1.0)["negative_curvature"]


def test_layer_spectrum_on_a_tiny_bert(tiny_model_dir):
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation="eager")
    batches = [{"input_ids": torch.randint(5, 64, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    records = layer_spectrum(model, batches, blocks=["encoder.layer.1", "embeddings"], max_iter=30, smallest_subsets=1)
    assert [(r["subset"], r["block"]) for r in records] == [(0, "encoder.layer.1"), (0, "embeddings"),
                                                           (1, "encoder.layer.1"), (1, "embeddings")]
    first, later = records[:2], records[2:]
    assert all(r["smallest"] <= r["top"] + 1e-6 or r["top"] < 0 for r in first)
    assert all("smallest" not in r for r in later)
    assert set(layer_blocks(model)) == {"embeddings", "encoder.layer.0", "encoder.layer.1"}
    with pytest.raises(ValueError, match=r"unknown block\(s\) \['encoder.layer.9'\]"):
        layer_spectrum(model, batches, blocks=["encoder.layer.9"])
    landed = []  # a resumed caller: the first subset's records were measured before
    before = {(0, r["block"]): r | {"top": 123.0} for r in first}
    again = layer_spectrum(model, batches, blocks=["encoder.layer.1", "embeddings"], max_iter=30, smallest_subsets=1,
                           measured=before, on_record=landed.append)
    assert [r["top"] for r in again[:2]] == [123.0, 123.0] and landed == again[2:]  # only the new ones land
    assert [r["top"] for r in again[2:]] == [r["top"] for r in later]  # the same seed: the same eigenvalues


def test_bit_assignment_respects_its_target_and_ranks():
    sensitivity = {"l0": 5.0, "l1": 1.0, "l2": 3.0, "l3": 0.1}
    bits = assign_bits(sensitivity, (2, 3), 2.5)
    assert bits == {"l0": 3, "l1": 2, "l2": 3, "l3": 2}
    mixed = assign_bits(sensitivity, (2, 3, 4), 3.0)
    assert sum(mixed.values()) / 4 <= 3.0 and mixed["l0"] == max(mixed.values())
    assert assign_bits(sensitivity, (2, 3), 2.0) == dict.fromkeys(sensitivity, 2)


def test_bit_assignment_errors_name_the_value():
    with pytest.raises(ValueError, match="target of 1.5 average bits cannot be met with choices \\[2, 3\\]"):
        assign_bits({"l0": 1.0}, (2, 3), 1.5)
    with pytest.raises(ValueError, match="bits in choices must be an integer in 2..8, got 16"):
        assign_bits({"l0": 1.0}, (2, 16), 3)


def test_loss_surface_restores_the_weights():
    from qlib.second_order.hessian import loss_surface

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    surface = loss_surface(lambda: (x**2).sum(), [x], ([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])]),
                           [-1.0, 0.0, 1.0])
    assert surface[1, 1].item() == 5.0 and surface[2, 0].item() == (2**2 + 1**2)
    assert x.tolist() == [1.0, 2.0]


@pytest.mark.slow
def test_spectrum_run_writes_its_result(glue_dir, tiny_model_dir, tmp_path):
    from qlib.experiments.qbert import run_spectrum

    result = run_spectrum("sst2", str(tiny_model_dir), finetune_examples=8, subsets=2, subset_size=4, max_length=16,
                          max_iter=5, landscape_blocks=["encoder.layer.1"], landscape_points=3,
                          results_path=tmp_path / "spectrum.json", progress=False)
    assert set(result["blocks"]) == {"embeddings", "encoder.layer.0", "encoder.layer.1"}
    assert all(len(b["top"]) == 2 and len(b["smallest"]) == 1 for b in result["blocks"].values())
    assert (tmp_path / "spectrum.json").is_file()
    landscape = result["landscape"]["encoder.layer.1"]
    assert landscape["alphas"] == [-1.0, 0.0, 1.0] and len(landscape["eigenvalues"]) == 2
    assert len(landscape["loss"]) == 3 and all(len(row) == 3 for row in landscape["loss"])
    assert all(math.isfinite(loss) for row in landscape["loss"] for loss in row)
    with pytest.raises(ValueError, match="landscape_points must be at least 2, got 1"):
        run_spectrum("sst2", str(tiny_model_dir), landscape_points=1, results_path=tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"unknown landscape or batch-size block\(s\) \['encoder.layer.9'\]"):
        run_spectrum("sst2", str(tiny_model_dir), finetune_examples=8, subsets=1, subset_size=4, max_length=16,
                     landscape_blocks=["encoder.layer.9"], results_path=tmp_path / "y.json", progress=False)
    with pytest.raises(ValueError, match=r"unknown landscape or batch-size block\(s\) \['encoder.layer.7'\]"):
        run_spectrum("sst2", str(tiny_model_dir), finetune_examples=8, subsets=1, subset_size=4, max_length=16,
                     batch_sizes=[2], batch_size_block="encoder.layer.7", results_path=tmp_path / "y.json",
                     progress=False)
    with pytest.raises(ValueError, match=r"batch_sizes must be positive integers .* got \[4, 0\] and 3"):
        run_spectrum("sst2", str(tiny_model_dir), batch_sizes=[4, 0], results_path=tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()
    assert result["batch_size_effect"] == {"block": "encoder.layer.0", "sizes": {}}  # no study asked for


@pytest.mark.slow
def test_spectrum_of_a_given_fp32_model_skips_the_fine_tune(glue_dir, tiny_model_dir, tmp_path):
    from qlib.deploy.checkpoint import save_float
    from qlib.experiments.models import load_classifier
    from qlib.experiments.qbert import finetuned_for_hessian, run_spectrum

    torch.manual_seed(1)
    baseline, _ = load_classifier(str(tiny_model_dir), 2)
    with torch.no_grad():
        baseline.classifier.weight.normal_()
    path = save_float(baseline, tmp_path / "fp32-seed0.safetensors")
    loaded, _, training = finetuned_for_hessian("sst2", str(tiny_model_dir), init_from=path)
    assert training == {} and torch.equal(loaded.classifier.weight, baseline.classifier.weight)
    result = run_spectrum("sst2", str(tiny_model_dir), subsets=1, subset_size=4, max_length=16, max_iter=5,
                          results_path=tmp_path / "spectrum.json", progress=False, init_from=path)
    assert result["finetune"] == {} and result["params"]["init_from"] == str(path)
    with pytest.raises(FileNotFoundError, match=r"nope.safetensors not found: a task's Baseline run keeps it"):
        run_spectrum("sst2", str(tiny_model_dir), results_path=tmp_path / "z.json",
                     init_from=tmp_path / "nope.safetensors")


@pytest.mark.slow
def test_a_killed_spectrum_goes_on_with_the_measurements_it_kept(glue_dir, tiny_model_dir, tmp_path, monkeypatch):
    import qlib.experiments.qbert as qbert
    from qlib.deploy.checkpoint import save_float
    from qlib.experiments.models import load_classifier
    from qlib.experiments.results import code_state
    from qlib.experiments.snapshots import Snapshots

    path = save_float(load_classifier(str(tiny_model_dir), 2)[0], tmp_path / "fp32-seed0.safetensors")
    arguments = dict(task="sst2", model=str(tiny_model_dir), subsets=2, subset_size=4, max_length=16, max_iter=5,
                     landscape_blocks=["encoder.layer.1"], landscape_points=3, batch_sizes=[2], progress=False,
                     init_from=path)
    fresh = qbert.run_spectrum(**arguments, results_path=tmp_path / "fresh.json")
    with pytest.raises(ValueError, match="snapshot_dir keeps the spectrum of a fixed model: give init_from"):
        qbert.run_spectrum(**arguments | {"init_from": None}, results_path=tmp_path / "x.json", snapshot_dir="s")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("the session ended")

    with monkeypatch.context() as patched:  # killed after the eigenvalues, during the landscape
        patched.setattr(qbert, "block_landscape", killed)
        with pytest.raises(KeyboardInterrupt):
            qbert.run_spectrum(**arguments, results_path=tmp_path / "resumed.json", snapshot_dir=tmp_path / "snap")
    (folder,) = (tmp_path / "snap" / "spectrum").iterdir()
    assert folder.name.startswith("sst2-") and not (tmp_path / "resumed.json").exists()
    assert sorted(Snapshots(folder).kept()) == [f"eigenvalue {s} {b}" for s in (0, 1)
                                                for b in ("embeddings", "encoder.layer.0", "encoder.layer.1")]
    measured = []
    with monkeypatch.context() as patched:  # what the resumed run measures again: the landscape and batch size only
        patched.setattr(qbert, "layer_spectrum",
                        lambda *a, **k: measured.append(len(a[1])) or layer_spectrum(*a, **k))
        resumed = qbert.run_spectrum(**arguments, results_path=tmp_path / "resumed.json",
                                     snapshot_dir=tmp_path / "snap")
    assert measured == [2, 3] and resumed["reused_measurements"] == 6  # the 2 subsets came back kept; the study's 3
    assert all("made_by" not in r for r in fresh["records"])  # batches of size 2 were measured (they were not kept)
    assert all(r["made_by"]["git_commit"] == code_state()["git_commit"] for r in resumed["records"])
    assert [r["top"] for r in resumed["records"]] == [r["top"] for r in fresh["records"]]
    assert resumed["landscape"] == fresh["landscape"] and resumed["batch_size_effect"] == fresh["batch_size_effect"]
    assert resumed["spectrum_seconds"] == pytest.approx(sum(r["seconds"] for r in resumed["records"]))
    assert not folder.exists()  # cleared once the result is written
    assert qbert.spectrum_params(arguments) == resumed["params"]  # what the progress table finds the folder by
    assert qbert.spectrum_snapshot_folder(resumed["params"], tmp_path / "snap") == folder
    retrained, _ = load_classifier(str(tiny_model_dir), 2)
    with torch.no_grad():
        retrained.classifier.weight.add_(1.0)
    save_float(retrained, path)  # the Baseline trained again: other bytes, other kept measurements
    assert qbert.spectrum_snapshot_folder(resumed["params"], tmp_path / "snap") != folder


def test_block_landscape_matches_the_loss_at_its_centre_and_names_bad_blocks(tiny_model_dir):
    from qlib.experiments.models import load_classifier
    from qlib.second_order.sensitivity import block_landscape

    torch.manual_seed(0)
    model, _ = load_classifier(str(tiny_model_dir), 2, attn_implementation="eager")
    batch = {"input_ids": torch.randint(5, 64, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}
    with torch.no_grad():
        centre = model(**batch).loss.item()
    landscape = block_landscape(model, batch, "encoder.layer.0", [-0.5, 0.0, 0.5], max_iter=20)
    assert landscape["loss"][1][1] == pytest.approx(centre, rel=1e-5)  # the weights themselves, restored after
    with torch.no_grad():
        assert model(**batch).loss.item() == pytest.approx(centre, rel=1e-6)
    with pytest.raises(ValueError, match="unknown block 'encoder.layer.7'"):
        block_landscape(model, batch, "encoder.layer.7", [0.0])
