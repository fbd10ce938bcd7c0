"""Turn a Hugging Face BERT (``BertModel`` or any ``BertFor...`` head) into its fake-quantized twin, in place.

Every Linear inside the ``BertModel`` (attention Q/K/V/output, FFN, pooler) becomes a ``QuantLinear`` and the
word/position/token-type tables become ``QuantEmbedding``s; Softmax, LayerNorm and GELU stay in float, as in Q8BERT,
unless the config asks for I-BERT's integer kernels. Linears of the task head (outside the ``BertModel``) are quantized
only when ``config.head`` is set."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn
from transformers import BertModel

from qlib.bert.config import BertQuantConfig
from qlib.bert.integer_modules import use_integer_nonlinearities
from qlib.bert.modules import QuantEmbedding, QuantLinear
from qlib.bert.pq_modules import PQEmbedding, PQLinear


def find_bert(model: nn.Module) -> BertModel:
    """The ``BertModel`` inside ``model`` (``model`` itself, or its ``base_model``)."""
    base = getattr(model, "base_model", model)
    if isinstance(base, BertModel):
        return base
    raise TypeError(
        f"expected a transformers BertModel or BertFor... model, got {type(model).__name__} "
        f"(base model {type(base).__name__}); qlib converts BERT-architecture models only"
    )


def layer_names(model: nn.Module) -> list[str]:
    """Module paths inside the BertModel that a ``config.layers`` key may name (blocks and Linears)."""
    bert = find_bert(model)
    linears = [name for name, m in bert.named_modules() if isinstance(m, nn.Linear)]
    prefixes = {".".join(name.split(".")[:k]) for name in linears for k in range(1, name.count(".") + 1)}
    return sorted(prefixes | set(linears))


def _check_layer_keys(model: nn.Module, config: BertQuantConfig) -> None:
    allowed = set(layer_names(model))
    for key in config.layers:
        if key not in allowed:
            blocks = sorted(n for n in allowed if n.startswith("encoder.layer.") and n.count(".") == 2)
            examples = ", ".join([blocks[0], blocks[-1], "pooler", "encoder.layer.0.attention.self.query"])
            raise ValueError(
                f"unknown layer {key!r} in config.layers; allowed: a module path inside the BERT model "
                f"that holds Linear layers, e.g. {examples} (see qlib.layer_names(model))"
            )


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def convert_bert(model: nn.Module, config: BertQuantConfig) -> nn.Module:
    """Replace ``model``'s Linear and Embedding layers by fake-quantized ones per ``config``, in place (torch.ao's
    ``from_float`` on every layer): each encoder/pooler Linear becomes a ``QuantLinear`` with ``config.layer_for``
    its name, each embedding table a ``QuantEmbedding`` with ``config.embeddings``; the task head stays float unless
    ``config.head`` says otherwise; with ``config.integer_nonlinearities``, GELU, softmax and LayerNorm run I-BERT's
    integer kernels (``use_integer_nonlinearities``).

    Parameters are shared with the float layers, so conversion before building the optimizer is all QAT needs.

    Args:
        model: any ``BertFor...`` model (or a ``BertModel``).
        config: the quantization; a per-layer key that names no layer is refused, naming it.

    Returns:
        ``model`` itself, converted.
    """
    bert = find_bert(model)
    _check_layer_keys(model, config)
    for name, module in list(bert.named_modules()):
        if type(module) is nn.Linear:
            _replace(bert, name, QuantLinear.from_float(module, config.layer_for(name)))
        elif type(module) is nn.Embedding and config.embeddings is not None:
            _replace(bert, name, QuantEmbedding.from_float(module, config.embeddings))
    if config.head is not None:
        inside = {id(m) for m in bert.modules()}
        for name, module in list(model.named_modules()):
            if type(module) is nn.Linear and id(module) not in inside:
                _replace(model, name, QuantLinear.from_float(module, config.head))
    if config.integer_nonlinearities:
        use_integer_nonlinearities(model)
    return model


def quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every fake-quantized layer of ``model`` (product-quantized ones included)."""
    for name, module in model.named_modules():
        if isinstance(module, (QuantLinear, QuantEmbedding, PQLinear, PQEmbedding)):
            yield name, module


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> nn.Module:
    """Run ``batches`` through ``model`` in eval mode with only the input observers updating (post-training
    calibration of static ranges); returns ``model`` in eval mode."""
    model.eval()
    observers = [m.input_observer for _, m in quantized_modules(model) if getattr(m, "input_observer", None)]
    for observer in observers:
        observer.train()
    for batch in batches:
        model(**batch)
    for observer in observers:
        observer.eval()
    return model
