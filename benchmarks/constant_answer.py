"""What does a model that gives every dev example the same answer score? The floor each task's table sits on.

    python benchmarks/constant_answer.py [--tasks sst2,cola,rte] [--out FILE]

For each task the script reads the dev split (``$QBOOK_DATA_DIR`` offline), counts its labels and scores the best
constant answer with the task's metrics (``qlib.experiments.metrics.constant_answer``): the majority class's share for
accuracy, 0 for MCC. The chapters set each score beside it, to tell a model that learned little from one that
learned nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from qlib.experiments.data import data_provenance, get_task, load_glue  # noqa: E402
from qlib.experiments.metrics import constant_answer  # noqa: E402
from qlib.experiments.results import provenance, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,cola,rte", help="comma-separated GLUE classification tasks")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/constant_answer.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tasks = {}
    infos = [get_task(name) for name in args.tasks.split(",")]
    data = data_provenance([info.file("dev") for info in infos])
    for info in infos:
        labels = load_glue(info.name, "dev")["label"]
        counts = Counter(labels)
        tasks[info.name] = {"dev examples": len(labels), "metric": info.metrics[0],
                            "label counts": {info.label_names[i]: counts[i] for i in range(info.num_labels)},
                            "constant answer": constant_answer(info.name, labels)}
        print(f"{info.name}: {tasks[info.name]}")
    write_json(args.out, {"tasks": tasks, "provenance": provenance(time.perf_counter() - start, data=data)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
