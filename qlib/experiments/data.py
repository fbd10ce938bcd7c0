"""GLUE and SQuAD v1.1 loaders: the files as their authors ship them offline, the Hugging Face hub online.

Offline, a task is read from ``$QBOOK_DATA_DIR/glue/<task>/{train,dev}.tsv`` exactly as GLUE's
``download_glue_data.py`` writes it (see ``GLUE_FILES``): tab-separated with quoting off, CoLA without a header row,
MRPC behind a UTF-8 byte-order mark with its label first, STS-B with ten columns and a float score, RTE/QNLI with
text labels. The column layout of a ``datasets`` export (``sentence``/``sentence1``/``premise``…, ``label``, ``idx``)
is accepted too. Online the tasks come from ``nyu-mll/glue``. Every split is returned as a ``datasets.Dataset``
with columns ``sentence1`` (``sentence2``) and ``label`` (class id, or float score for STS-B).

The reader is a plain line splitter rather than ``datasets``' CSV builder: GLUE's files need quoting off, CoLA's
first row is data, and a bad row must be reported by file and line, which the CSV builder cannot do.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

DATA_DIR_ENV = "QBOOK_DATA_DIR"
SPLITS = ("train", "dev")
BOM = "\ufeff"


@dataclass(frozen=True)
class Task:
    """A GLUE task: its text columns, labels, metrics (the first is the one papers report), hub names and files.

    ``aliases`` maps a column name of the official file or of a ``datasets`` export to the canonical column
    (``sentence1``, ``sentence2``, ``label``); ``headerless`` names the columns of an official file that has no
    header row (CoLA); ``bom``: the official file starts with a UTF-8 byte-order mark (MRPC)."""

    name: str
    pair: bool
    label_names: tuple[str, ...]  # empty for regression (STS-B)
    metrics: tuple[str, ...]
    dev_split: str = "validation"
    aliases: dict[str, str] = field(default_factory=dict)
    headerless: tuple[str, ...] = ()
    bom: bool = False
    dev_file: str = "dev.tsv"

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def text_columns(self) -> tuple[str, ...]:
        return ("sentence1", "sentence2") if self.pair else ("sentence1",)

    def file(self, split: str) -> str:
        """The split's path under the data folder, e.g. ``glue/mnli/dev_matched.tsv``."""
        return f"glue/{self.name}/{self.dev_file if split == 'dev' else 'train.tsv'}"


_SINGLE = {"sentence": "sentence1"}
_NLI = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("cola", False, ("unacceptable", "acceptable"), ("mcc",), aliases=_SINGLE,
             headerless=("source", "label", "annotation", "sentence")),
        Task("sst2", False, ("negative", "positive"), ("accuracy",), aliases=_SINGLE),
        Task("mrpc", True, ("not_equivalent", "equivalent"), ("f1", "accuracy"), bom=True,
             aliases={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
        Task("stsb", True, (), ("pearson", "spearman"), aliases={"score": "label"}),
        Task("qqp", True, ("not_duplicate", "duplicate"), ("f1", "accuracy"),
             aliases={"question1": "sentence1", "question2": "sentence2", "is_duplicate": "label"}),
        Task("mnli", True, ("entailment", "neutral", "contradiction"), ("accuracy",),
             dev_split="validation_matched", dev_file="dev_matched.tsv",
             aliases={"premise": "sentence1", "hypothesis": "sentence2", "gold_label": "label"}),
        Task("qnli", True, _NLI, ("accuracy",), aliases={"question": "sentence1", "sentence": "sentence2"}),
        Task("rte", True, _NLI, ("accuracy",)),
        Task("wnli", True, ("not_entailment", "entailment"), ("accuracy",)),
    ]
}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive; ``sst-2`` and ``sst2`` both work)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASKS)} (and 'squad' via load_squad)")
    return TASKS[key]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {SPLITS}")


def data_dir(required_file: str | None = None) -> Path:
    """The offline data directory from ``$QBOOK_DATA_DIR``; raises ``FileNotFoundError`` saying what to set."""
    value = os.environ.get(DATA_DIR_ENV)
    path = Path(value) if value else None
    if path is None or not path.is_dir() or (required_file and not (path / required_file).is_file()):
        where = f"{DATA_DIR_ENV}={value!r}" if value else f"{DATA_DIR_ENV} is not set"
        wanted = f" holding {required_file}" if required_file else ""
        raise FileNotFoundError(
            f"offline data not found ({where}): set {DATA_DIR_ENV} to a folder{wanted}, laid out like "
            "glue/<task>/{train,dev}.tsv, or use source='hub' on a machine that can reach the Hugging Face hub"
        )
    return path


def _local_file(relative: str) -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) / relative if value and (Path(value) / relative).is_file() else None


def _offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _use_local(source: str, relatives: tuple[str, ...]) -> bool:
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"unknown source {source!r}; allowed: 'auto', 'local', 'hub'")
    return source == "local" or (source == "auto" and (_offline() or any(map(_local_file, relatives))))


def _tsv_rows(path: Path, bom_allowed: bool) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line of a tab-separated file with quoting off, as GLUE writes it."""
    with path.open(encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith(BOM):
                if not bom_allowed:
                    raise ValueError(f"{path}:1: starts with a UTF-8 byte-order mark, which this task's GLUE "
                                     "file does not have (only MRPC's does); save the file as plain UTF-8")
                line = line[1:]
            yield number, line.rstrip("\n").removesuffix("\r").split("\t")


def _label_parser(task: Task, path: Path):
    """A function (line, text) -> class id (or float score for STS-B) that names the file and line it rejects."""
    if not task.label_names:
        def score(number: int, text: str) -> float:
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"{path}:{number}: score {text!r} is not a finite number "
                                 f"(task {task.name!r} is a regression on 0-5)")
            return value
        return score
    ids = {name: i for i, name in enumerate(task.label_names)} | {str(i): i for i in range(task.num_labels)}

    def class_id(number: int, text: str) -> int:
        if text not in ids:
            raise ValueError(f"{path}:{number}: label {text!r} not allowed for {task.name!r}; allowed: {sorted(ids)}")
        return ids[text]
    return class_id


def read_glue_tsv(path: str | os.PathLike, task: str) -> dict[str, list]:
    """The rows of one GLUE file as columns ``sentence1`` (``sentence2``), ``label``.

    Accepts the official layout of ``task`` (``Task.aliases`` / ``Task.headerless``) and a ``datasets`` export's.
    Raises ``ValueError`` naming the file and line of a row with the wrong number of columns, an unknown label,
    a byte-order mark where GLUE has none, missing columns, or a file with no rows."""
    info, path = get_task(task), Path(path)
    needed = (*info.text_columns, "label")
    rows = _tsv_rows(path, info.bom)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: the file is empty; expected a GLUE {info.name} file")
    header = [info.aliases.get(column, column) for column in first[1]]
    if set(needed) <= set(header):
        columns, body = header, rows
    elif info.headerless:  # CoLA as GLUE ships it: the first line is already data
        columns = [info.aliases.get(column, column) for column in info.headerless]
        body = (row for row in (first, *rows))
    else:
        raise ValueError(f"{path}:1: columns {first[1]} do not give {sorted(needed)} for task {info.name!r} "
                         f"(accepted names: {sorted(set(needed) | set(info.aliases))})")
    where = [columns.index(c) for c in needed]
    parse_label = _label_parser(info, path)
    out: dict[str, list] = {c: [] for c in needed}
    for number, fields in body:
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{number}: {len(fields)} tab-separated columns, expected {len(columns)} "
                             f"({', '.join(columns)})")
        for column, index in zip(needed[:-1], where):
            out[column].append(fields[index])
        out["label"].append(parse_label(number, fields[where[-1]]))
    if not out["label"]:
        raise ValueError(f"{path}: no rows below the header; expected a GLUE {info.name} split")
    return out


def load_glue(task: str, split: str, source: str = "auto", max_examples: int | None = None,
              seed: int = 0) -> datasets.Dataset:
    """One split (``train`` or ``dev``) of a GLUE task, optionally a seeded random subset of ``max_examples``.

    ``source``: ``"local"`` ($QBOOK_DATA_DIR), ``"hub"`` (nyu-mll/glue) or ``"auto"`` (local when present).
    """
    info = get_task(task)
    _check_split(split)
    relative = info.file(split)
    if _use_local(source, (relative,)):
        columns = read_glue_tsv(data_dir(relative) / relative, info.name)
        label = datasets.Value("float32" if not info.label_names else "int64")
        features = datasets.Features({c: datasets.Value("string") for c in info.text_columns} | {"label": label})
        ds = datasets.Dataset.from_dict(columns, features=features)
    else:
        hub_split = "train" if split == "train" else info.dev_split
        ds = datasets.load_dataset("nyu-mll/glue", info.name, split=hub_split)
        ds = ds.rename_columns({k: v for k, v in info.aliases.items() if k in ds.column_names})
        ds = ds.remove_columns([c for c in ds.column_names if c not in (*info.text_columns, "label")])
    if max_examples is not None and max_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    return ds


SQUAD_FILES = {
    "dev": ("squad/v1.1/dev.json.gz", "squad/dev-v1.1.json"),
    "train": ("squad/v1.1/train.reconstructed.json.gz", "squad/train-v1.1.json"),
}
"""Where SQuAD v1.1 is looked for, first match wins. ``train.reconstructed.json.gz`` is the official train set
rebuilt from the SQuAD explorer pages: titles, contexts, questions, answer texts and their order are official, but
the ids are synthetic (``recon-train-…``) and each ``answer_start`` is the answer's first occurrence in its context
(the official offset for 95.8 % of dev answers). Train on it; cite results on the official dev file."""


def _read_json_maybe_gzip(path: Path) -> Any:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: not a complete gzip file ({error}); copy it again") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not SQuAD JSON ({error})") from error


def read_squad_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The questions of a SQuAD v1.1 file (``.json`` or ``.json.gz``): id, title, context, question, answers.

    Raises ``ValueError`` naming the file and the question of a truncated gzip, a non-SQuAD layout, or an answer
    whose ``answer_start`` does not point at its text."""
    path = Path(path)
    document = _read_json_maybe_gzip(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError(f"{path}: expected SQuAD JSON {{'data': [...], 'version': '1.1'}}")
    rows = []
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start, text = answer["answer_start"], answer["text"]
                    if context[start:start + len(text)] != text:
                        raise ValueError(f"{path}: question {qa['id']!r}: answer {text!r} is not at "
                                         f"answer_start={start} of its context")
                rows.append({"id": qa["id"], "title": article["title"], "context": context,
                             "question": qa["question"],
                             "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}})
    return rows


def load_squad(split: str, source: str = "auto") -> datasets.Dataset:
    """SQuAD v1.1 (``train`` or ``dev``) with columns id, title, context, question, answers{text, answer_start}.

    Offline it reads the first of ``SQUAD_FILES[split]`` under ``$QBOOK_DATA_DIR``; online ``rajpurkar/squad``."""
    _check_split(split)
    candidates = SQUAD_FILES[split]
    if _use_local(source, candidates):
        found = next(filter(None, map(_local_file, candidates)), None)
        path = found or data_dir(" or ".join(candidates)) / candidates[0]
        return datasets.Dataset.from_list(read_squad_json(path))
    return datasets.load_dataset("rajpurkar/squad", split="train" if split == "train" else "validation")


OFFICIAL_SHA256 = {
    "glue/sst2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "glue/sst2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "glue/mrpc/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "glue/mrpc/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "glue/rte/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    "glue/rte/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    "glue/cola/train.tsv": "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    "glue/cola/dev.tsv": "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    "glue/stsb/train.tsv": "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    "glue/stsb/dev.tsv": "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    "glue/qnli/dev.tsv": "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    "glue/wnli/train.tsv": "9a88e9d54b6861cc796a088e9acf4f5f65064a9ef65ae6fa7a688b28391e5c9a",
    "glue/wnli/dev.tsv": "cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5",
    "squad/v1.1/dev.json.gz": "5ef5752d50566ab538501116de1508326eefb6bf70026def7915309f30822727",
    "squad/v1.1/train.reconstructed.json.gz": "b43b4454f4a41fa00c18d9250aacc917a2630629f2ed7c732bc5bb512ea240a1",
    "conll2003/train.txt": "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c",
    "conll2003/dev.txt": "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e",
    "conll2003/test.txt": "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6",
}
"""The SHA-256 of the official files (GLUE's download byte for byte, SQuAD's official dev file gzip-compressed and
its reconstructed train file, CoNLL-2003 as shipped), as the data folder's ``SOURCES.md`` pins them: a result whose
recorded hashes all appear here read the official data."""


def read_official_data(data: dict[str, Any] | None) -> bool:
    """Whether a result's ``provenance["data"]`` records local files that are all the official bytes."""
    files = (data or {}).get("files") or {}
    return bool(files) and all(OFFICIAL_SHA256.get(name) == sha for name, sha in files.items())


def read_same_data(data: dict[str, Any] | None, other: dict[str, Any] | None) -> bool:
    """Whether two results' ``provenance["data"]`` say they read the same data: both the hub's, or local files that
    share at least one name and agree on the SHA-256 of every name they share (a run that read the dev file alone
    matches its Baseline that read train and dev). ``None`` (a result from the earlier, altered copy) matches
    nothing."""
    if data is None or other is None or data.get("source") != other.get("source"):
        return False
    if data.get("source") == "hub":
        return True
    files, others = data.get("files") or {}, other.get("files") or {}
    shared = files.keys() & others.keys()
    return bool(shared) and all(files[name] == others[name] for name in shared)


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (cached per path, size and modification time)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def data_provenance(relatives: tuple[str, ...] | list[str], source: str = "auto") -> dict[str, Any]:
    """What a run read: ``{"source": "local", "folder": <the data folder's name>, "files": {relative path: sha256}}``
    for the files under ``$QBOOK_DATA_DIR`` (the name only: a path of this machine means nothing on another, and the
    hashes identify the files), or ``{"source": "hub", "files": {}}`` when they come from the hub."""
    if not _use_local(source, tuple(relatives)):
        return {"source": "hub", "folder": None, "files": {}}
    folder = data_dir()
    return {"source": "local", "folder": folder.resolve().name,
            "files": {relative: file_sha256(data_dir(relative) / relative) for relative in sorted(relatives)}}


def glue_provenance(task: str, splits: tuple[str, ...] = SPLITS, source: str = "auto") -> dict[str, Any]:
    """``data_provenance`` of a GLUE task's split files."""
    info = get_task(task)
    return data_provenance([info.file(s) for s in splits], source)


def squad_file(split: str) -> str:
    """The SQuAD file of ``split`` that ``load_squad`` reads offline, relative to the data folder: the first of
    ``SQUAD_FILES[split]`` present, else the first of them (which a read then names as missing)."""
    _check_split(split)
    return next((c for c in SQUAD_FILES[split] if _local_file(c)), SQUAD_FILES[split][0])


def squad_provenance(source: str = "auto") -> dict[str, Any]:
    """``data_provenance`` of the SQuAD files ``load_squad`` reads (``squad_file`` of each split)."""
    return data_provenance([squad_file(split) for split in SPLITS], source)


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: str,
             max_length: int = 128) -> datasets.Dataset:
    """Token ids (unpadded; batches are padded dynamically) and ``labels`` for a GLUE split."""
    columns = get_task(task).text_columns

    def encode(batch: dict) -> dict:
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    encoded = ds.map(encode, batched=True, remove_columns=list(columns))
    return encoded.rename_column("label", "labels")


def loader(encoded: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
           seed: int = 0, group_by_length: bool = False, collator: Callable[[list], dict] | None = None
           ) -> DataLoader:
    """Batches padded to their own longest sequence (dynamic padding), by ``collator`` (default
    ``DataCollatorWithPadding``).

    Args:
        shuffle: a new random order each epoch, drawn from a generator seeded by ``seed`` (the loader's
            ``generator``, which a training snapshot keeps); False: the dataset's order.
        group_by_length: with ``shuffle``, batches of similar lengths (``transformers``' ``LengthGroupedSampler``:
            the random order sorted by length within runs of 50 batches, the longest batch first), from the same
            generator.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if shuffle and group_by_length:
        sampler = LengthGroupedSampler(batch_size, lengths=[len(ids) for ids in encoded["input_ids"]],
                                       generator=generator)
    return DataLoader(encoded.with_format("torch"), batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, generator=generator,
                      collate_fn=collator or DataCollatorWithPadding(tokenizer))


def glue_batches(task: str, tokenizer: PreTrainedTokenizerBase, split: str, batch_size: int, max_length: int = 128,
                 max_examples: int | None = None, seed: int = 0, source: str = "auto",
                 shuffle: bool = False, group_by_length: bool = False) -> DataLoader:
    """Load, tokenize and batch one GLUE split in one call (the pipeline every experiment starts with); ``shuffle``
    and ``group_by_length`` as ``loader``'s."""
    encoded = tokenize(load_glue(task, split, source, max_examples, seed), tokenizer, task, max_length)
    return loader(encoded, tokenizer, batch_size, shuffle=shuffle, seed=seed, group_by_length=group_by_length)
