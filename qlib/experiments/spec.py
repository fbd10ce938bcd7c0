"""A run's identity: one frozen ``RunSpec`` (what is trained and how it is quantized) and its ``TrainingProtocol``.

Everything that names a run goes through here: its result label and path (``label``, ``result_path``), the
quantization its model is evaluated with (``quant_config``), the paper it reproduces (``paper``), and the way back
from a result file or a label (``from_record``, ``from_label``). No other module builds or parses a label.

Methods:

* ``fp32``: fine-tune in float;
* ``qat``: Q8BERT's quantization-aware training (8-bit symmetric, EMA input ranges; ``ema_decay`` ablates the EMA;
  ``weight_bits=7`` trains 7-bit weights, which AVX2's int8 kernels multiply exactly);
* ``qbert``: Q-BERT's QAT (asymmetric weights at ``weight_bits``, embedding at ``embedding_bits``, ``groups``,
  per-layer ``layer_bits``, ``percentile`` clipping; ``noise_rate`` < 1 is Quant-Noise, on blocks of ``noise_block``
  inputs; ``ternary`` puts TernaryBERT's ternary weights, TWN, in place of the 2-bit grid: ``qlib.core.ternary``);
* ``ipq``: Quant-Noise's iterative product quantization of a trained FP32 model (``init_from``): FFNs, then
  embeddings, then attention are product-quantized (``centroids`` per layer, fairseq's block sizes), each stage
  followed by ``protocol.epochs`` of fine-tuning of what is left float and of the codebooks; ``centroid_bits=8``
  is iPQ + int8 (8-bit centroids, and every Linear's input on its 8-bit EMA grid, as in the paper); ``noise_rate``
  < 1 first fine-tunes the float model for ``protocol.epochs`` with PQ noise at that rate (``qlib.bert.pq_noise``),
  as the paper trains with Quant-Noise before iPQ;
* ``dq`` and ``directq``: post-training rows, evaluated on an ``fp32`` run's trained weights with no further
  training (Q8BERT's DQ column; Q-BERT's DirectQ at ``weight_bits``). ``trained_spec`` is that ``fp32`` run.

Labels (the names result files start with) are unchanged from the first results: ``fp32``, ``dq``,
``directq-w4-p99.9``, ``qat``, ``qat-ema0.99``, ``qbert-w2e8-g12-p99.9-mp2-3-qn0.5-ft``, ``ipq-k256-int8-ft``;
``-qn0.5-b4`` is noise on blocks of 4 inputs (8 unless it says), ``ipq-k256-int8-qn0.2-ft`` iPQ after PQ noise at 0.2;
``qat-w7`` has 7-bit weights; ``-int`` marks integer GELU, softmax and LayerNorm (``qat-int``), ``-kd`` / ``-kdh``
distillation from the FP32 model (``qat-kd-ft``), ``-twn`` ternary weights (``qbert-w2e8-twn-kdh-ft``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from qlib.bert.config import BertQuantConfig, dynamic_config, q8bert_config, qbert_config
from qlib.bert.pq_modules import IPQ_STAGES
from qlib.common.checks import check_bits
from qlib.core.observers import Q8BERT_EMA_DECAY
from qlib.core.ternary import TernarySpec
from qlib.experiments.distill import MODES as DISTILLATION_MODES
from qlib.experiments.models import DEFAULT_MODEL
from qlib.experiments.tasks import get_run_task

TRAINED_METHODS = ("fp32", "qat", "qbert", "ipq")
POST_TRAINING_METHODS = ("dq", "directq")
METHODS = TRAINED_METHODS + POST_TRAINING_METHODS
QAT_WEIGHT_BITS = (8, 7)
"""``qat``'s weight widths: Q8BERT's 8, and 7 for CPUs whose int8 kernels saturate with two 8-bit operands (AVX2
without VNNI), which then run the trained model's own arithmetic (``qlib.bert.config.q8bert_config``)."""
SOURCES = ("auto", "local", "hub")
FROM_CHECKPOINT = "fp32"
"""The ``init_from`` of a spec read back from a label, which says (``-ft``) that the run started from an FP32
checkpoint, but not from which file."""


@dataclass(frozen=True)
class TrainingProtocol:
    """How a run fine-tunes and evaluates, whatever its method: the model, the schedule and the data.

    Args:
        model: a BERT name or path (``DEFAULT_MODEL``: the offline packaged model).
        epochs: passes over the training data.
        lr: AdamW's peak learning rate (linear warm-up over 10 % of the steps, then linear decay; weight decay 0.01).
        batch_size: training examples a step.
        max_length: the longest input in tokens (longer ones are cut, or windowed for QA).
        doc_stride: how many tokens consecutive windows of a long SQuAD context share (QA tasks only).
        max_train_examples, max_eval_examples: a fixed random subset of the splits (None: all of them).
        source: where the data comes from (``auto``, ``local`` files, the ``hub``).
        group_by_length: draw training batches of similar lengths (``transformers``' ``LengthGroupedSampler``, what
            its Trainer's ``group_by_length`` does: a seeded random order, sorted by length within runs of 50
            batches), each padded to its own longest input; False: uniformly random batches, which on a task of
            short, uneven sentences (SST-2) are mostly padding (``benchmarks/batching.py`` measures both).
    """

    model: str = DEFAULT_MODEL
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    doc_stride: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    source: str = "auto"
    group_by_length: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "doc_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; allowed: {SOURCES}")
        if not isinstance(self.group_by_length, bool):
            raise ValueError(f"group_by_length must be True or False, got {self.group_by_length!r}")

    @classmethod
    def recorded(cls, data: Mapping[str, Any]) -> TrainingProtocol:
        """The protocol a result recorded (its fields; others ignored). A record written before the protocol grouped
        batches by length has no ``group_by_length``: its run trained on random batches."""
        names = {f.name for f in fields(cls)}
        return cls(**{"group_by_length": False} | {k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RunSpec:
    """One run: task, method, seed, the method's quantization knobs, and its training protocol.

    Args:
        task: a GLUE task, ``squad`` or ``conll2003`` (``get_run_task`` normalises ``SST-2`` to ``sst2``).
        method: one of ``METHODS`` (see the module docstring).
        seed: the seed of the data order, the new head and dropout.
        weight_bits: encoder weights' bits (``qbert``, ``directq``; 8 for the others).
        embedding_bits: the embedding tables' bits (``qbert``; 8 for the others).
        groups: Q-BERT's G groups of rows per weight range, ``"row"`` for one per row, None per tensor.
        layer_bits: per-layer weight bits for mixed precision (``{"encoder.layer.0": 3, ...}``; ``qbert`` only).
        percentile: clip each weight group's range to its [100 - p, p] percentiles (``qbert``, ``directq``).
        ema_decay: the input ranges' EMA decay (``qat`` only; None, or Q8BERT's 0.9999, which is stored as None).
        noise_rate: Quant-Noise's p, the fraction of weight blocks quantized per step (``qbert``: 1 is plain QAT;
            ``ipq``: < 1 trains with PQ noise before the iPQ stages).
        noise_block: inputs per noise block (``qbert`` with ``noise_rate`` < 1; ``ipq``'s blocks are its PQ blocks).
        integer_nonlinearities: GELU, softmax and LayerNorm in integer arithmetic (I-BERT; ``qat``, ``qbert``).
        distillation: learn from the FP32 model ``init_from`` as teacher (``qlib.experiments.distill``): ``logits`` or
            ``hidden`` (logits, hidden states and attention maps, as TernaryBERT); ``qat``, ``qbert``.
        init_from: an FP32 checkpoint to start from instead of the pretrained weights (trained methods; ``ipq``
            needs one).
        centroids: k, iPQ's centroids per layer (``ipq``; 2..256).
        centroid_bits: 8 for iPQ + int8 (``ipq``), None for float centroids and inputs.
        ternary: TWN's ternary weights (TernaryBERT's quantizer, ``qlib.core.ternary.TernarySpec``: one threshold
            and scale per group, per matrix when ``groups`` is None) in place of Q-BERT's grid (``qbert`` at
            ``weight_bits=2``, the bits its codes take; no clipping percentile, no mixed precision).
        protocol: the ``TrainingProtocol``.
    """

    task: str
    method: str = "fp32"
    seed: int = 0
    weight_bits: int = 8
    embedding_bits: int = 8
    groups: int | str | None = None
    layer_bits: Mapping[str, int] = field(default_factory=dict)
    percentile: float | None = None
    ema_decay: float | None = None
    noise_rate: float = 1.0
    noise_block: int = 8
    integer_nonlinearities: bool = False
    distillation: str | None = None
    init_from: str | None = None
    centroids: int = 256
    centroid_bits: int | None = None
    ternary: bool = False
    protocol: TrainingProtocol = field(default_factory=TrainingProtocol)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalised once here, so equal runs compare (and hash) equal
        set_(self, "task", get_run_task(self.task).name)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; allowed: {METHODS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_bits(self.weight_bits)
        check_bits(self.embedding_bits)
        set_(self, "layer_bits", _FrozenBits(self.layer_bits or {}))
        for bits in self.layer_bits.values():
            check_bits(bits)
        if not (self.groups is None or self.groups == "row"
                or isinstance(self.groups, int) and not isinstance(self.groups, bool) and self.groups >= 1):
            raise ValueError(f"groups must be a positive integer G, 'row' or None; got {self.groups!r}")
        if self.percentile is not None:
            set_(self, "percentile", float(self.percentile))
            if not 50.0 < self.percentile <= 100.0:
                raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if not 0.0 < float(self.noise_rate) <= 1.0:
            raise ValueError(f"noise_rate must be in (0, 1], got {self.noise_rate!r}")
        set_(self, "noise_rate", float(self.noise_rate))
        if isinstance(self.noise_block, bool) or not isinstance(self.noise_block, int) or self.noise_block < 1:
            raise ValueError(f"noise_block must be a positive integer, got {self.noise_block!r}")
        if self.noise_block != 8 and self.noise_rate == 1.0:
            raise ValueError(f"noise_block={self.noise_block} needs Quant-Noise (noise_rate < 1): at p = 1 every "
                             "block is quantized")
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.ema_decay == Q8BERT_EMA_DECAY:  # Q8BERT's own decay is the default: the same run
            set_(self, "ema_decay", None)
        if not isinstance(self.integer_nonlinearities, bool):
            raise ValueError(f"integer_nonlinearities must be True or False, got {self.integer_nonlinearities!r}")
        if self.init_from is not None:
            set_(self, "init_from", str(self.init_from))
        if isinstance(self.centroids, bool) or not isinstance(self.centroids, int) or not 2 <= self.centroids <= 256:
            raise ValueError(f"centroids must be an integer k in 2..256, got {self.centroids!r}")
        if self.centroid_bits not in (None, 8):
            raise ValueError(f"centroid_bits must be 8 (iPQ + int8) or None, got {self.centroid_bits!r}")
        if not isinstance(self.ternary, bool):
            raise ValueError(f"ternary must be True or False, got {self.ternary!r}")
        if isinstance(self.protocol, Mapping):
            set_(self, "protocol", TrainingProtocol(**self.protocol))
        self._check_knobs()

    def _check_knobs(self) -> None:
        """Refuse a knob its method does not have, naming both (a run is never labelled as something it is not)."""
        has = {"weight_bits": ("qbert", "directq", "qat"), "embedding_bits": ("qbert",), "groups": ("qbert", "directq"),
               "layer_bits": ("qbert",), "percentile": ("qbert", "directq"), "ema_decay": ("qat",),
               "noise_rate": ("qbert", "ipq"), "noise_block": ("qbert",), "integer_nonlinearities": ("qat", "qbert"),
               "distillation": ("qat", "qbert"), "init_from": TRAINED_METHODS, "centroids": ("ipq",),
               "centroid_bits": ("ipq",), "ternary": ("qbert",)}
        unset = {"weight_bits": 8, "embedding_bits": 8, "groups": None, "layer_bits": {}, "percentile": None,
                 "ema_decay": None, "noise_rate": 1.0, "noise_block": 8, "integer_nonlinearities": False,
                 "distillation": None, "init_from": None, "centroids": 256, "centroid_bits": None, "ternary": False}
        for knob, methods in has.items():
            if self.method not in methods and getattr(self, knob) != unset[knob]:
                raise ValueError(f"{knob}={getattr(self, knob)!r} is not a knob of method {self.method!r}; "
                                 f"it is for {', '.join(methods)}")
        if self.ternary:
            clashes = {"weight_bits": self.weight_bits != 2, "percentile": self.percentile is not None,
                       "layer_bits": bool(self.layer_bits), "groups": self.groups == "row"}
            for knob, clash in clashes.items():
                if clash:
                    raise ValueError(f"{knob}={getattr(self, knob)!r} does not go with ternary=True: ternary weights "
                                     "take weight_bits=2, no percentile, no layer_bits, groups G or None")
        if self.method == "qat" and self.weight_bits not in QAT_WEIGHT_BITS:
            raise ValueError(f"weight_bits={self.weight_bits!r} is not one of qat's {QAT_WEIGHT_BITS}: Q8BERT's 8, "
                             "or 7 for the int8 kernels of CPUs without VNNI (AVX2)")
        if self.method == "ipq" and self.init_from is None:
            raise ValueError("ipq quantizes a trained model: give init_from, the task's FP32 checkpoint")
        if self.distillation is not None:
            if self.distillation not in DISTILLATION_MODES:
                raise ValueError(f"unknown distillation {self.distillation!r}; allowed: {tuple(DISTILLATION_MODES)}")
            if self.init_from is None:
                raise ValueError("distillation needs its teacher: init_from, the task's FP32 model (the student "
                                 "starts from it too)")

    # --- identity ---------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The name the run's result file starts with: ``fp32``, ``dq``, ``directq-w3-p99.9``, ``qat``,
        ``qat-ema0.99``, ``qat-w7`` (7-bit weights), ``qbert-w3e8``, ``qbert-w3e8-per-row``, ``qbert-w2e8-g12-mp2-3``
        (mixed precision, its bit widths), ``qbert-w2e8-g12-p99.9-qn0.5-ft`` (clipped, Quant-Noise at 0.5, from an
        FP32 checkpoint; ``-qn0.5-b4`` on blocks of 4 inputs), ``qbert-w2e8-twn-ft`` (ternary weights, TWN),
        ``ipq-k256-int8-qn0.2-ft`` (iPQ after PQ noise at 0.2); ``-ft`` marks any trained run that starts from an
        FP32 checkpoint (``init_from``)."""
        suffix = ({None: "", "logits": "-kd", "hidden": "-kdh"}[self.distillation]
                  + ("-int" if self.integer_nonlinearities else "") + ("-ft" if self.init_from is not None else ""))
        if self.method == "dq":
            return "dq"
        if self.method == "fp32":
            return f"fp32{suffix}"
        if self.method == "ipq":
            return f"ipq-k{self.centroids}" + ("-int8" if self.centroid_bits else "") + self._noise + suffix
        if self.method == "qat":
            return ("qat" + (f"-w{self.weight_bits}" if self.weight_bits != 8 else "")
                    + (f"-ema{self.ema_decay:g}" if self.ema_decay is not None else "") + suffix)
        clipping = f"-p{self.percentile:g}" if self.percentile is not None else ""
        if self.method == "directq":
            return f"directq-w{self.weight_bits}{clipping}"
        grouping = "-per-row" if self.groups == "row" else f"-g{self.groups}" if self.groups else ""
        mixed = ("-mp" + "-".join(map(str, sorted({self.weight_bits, *self.layer_bits.values()})))
                 if self.layer_bits else "")
        ternary = "-twn" if self.ternary else ""
        return (f"qbert-w{self.weight_bits}e{self.embedding_bits}{grouping}{ternary}{clipping}{mixed}{self._noise}"
                f"{suffix}")

    @property
    def _noise(self) -> str:
        """The label's Quant-Noise part: ``-qn<p>`` and, for blocks other than 8 inputs, ``-b<block>``."""
        if self.noise_rate == 1.0:
            return ""
        return f"-qn{self.noise_rate:g}" + (f"-b{self.noise_block}" if self.noise_block != 8 else "")

    def result_path(self, results_dir: str | Path) -> Path:
        """``<results_dir>/<task>/<label>-seed<seed>.json``: where the run's result file is written."""
        return Path(results_dir) / self.task / f"{self.label}-seed{self.seed}.json"

    @property
    def is_post_training(self) -> bool:
        """Whether the row is evaluated on an ``fp32`` run's weights with no training of its own."""
        return self.method in POST_TRAINING_METHODS

    @property
    def passes(self) -> int:
        """Passes over the training data the run makes: the protocol's epochs; for ``ipq``, that many per stage of
        ``IPQ_STAGES`` (and once more first with PQ noise); 0 for a post-training row."""
        if self.is_post_training:
            return 0
        if self.method == "ipq":
            return self.protocol.epochs * (len(IPQ_STAGES) + (self.noise_rate < 1.0))
        return self.protocol.epochs

    @property
    def trained_spec(self) -> RunSpec:
        """The run that trains this row's weights: itself, or for a post-training row its ``fp32`` run."""
        if not self.is_post_training:
            return self
        return RunSpec(self.task, "fp32", self.seed, protocol=self.protocol)

    @property
    def paper(self) -> str:
        """The paper the row reproduces: one of ``PAPERS``."""
        if self.method == "qbert":
            if self.ternary:
                return "TernaryBERT (TWN)"
            return "Quant-Noise" if self.noise_rate < 1 else "Q-BERT_MP" if self.layer_bits else "Q-BERT"
        if self.method == "qat" and self.integer_nonlinearities:
            return "I-BERT (integer-only)"
        return {"fp32": "FP32", "ipq": "Quant-Noise (iPQ)", "dq": "Q8BERT (DQ)", "qat": "Q8BERT (QAT)",
                "directq": "Q-BERT (DirectQ)"}[self.method]

    def quant_config(self) -> BertQuantConfig | None:
        """The quantization the run's model is trained and evaluated with (None: FP32).

        ``qat``: Q8BERT's (symmetric per-tensor 8-bit weights and inputs, EMA ranges); ``dq``: the same grids with
        input ranges per batch; ``qbert``: Q-BERT's asymmetric weights with its groups, bits, clipping and noise;
        ``directq``: Q-BERT's weight grids with ranges per batch for the inputs, no fine-tuning (``ternary``: TWN's
        ternary weights instead of the grid, everything else as Q-BERT's); ``ipq``: Q8BERT's
        8-bit grids for iPQ + int8 (the product quantization itself comes in stages, ``qlib.bert.pq_modules``), else
        None."""
        if self.method == "qat":
            config = q8bert_config(8, Q8BERT_EMA_DECAY if self.ema_decay is None else self.ema_decay,
                                   weight_bits=self.weight_bits)
            return replace(config, integer_nonlinearities=self.integer_nonlinearities)
        if self.method == "dq":
            return dynamic_config(8)
        if self.method == "ipq":
            return q8bert_config(8) if self.centroid_bits else None
        if self.method == "directq":
            return qbert_config(self.weight_bits, groups=self.groups, observer="dynamic", percentile=self.percentile)
        if self.method == "qbert":
            config = qbert_config(self.weight_bits, self.embedding_bits, groups=self.groups,
                                  layer_bits=dict(self.layer_bits) or None, percentile=self.percentile,
                                  noise_rate=self.noise_rate, noise_block=self.noise_block)
            if self.ternary:
                config = replace(config, default=replace(config.default, weight=TernarySpec(self.groups or 1)))
            return replace(config, integer_nonlinearities=self.integer_nonlinearities)
        return None

    def with_(self, **changes: Any) -> RunSpec:
        """A copy with ``changes`` (fields of the spec or of its protocol), checked like a new spec."""
        protocol_fields = {f.name for f in fields(TrainingProtocol)}
        protocol_changes = {k: changes.pop(k) for k in list(changes) if k in protocol_fields}
        return replace(self, **changes, protocol=replace(self.protocol, **protocol_changes))

    # --- to and from files ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (``from_dict`` reads it back equal)."""
        data = asdict(self)
        data["layer_bits"] = dict(self.layer_bits)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec ``to_dict`` wrote; an unknown field is refused, naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RunSpec field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_label(cls, label: str, task: str, seed: int = 0, **known: Any) -> RunSpec:
        """The spec a result label names, for ``task`` and ``seed``; ``known`` gives what a label does not hold
        (``layer_bits`` of a mixed-precision row, ``groups`` of a DirectQ row, ``init_from``'s file, ``protocol``).
        Raises ``ValueError`` naming the label when it is not one ``label`` makes, or when ``known`` contradicts it."""
        number = r"\d+(?:\.\d+)?(?:e-?\d+)?"
        patterns = {
            "fp32": "fp32(?P<ft>-ft)?", "dq": "dq", "directq": rf"directq-w(?P<w>\d)(?:-p(?P<p>{number}))?",
            "qat": rf"qat(?:-w(?P<w>\d))?(?:-ema(?P<ema>{number}))?(?P<kd>-kdh?)?(?P<int>-int)?(?P<ft>-ft)?",
            "ipq": rf"ipq-k(?P<k>\d+)(?P<c8>-int8)?(?:-qn(?P<qn>{number}))?(?P<ft>-ft)",
            "qbert": rf"qbert-w(?P<w>\d)e(?P<e>\d)(?P<g>-per-row|-g\d+)?(?P<twn>-twn)?(?:-p(?P<p>{number}))?"
                     rf"(?P<mp>-mp[\d-]+)?(?:-qn(?P<qn>{number})(?:-b(?P<nb>\d+))?)?(?P<kd>-kdh?)?(?P<int>-int)?(?P<ft>-ft)?",
        }
        for method, pattern in patterns.items():
            match = re.fullmatch(pattern, label)
            if match:
                break
        else:
            raise ValueError(f"unknown result label {label!r}; allowed: fp32, dq, directq-w<b>[-p<p>], "
                             "qat[-w7][-ema<d>][-kd|-kdh][-int][-ft], ipq-k<k>[-int8][-qn<p>]-ft, "
                             "qbert-w<b>e<b>[-g<G>|-per-row][-twn][-p<p>][-mp<bits>][-qn<p>[-b<d>]][-kd|-kdh][-int][-ft]")
        parsed: dict[str, Any] = {}
        found = match.groupdict()
        if method == "directq":
            parsed = {"weight_bits": int(found["w"]), "percentile": float(found["p"]) if found["p"] else None}
        elif method == "qat":
            parsed = {"ema_decay": float(found["ema"]) if found["ema"] else None,
                      "weight_bits": int(found["w"]) if found["w"] else 8}
        elif method == "ipq":
            parsed = {"centroids": int(found["k"]), "centroid_bits": 8 if found["c8"] else None,
                      "noise_rate": float(found["qn"]) if found["qn"] else 1.0}
        elif method == "qbert":
            grouping = found["g"]
            parsed = {"weight_bits": int(found["w"]), "embedding_bits": int(found["e"]),
                      "groups": None if grouping is None else "row" if grouping == "-per-row" else int(grouping[2:]),
                      "percentile": float(found["p"]) if found["p"] else None,
                      "noise_rate": float(found["qn"]) if found["qn"] else 1.0,
                      "noise_block": int(found["nb"]) if found["nb"] else 8, "ternary": bool(found["twn"])}
            if found["mp"] and not known.get("layer_bits"):
                raise ValueError(f"label {label!r} names a mixed-precision run: pass its layer_bits (the label "
                                 "holds only their widths)")
        if found.get("ft"):
            parsed["init_from"] = FROM_CHECKPOINT
        if found.get("int"):
            parsed["integer_nonlinearities"] = True
        if found.get("kd"):
            parsed["distillation"] = "hidden" if found["kd"] == "-kdh" else "logits"
        if known.get("init_from") is not None and parsed.get("init_from") is None:
            raise ValueError(f"label {label!r} names a run from the pretrained model, not init_from="
                             f"{known['init_from']!r}")
        spec = cls(task, method, seed, **(parsed | {k: v for k, v in known.items() if v is not None}))
        if spec.label != label:
            raise ValueError(f"label {label!r} and the given {sorted(known)} describe different runs "
                             f"(they make {spec.label!r})")
        return spec

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunSpec:
        """The spec of a result record: its ``spec`` field, or for a record written before records carried one,
        rebuilt from its ``params`` (the trained run's arguments) and ``method`` (its label)."""
        if "spec" in record:
            return cls.from_dict(record["spec"] | {"protocol": TrainingProtocol.recorded(record["spec"]["protocol"])})
        params = record["params"]
        protocol = TrainingProtocol.recorded(params)
        trained = params["method"]
        knobs = {"weight_bits": params.get("weight_bits", 8), "embedding_bits": params.get("embedding_bits", 8),
                 "integer_nonlinearities": params.get("integer_nonlinearities", False),
                 "distillation": params.get("distillation"),
                 "groups": params.get("groups"), "layer_bits": params.get("layer_bits") or {},
                 "percentile": params.get("percentile"), "ema_decay": params.get("ema_decay"),
                 "noise_rate": params.get("noise_rate", 1.0), "noise_block": params.get("noise_block", 8),
                 "init_from": params.get("init_from"),
                 "centroids": params.get("centroids", 256), "centroid_bits": params.get("centroid_bits"),
                 "ternary": params.get("ternary", False)}
        if trained != "fp32" or record["method"] == "fp32":  # the trained run itself: the knobs its method has
            applies = {"fp32": ("init_from",),
                       "qat": ("weight_bits", "ema_decay", "integer_nonlinearities", "distillation", "init_from"),
                       "qbert": tuple(k for k in knobs if k not in ("centroids", "centroid_bits")),
                       "ipq": ("centroids", "centroid_bits", "noise_rate", "init_from")}[trained]
            return cls(record["task"], trained, record["seed"], **{k: knobs[k] for k in applies}, protocol=protocol)
        # a post-training row of an fp32 run: its label says which; DirectQ's groups are the run's
        groups = {"groups": params.get("groups")} if record["method"].startswith("directq") else {}
        return cls.from_label(record["method"], record["task"], record["seed"], protocol=protocol, **groups)


class _FrozenBits(dict):
    """``layer_bits`` as a hashable, read-only mapping (a frozen spec must not change under its label)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a RunSpec's layer_bits cannot change; make a new spec with RunSpec.with_(layer_bits=...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self) -> tuple:  # pickling (protocol workers) and deepcopy rebuild it whole
        return (_FrozenBits, (dict(self),))


PAPERS = ("FP32", "Q8BERT (DQ)", "Q8BERT (QAT)", "I-BERT (integer-only)", "Q-BERT (DirectQ)", "Q-BERT", "Q-BERT_MP",
          "Quant-Noise", "Quant-Noise (iPQ)", "TernaryBERT (TWN)")
"""Every value ``RunSpec.paper`` gives, in a fixed order (for legends and colours)."""
