"""Look inside a model: capture the inputs of chosen layers on real data (for histograms and range studies)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Iterable[str], batches: Iterable[dict[str, torch.Tensor]],
                   ) -> dict[str, torch.Tensor]:
    """The inputs seen by the modules at ``names`` over ``batches``, real tokens only (``attention_mask`` = 1):
    {name: [tokens, features]}. Unknown names raise ``ValueError`` listing a few valid ones."""
    modules = dict(model.named_modules())
    names = list(names)
    missing = [n for n in names if n not in modules]
    if missing:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)][:3]
        raise ValueError(f"no module named {missing} in {type(model).__name__}; e.g. {linear}")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    state: dict[str, torch.Tensor] = {}

    def hook(name: str):
        return lambda module, args: seen[name].append(args[0][state["mask"]])

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        model.eval()
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    return {n: torch.cat(v) for n, v in seen.items()}
