"""What does a model that gives every dev example the same answer score? The floor each task's table sits on.

    python benchmarks/constant_answer.py [--tasks sst2,cola,rte,mrpc,conll2003,squad] [--out FILE]

For each GLUE classification task the script reads the dev split (``$QBOOK_DATA_DIR`` offline), counts its labels
and scores the best constant answer with the task's metrics (``qlib.experiments.metrics.constant_answer``): the
majority class's share for accuracy, 0 for MCC. For CoNLL-03 the trivial predictor tags every word ``O`` (its
majority tag) and is scored by seqeval's entity F1; for SQuAD it answers every question with the empty string,
scored by the official v1.1 EM/F1. The chapters set each score beside it, to tell a model that learned little from
one that learned nothing (and a 2-bit DirectQ row that collapsed from one that did not).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from qlib.experiments.conll import NER_LABELS, load_conll2003  # noqa: E402
from qlib.experiments.data import data_provenance, get_task, load_glue, load_squad, squad_file  # noqa: E402
from qlib.experiments.metrics import constant_answer  # noqa: E402
from qlib.experiments.ner import entity_scores  # noqa: E402
from qlib.experiments.qa import squad_scores  # noqa: E402
from qlib.experiments.results import provenance, write_json  # noqa: E402

TRIVIAL = {"conll2003": "O for every word", "squad": "the empty answer to every question"}
"""The trivial predictor of each task that has no classes to repeat."""


def glue_floor(task: str) -> tuple[str, dict]:
    """(the dev file read, the floor of ``task``: its best constant answer and label counts)."""
    info = get_task(task)
    labels = load_glue(info.name, "dev")["label"]
    counts = Counter(labels)
    return info.file("dev"), {"dev examples": len(labels), "metric": info.metrics[0],
                              "label counts": {info.label_names[i]: counts[i] for i in range(info.num_labels)},
                              "constant answer": constant_answer(info.name, labels)}


def conll_floor() -> tuple[str, dict]:
    """(the dev file read, CoNLL-03's floor: every word tagged O, and the dev entities per type)."""
    sentences = load_conll2003("dev", source="local")
    reference = [[NER_LABELS[t] for t in tags] for tags in sentences["ner_tags"]]
    entities = Counter(tag[2:] for tags in reference for tag in tags if tag.startswith("B-"))
    scores = entity_scores([["O"] * len(tags) for tags in reference], reference)
    return "conll2003/dev.txt", {"dev examples": len(reference), "metric": "f1", "answer": TRIVIAL["conll2003"],
                                 "label counts": dict(sorted(entities.items())), "constant answer": scores}


def squad_floor() -> tuple[str, dict]:
    """(the dev file read, SQuAD's floor: the empty answer to every dev question)."""
    questions = load_squad("dev", source="local")
    scores = squad_scores(dict.fromkeys(questions["id"], ""), questions)
    return squad_file("dev"), {"dev examples": len(questions), "metric": "f1", "answer": TRIVIAL["squad"],
                      "label counts": {"questions": len(questions)}, "constant answer": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,cola,rte,mrpc,conll2003,squad",
                        help="comma-separated GLUE classification tasks, conll2003, squad")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/constant_answer.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tasks, files = {}, []
    for name in args.tasks.split(","):
        file, floor = conll_floor() if name == "conll2003" else squad_floor() if name == "squad" else glue_floor(name)
        task = get_task(name).name if name not in TRIVIAL else name
        tasks[task] = floor
        files.append(file)
        print(f"{task}: {floor}")
    write_json(args.out, {"tasks": tasks, "provenance": provenance(time.perf_counter() - start,
                                                                   data=data_provenance(files))})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
