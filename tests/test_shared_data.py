"""The full GLUE copies (CI has them in ../shared/data via QBOOK_DATA_DIR): counts and label balance load right."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from qlib.data import load_glue

DATA = os.environ.get("QBOOK_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "glue" / "sst2" / "train.tsv").is_file(),
    reason="full GLUE data absent: set QBOOK_DATA_DIR to a folder holding glue/<task>/{train,dev}.tsv",
)

# Rows and label counts as documented for the verified copies (SOURCES.md of the data folder).
EXPECTED = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "dev"): (872, {0: 428, 1: 444}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "dev"): (277, None),
    ("cola", "train"): (8551, {0: 2528, 1: 6023}),
    ("cola", "dev"): (1043, None),
}


@pytest.mark.parametrize("task,split", list(EXPECTED))
def test_full_split_loads_with_its_documented_counts(task, split):
    rows, labels = EXPECTED[(task, split)]
    ds = load_glue(task, split, source="local")
    assert len(ds) == rows
    if labels is not None:
        assert dict(Counter(ds["label"])) == labels
    assert all(isinstance(s, str) and s for s in ds["sentence1"][:100])
