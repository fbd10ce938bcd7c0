"""benchmarks/ipq_decode.py's machinery on a tiny model: the iPQ model decodes per forward, the copy decoded once
computes the same logits with plain float layers, and a run writes its timings with provenance. Not a speed test:
speed is the benchmark's to print, on a quiet CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import tiny_config
from transformers import BertForSequenceClassification

from qlib.experiments.results import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ipq_decode  # noqa: E402

sys.path.pop(0)


def test_decoding_once_gives_the_same_model_as_decoding_per_forward(monkeypatch):
    monkeypatch.setattr(ipq_decode, "CENTROIDS", 8)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()).eval()
    ipq = ipq_decode.product_quantized(model)
    once = ipq_decode.decoded_once(ipq)
    assert ipq_decode.pq_layers(ipq) and not ipq_decode.pq_layers(once)
    ids = torch.randint(5, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(once(input_ids=ids).logits, ipq(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(ipq(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_a_run_writes_each_variants_timings_per_shape_and_point(tmp_path, monkeypatch):
    monkeypatch.setattr(ipq_decode, "CENTROIDS", 8)
    monkeypatch.setattr(ipq_decode, "SHAPES", {"tiny": lambda: BertForSequenceClassification(tiny_config())})
    monkeypatch.setattr(ipq_decode, "POINTS", ((1, 8), (2, 8)))
    monkeypatch.setattr(ipq_decode, "batch_of", lambda b, s: {"input_ids": torch.randint(5, 64, (b, s))})
    assert ipq_decode.main(["--rounds", "2", "--out", str(tmp_path / "run.json")]) == 0
    run = read_json(tmp_path / "run.json")
    tiny = run["shapes"]["tiny"]
    assert set(tiny["latency"]) == {"batch1-seq8", "batch2-seq8"}
    assert set(tiny["latency"]["batch1-seq8"]) == {"fp32", "ipq", "ipq_decoded_once"}
    assert len(tiny["latency"]["batch1-seq8"]["ipq"]["times_ms"]) == 2 and tiny["decode_all_ms"] > 0
    assert tiny["pq_layers"] > 0 and run["provenance"]["git_commit"]
