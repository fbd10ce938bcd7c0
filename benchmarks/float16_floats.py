"""Does a Q-BERT file with its float parameters in float16 score what the float32 one scores? Dev scores, logits, sizes.

    python benchmarks/float16_floats.py --result RESULT.json --checkpoint CKPT [--out FILE]

RESULT is a Q-BERT run's result file (its params give the model, task and quantization config) and CKPT the
bit-packed model that run kept (``run_glue(..., checkpoint_dir=...)``). The script loads CKPT, writes it again with
``save_quantized(..., float_dtype=torch.float16)`` (biases, LayerNorm and head in float16; codes, grids and
activation ranges unchanged), loads that file, and evaluates both models on the whole dev set on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from int8_agreement import logits_over  # noqa: E402  (this folder's agreement script)

from qlib import convert_bert, qbert_config  # noqa: E402
from qlib.deploy.checkpoint import checkpoint_sizes, load_quantized, save_quantized  # noqa: E402
from qlib.experiments.data import file_sha256, get_task, glue_batches, glue_provenance  # noqa: E402
from qlib.experiments.metrics import glue_metrics  # noqa: E402
from qlib.experiments.models import load_classifier  # noqa: E402
from qlib.experiments.results import provenance, read_json, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--result", type=Path, required=True, help="the Q-BERT run's result JSON")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the packed model that run kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    record = read_json(args.result)
    params = record["params"]
    if params["method"] != "qbert":
        parser.error(f"--result must be a Q-BERT run (method qbert), got method {params['method']!r}")
    out = args.out or Path(f"results/benchmarks/float16_floats-{params['task']}-{args.result.stem}.json")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = get_task(params["task"])
    config = qbert_config(params["weight_bits"], params["embedding_bits"], groups=params["groups"],
                          layer_bits=params["layer_bits"], percentile=params["percentile"])

    base, tokenizer = load_classifier(params["model"], info.num_labels)

    def fresh() -> torch.nn.Module:
        return convert_bert(copy.deepcopy(base), config)

    batches = glue_batches(info.name, tokenizer, "dev", 64, params["max_length"])
    with tempfile.TemporaryDirectory() as folder:
        as_stored = load_quantized(fresh(), args.checkpoint).eval()
        half_path = save_quantized(as_stored, Path(folder) / "float16.safetensors", float_dtype=torch.float16)
        half = load_quantized(fresh(), half_path).eval()
        sizes = {"float32": checkpoint_sizes(args.checkpoint), "float16": checkpoint_sizes(half_path)}
    logits, labels = {}, None
    for name, model in (("float32", as_stored), ("float16", half)):
        logits[name], labels = logits_over(model, batches)
    scores = {name: glue_metrics(info.name, values.argmax(-1).numpy(), labels.numpy())
              for name, values in logits.items()}
    metric = info.metrics[0]
    difference = (logits["float16"] - logits["float32"]).abs()
    report = {
        "task": info.name, "seed": params["seed"], "layer_bits": params["layer_bits"], "result": str(args.result),
        # the checkpoint by its file name and its bytes' SHA-256 (its path names only this machine's folders)
        "checkpoint": args.checkpoint.name, "checkpoint_sha256": file_sha256(args.checkpoint), "examples": len(labels),
        "metric": metric, "recorded_score": record["metrics"][metric], "scores": scores,
        "gap_points": 100 * abs(scores["float16"][metric] - scores["float32"][metric]),
        "max_abs_logit_diff": float(difference.max()), "mean_abs_logit_diff": float(difference.mean()),
        "same_prediction": float((logits["float16"].argmax(-1) == logits["float32"].argmax(-1)).float().mean()),
        "sizes_bytes": sizes,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"checkpoint": args.checkpoint.name, "out": str(out)},
        "provenance": provenance(time.perf_counter() - start, data=glue_provenance(info.name, ("dev",))),
    }
    write_json(out, report)
    print(f"{info.name} dev ({len(labels)} examples), {args.result.stem}: {metric} float32 floats "
          f"{100 * scores['float32'][metric]:.2f} (run recorded {100 * record['metrics'][metric]:.2f}), float16 floats "
          f"{100 * scores['float16'][metric]:.2f}; max |Δlogit| {report['max_abs_logit_diff']:.2e}, same prediction "
          f"{report['same_prediction']:.2%}; file w/o embedding {sizes['float32']['other']} -> "
          f"{sizes['float16']['other']} bytes")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
