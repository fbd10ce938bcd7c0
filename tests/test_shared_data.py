"""The official data folder (CI has it in ../shared/data via QBOOK_DATA_DIR): every file loads with the row counts,
label balances and SHA-256 that its SOURCES.md documents. Without the folder these tests skip, saying why."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from qlib.conll import load_conll2003
from qlib.data import file_sha256, load_glue, load_squad

DATA = os.environ.get("QBOOK_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "SOURCES.md").is_file(),
    reason="the official data folder is absent: set QBOOK_DATA_DIR to a folder like ../shared/data "
           "(glue/, squad/, conll2003/ and SOURCES.md) to run these checks",
)

# (rows, label counts or (min, max, mean) of STS-B's scores, sha256) as SOURCES.md gives them. Label ids are the
# loaders': RTE/QNLI entailment = 0, not_entailment = 1.
GLUE = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569},
                        "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
    ("sst2", "dev"): (872, {0: 428, 1: 444}, "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194},
                        "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3"),
    ("mrpc", "dev"): (408, {1: 279, 0: 129}, "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17"),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}, "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c"),
    ("rte", "dev"): (277, {0: 146, 1: 131}, "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb"),
    ("cola", "train"): (8551, {1: 6023, 0: 2528},
                        "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624"),
    ("cola", "dev"): (1043, {1: 721, 0: 322}, "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd"),
    ("stsb", "train"): (5749, (0.0, 5.0, 2.70), "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2"),
    ("stsb", "dev"): (1500, (0.0, 5.0, 2.36), "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59"),
    ("qnli", "dev"): (5463, {0: 2702, 1: 2761}, "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd"),
    ("wnli", "train"): (635, {1: 312, 0: 323}, "9a88e9d54b6861cc796a088e9acf4f5f65064a9ef65ae6fa7a688b28391e5c9a"),
    ("wnli", "dev"): (71, {0: 40, 1: 31}, "cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5"),
}


@pytest.mark.parametrize("task,split", list(GLUE))
def test_glue_file_loads_with_its_documented_counts(task, split):
    rows, labels, sha256 = GLUE[(task, split)]
    assert file_sha256(Path(DATA) / "glue" / task / f"{split}.tsv") == sha256
    ds = load_glue(task, split, source="local")
    assert len(ds) == rows
    if isinstance(labels, dict):
        assert dict(Counter(ds["label"])) == labels
    else:
        scores = ds["label"]
        assert (min(scores), max(scores), round(sum(scores) / len(scores), 2)) == labels
    assert all(isinstance(s, str) and s for s in ds["sentence1"])


def test_qnli_train_is_absent_and_said_so():
    with pytest.raises(FileNotFoundError, match="glue/qnli/train.tsv"):
        load_glue("qnli", "train", source="local")


# (questions, articles, paragraphs, answers, sha256 of the gzip file)
SQUAD = {
    "dev": (10570, 48, 2067, 34726, "5ef5752d50566ab538501116de1508326eefb6bf70026def7915309f30822727",
            "squad/v1.1/dev.json.gz"),
    "train": (87599, 442, 18896, 87599, "b43b4454f4a41fa00c18d9250aacc917a2630629f2ed7c732bc5bb512ea240a1",
              "squad/v1.1/train.reconstructed.json.gz"),
}


@pytest.mark.parametrize("split", list(SQUAD))
def test_squad_loads_with_its_documented_counts(split):
    questions, articles, paragraphs, answers, sha256, relative = SQUAD[split]
    assert file_sha256(Path(DATA) / relative) == sha256
    ds = load_squad(split, source="local")  # also checks every answer_start points at its answer text
    assert len(ds) == questions and len(set(ds["title"])) == articles
    assert sum(len(a["text"]) for a in ds["answers"]) == answers
    document = json.loads(gzip.decompress((Path(DATA) / relative).read_bytes()))
    assert sum(len(a["paragraphs"]) for a in document["data"]) == paragraphs
    assert all(i.startswith("recon-train-") for i in ds["id"]) == (split == "train")


# (sentences, documents, tokens, sha256)
CONLL = {
    "train": (14041, 946, 203621, "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c"),
    "dev": (3250, 216, 51362, "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e"),
    "test": (3453, 231, 46435, "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6"),
}


@pytest.mark.parametrize("split", list(CONLL))
def test_conll2003_loads_with_its_documented_counts(split):
    sentences, documents, tokens, sha256 = CONLL[split]
    assert file_sha256(Path(DATA) / "conll2003" / f"{split}.txt") == sha256
    ds = load_conll2003(split, source="local")
    assert len(ds) == sentences and len(set(ds["document"])) == documents
    assert sum(map(len, ds["tokens"])) == tokens
    names = ds.features["ner_tags"].feature.names
    for tags in ds["ner_tags"]:  # IOB2: every entity opens with B-
        assert all(not names[t].startswith("I-") or names[p][2:] == names[t][2:] for p, t in zip([0, *tags], tags))
