"""What iPQ costs at inference on a CPU: a product-quantized BERT stores codes and codebooks, and its layers
(``qlib.bert.pq_modules``) decode each weight from its codebook at every forward. No integer kernel multiplies
codes, so the choice is to decode per forward (the file's memory) or once at load (FP32's memory and speed).

    python benchmarks/ipq_decode.py [--threads 2] [--rounds 9] [--out FILE]

For the BERT-base shape (random weights: speed does not depend on them) and the packaged model, at batch 1 and 8,
sequence 128, it times side by side in one process, interleaved (one forward of each in turn), medians over the
rounds after warm-up: ``fp32`` (the float model), ``ipq`` (every iPQ stage at k = 256, float codebooks, decoding per
forward) and ``ipq_decoded_once`` (the same model with each weight decoded once into a plain float layer); and the
time to decode every weight once. The k-means runs one iteration: the codes' values do not change the timings.
Run it on a quiet CPU. Writes ``results/benchmarks/ipq_decode-<class>-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from qlib.bert.convert import find_bert  # noqa: E402
from qlib.bert.pq_modules import PQEmbedding, PQLinear, product_quantize_all  # noqa: E402
from qlib.common.cpu import cpu_class, cpu_model  # noqa: E402
from qlib.experiments.models import DEFAULT_MODEL, load_classifier  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.speed import point_name  # noqa: E402

SHAPES = {"bert-base": lambda: BertForSequenceClassification(BertConfig(num_labels=2)),
          "packaged": lambda: load_classifier(DEFAULT_MODEL, num_labels=2)[0]}
POINTS = ((1, 128), (8, 128))
CENTROIDS = 256


def product_quantized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every iPQ stage applied (k = ``CENTROIDS``, one k-means iteration)."""
    quantized = copy.deepcopy(model)
    product_quantize_all(find_bert(quantized), CENTROIDS, iterations=1)
    return quantized.eval()


def pq_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (PQLinear, PQEmbedding))]


def decoded_once(model: nn.Module) -> nn.Module:
    """A copy of the iPQ ``model`` whose product-quantized layers are plain float layers holding their decoded
    weights: what decoding at load time gives."""
    plain = copy.deepcopy(model)
    for name, module in pq_layers(plain):
        weight = module.weight.detach().clone()
        if isinstance(module, PQLinear):
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight = nn.Parameter(weight, requires_grad=False)
            if module.bias is not None:
                new.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        else:
            new = nn.Embedding.from_pretrained(weight, freeze=True, padding_idx=module.padding_idx)
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, new)
    return plain.eval()


def batch_of(size: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 30000, (size, seq), generator=torch.Generator().manual_seed(size * 1000 + seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def interleaved(variants: dict[str, nn.Module], batch: dict[str, torch.Tensor], rounds: int) -> dict[str, dict]:
    """Each variant's forward times (ms), one of each in turn per round, after two warm-up rounds."""
    times = {name: [] for name in variants}
    for round_ in range(rounds + 2):
        for name, model in variants.items():
            start = time.perf_counter()
            model(**batch)
            if round_ >= 2:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: {"median_ms": statistics.median(t), "times_ms": t} for name, t in times.items()}


@torch.inference_mode()
def decode_all_ms(model: nn.Module, repeats: int = 5) -> float:
    """Median time to decode every product-quantized weight of ``model`` once."""
    layers = [m for _, m in pq_layers(model)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for module in layers:
            module.weight
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cpu = cpu_class()
    out = args.out or benchmark_path("ipq_decode")
    report = {"params": vars(args) | {"out": str(out), "centroids": CENTROIDS, "points": POINTS},
              "cpu": {"class": cpu, "model": cpu_model()}, "shapes": {}}
    for shape, build in SHAPES.items():
        torch.manual_seed(0)
        model = build().eval()
        ipq = product_quantized(model)
        variants = {"fp32": model, "ipq": ipq, "ipq_decoded_once": decoded_once(ipq)}
        report["shapes"][shape] = {
            "pq_layers": len(pq_layers(ipq)), "decode_all_ms": decode_all_ms(ipq),
            "latency": {point_name(b, s): interleaved(variants, batch_of(b, s), args.rounds) for b, s in POINTS}}
        for point, timed in report["shapes"][shape]["latency"].items():
            print(f"{shape} {point}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in timed.items())
                  + f"; decoding every weight once {report['shapes'][shape]['decode_all_ms']:.1f} ms")
    report["provenance"] = provenance(time.perf_counter() - start, data=None)
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
