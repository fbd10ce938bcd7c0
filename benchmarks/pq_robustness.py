"""Does training with PQ noise make a model tolerate product quantization, before any fine-tuning repairs it?

    python benchmarks/pq_robustness.py --checkpoint CKPT [--task sst2] [--seed 0] [--out FILE]

Quant-Noise's claim (Fan et al., 2021, sec. 4) is that training with noise, W̃ = W + M ⊙ (φ_PQ(W) − W) with a random
share p of blocks quantized, leaves a model that loses less when every block is then quantized. The protocol's iPQ
rows cannot show that on their own: each iPQ stage fine-tunes after quantizing (FFNs, embeddings, attention), which
repairs what quantization broke, and the run with noise trains one epoch more than the run without. This benchmark
takes the FP32 Baseline ``CKPT`` (the model both iPQ rows of its seed start from) and measures three arms on the
task's whole dev set:

* ``baseline``: the checkpoint as it is (its 8-bit input ranges set on ``CALIBRATION_BATCHES`` training batches);
* ``trained again without noise``: the protocol's training once more, without noise (the run with noise's extra
  training, without its noise);
* ``trained again with PQ noise``: that training with PQ noise at ``--noise-rate`` (``qlib.bert.pq_noise``, as the
  iPQ + int8 + noise row trains before its stages: the same data order, its own dropout draws).

Every model has iPQ + int8's 8-bit input grids (``RunSpec.quant_config``), as the iPQ rows do.

For each arm: the score with float weights (key ``float``), then the score after each of iPQ's stages is
product-quantized in turn (``qlib.bert.pq_modules.product_quantize``, iPQ + int8's centroids and k-means seeds) with
**no** fine-tuning in between; and the label of the protocol's iPQ row that starts from the same model (the baseline:
iPQ + int8; trained with noise: iPQ + int8 + noise), whose score after its stages' fine-tuning the chapter sets beside
it. Accuracy only, no timing; the training order, the k-means draws and the noise masks follow ``--seed``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from qlib.bert.convert import calibrate, convert_bert, find_bert  # noqa: E402
from qlib.bert.pq_modules import IPQ_STAGES, product_quantize  # noqa: E402
from qlib.bert.pq_noise import add_pq_noise, remove_pq_noise  # noqa: E402
from qlib.deploy.checkpoint import load_float  # noqa: E402
from qlib.experiments.data import file_sha256  # noqa: E402
from qlib.experiments.experiment import protocol_for  # noqa: E402
from qlib.experiments.protocol import (  # noqa: E402
    BASELINE_ARM,
    IPQ_CENTROIDS,
    IPQ_NOISE_RATE,
    ROBUSTNESS_ARMS,
    WITH_NOISE_ARM,
)
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.spec import DEFAULT_MODEL, RunSpec, TrainingProtocol  # noqa: E402
from qlib.experiments.tasks import get_run_task  # noqa: E402
from qlib.experiments.train import finetune, set_seed  # noqa: E402

CALIBRATION_BATCHES = 32
"""Training batches that set the baseline arm's 8-bit input ranges (its weights are not trained)."""


def quantized_in_stages(net: torch.nn.Module, spec: RunSpec, score: Any) -> dict[str, float]:
    """``net``'s score (``score(net)``, the main metric in percent) with float weights (key ``float``), then after each
    of ``IPQ_STAGES`` (keyed by the stage) is product-quantized in turn, on top of the stages before it, with ``spec``'s
    centroids, centroid bits and seed, nothing trained in between. Quantizes ``net`` in place."""
    scores = {"float": score(net)}
    for stage in IPQ_STAGES:
        product_quantize(find_bert(net), stage, spec.centroids, centroid_bits=spec.centroid_bits, seed=spec.seed)
        scores[stage] = score(net)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the task's FP32 Baseline of --seed")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seed", type=int, default=0, help="the Baseline's seed: data order, k-means and noise draws")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the architecture the checkpoint fits")
    parser.add_argument("--noise-rate", type=float, default=IPQ_NOISE_RATE)
    parser.add_argument("--centroids", type=int, default=IPQ_CENTROIDS, help="k per layer, as the iPQ rows'")
    parser.add_argument("--max-train-examples", type=int, default=None, help="None: the protocol's (all of them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.noise_rate < 1:
        parser.error(f"--noise-rate must lie strictly between 0 and 1 (a share of blocks), got {args.noise_rate}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file: give the task's FP32 Baseline model")
    out = args.out or benchmark_path(f"pq_robustness-{args.task}-seed{args.seed}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    task = get_run_task(args.task)
    protocol = TrainingProtocol(**protocol_for(task.name) | {"model": args.model,
                                                              "max_train_examples": args.max_train_examples})
    # the iPQ + int8 + noise row of this seed, its checkpoint named by file (a path names only this machine's folders)
    spec = RunSpec(task.name, "ipq", args.seed, centroids=args.centroids, centroid_bits=8, noise_rate=args.noise_rate,
                   init_from=args.checkpoint.name, protocol=protocol)
    base, tokenizer = task.load(protocol.model)
    load_float(base, args.checkpoint)
    convert_bert(base, spec.quant_config())  # iPQ + int8: every Linear's input on its 8-bit EMA grid, as the rows'
    dev = task.eval_data(tokenizer, protocol, args.seed)
    metric = task.metrics[0]

    def score(net: torch.nn.Module) -> float:
        return 100 * task.score(net.eval(), dev)[0][metric]

    arms, training = {}, {}
    for arm in ROBUSTNESS_ARMS:
        net = copy.deepcopy(base)
        set_seed(args.seed)
        batches = task.train_batches(tokenizer, protocol, args.seed)  # each arm: the seed's data order from the start
        if arm == BASELINE_ARM:  # the input ranges the first steps of the rows' training set, no weight moved
            calibrate(net, islice(batches, CALIBRATION_BATCHES))
        else:
            if arm == WITH_NOISE_ARM:
                add_pq_noise(find_bert(net), spec.noise_rate, spec.centroids, spec.centroid_bits, seed=spec.seed)
            training[arm] = finetune(net, batches, protocol.epochs, protocol.lr, progress=False)
            remove_pq_noise(find_bert(net))
        arms[arm] = quantized_in_stages(net, spec, score)
        print(f"{arm}: " + ", ".join(f"{name} {value:.2f}" for name, value in arms[arm].items()), flush=True)
    ipq_rows = {BASELINE_ARM: spec.with_(noise_rate=1.0).label, WITH_NOISE_ARM: spec.label}
    report = {
        "task": task.name, "seed": args.seed, "metric": metric, "checkpoint": args.checkpoint.name,
        "checkpoint_sha256": file_sha256(args.checkpoint), "spec": spec.to_dict(), "arms": list(ROBUSTNESS_ARMS),
        "stages": list(IPQ_STAGES), "scores": arms, "ipq_rows": ipq_rows, "training": training,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"checkpoint": args.checkpoint.name, "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=task.provenance(protocol.source)),
    }
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
