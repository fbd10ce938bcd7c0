"""Quantized checkpoints: bit-packed integer weights and their grids in one safetensors file (never a pickle).

For each fake-quantized layer the file holds the tensors its weight quantizer encodes (``WeightQuantizer.encode``) as
``<name>.weight.<part>``: for a uniform grid ``codes`` (the b-bit codes, packed) and ``scale`` / ``shift`` [G] (the grid
``ŵ = scale·q + shift``); loading decodes them with the model's own quantizer. Everything else (LayerNorm, biases,
the float head, the activation observers' ranges) is stored as it is, or with the float parameters (biases,
LayerNorm, the float head) in float16 on request, as GPTQ- and AWQ-packed files keep them; the grids and the
observers' ranges stay float32. Each layer's quantizer (``describe``: for a grid its bits, scheme, granularity, groups,
percentile) and shape sit in the file's metadata, and loading refuses a model whose layers are quantized otherwise,
naming the layer. Every
file (``save_float``'s too) carries the SHA-256 of its tensors, so a flipped byte is refused, not loaded. Sizes
reported by the book are these files' sizes on disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from qlib.bert.config import BertQuantConfig
from qlib.bert.convert import convert_bert, find_bert, quantized_modules
from qlib.bert.pq_modules import PQEmbedding, PQLinear, product_quantize_all
from qlib.common.atomic import atomic_write
from qlib.core.weight_quantizer import WeightQuantizer

FORMAT = "qbook-packed-v2"
PAYLOAD_KEY = "payload_sha256"


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: what a checkpoint's payload is."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu()
        flat = tensor.reshape(-1)
        if flat.stride() != (1,):  # one element counts as contiguous whatever its stride, which view(uint8) refuses
            flat = flat.clone(memory_format=torch.contiguous_format)
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verified_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint whose payload matches the hash it carries; raises naming the file."""
    with _open(path) as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if PAYLOAD_KEY not in metadata:
        raise ValueError(f"{path} carries no payload hash ({PAYLOAD_KEY}): it was not written by qlib's save_float or "
                         "save_quantized (or by an older version); save it again")
    if payload_sha256(tensors) != metadata[PAYLOAD_KEY]:
        raise ValueError(f"corrupt checkpoint {path}: its tensors do not match the SHA-256 it was saved with "
                         "(a changed or flipped byte); copy or save it again")
    return metadata, tensors


def save_float(model: nn.Module, path: str | os.PathLike) -> Path:
    """The FP32 reference checkpoint (safetensors, shared tensors stored once, with its payload's SHA-256), written
    atomically."""
    def write(tmp: str) -> None:
        save_model(model, tmp)  # safetensors drops the duplicates of shared tensors; hash what it kept
        with _open(Path(tmp)) as f:
            kept = {key: f.get_tensor(key) for key in f.keys()}
        save_file(kept, tmp, metadata={"format": "pt", PAYLOAD_KEY: payload_sha256(kept)})

    return atomic_write(Path(path), write)


def load_float(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``save_float`` file into ``model`` (same architecture and head); a missing, corrupt or mismatched file
    raises an error naming it."""
    path = Path(path)
    _verified_tensors(path)  # names a missing, corrupt or altered file
    try:
        load_model(model, str(path))  # safetensors' own loader: it knows which shared tensors save_model dropped
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {type(model).__name__}: {err}") from err
    return model


def save_quantized(model: nn.Module, path: str | os.PathLike, float_dtype: torch.dtype = torch.float32) -> Path:
    """Save a converted model with each quantized weight as its quantizer encodes it (bit-packed codes and grids),
    atomically, in one safetensors file with the layers' quantizers and the payload's SHA-256 in its metadata.

    Args:
        model: a model converted by ``convert_bert`` (after QAT, or calibrated).
        path: the file to write (replaced whole, never half-written).
        float_dtype: ``torch.float32`` or ``torch.float16`` for the parameters that are not packed (biases,
            LayerNorm, the float head): float32 loads back exactly, float16 rounds them (relative error ≤ 2⁻¹¹).

    Returns:
        ``path``.
    """
    if float_dtype not in (torch.float32, torch.float16):
        raise ValueError(f"float_dtype must be torch.float32 or torch.float16, got {float_dtype}")
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    stored: dict[int, str] = {}
    for name, module in quantized_modules(model):
        if isinstance(module, (PQLinear, PQEmbedding)):  # codebook and codes are its state: stored as they are
            layers[name] = module.describe() | {"shape": list(module.weight.shape)}
            continue
        quantizer = _weight_quantizer(module)
        if quantizer is None:
            continue
        weight = module.weight.detach()
        tensors |= {f"{name}.weight.{part}": t.contiguous() for part, t in quantizer.encode(weight).items()}
        layers[name] = quantizer.describe(weight) | {"shape": list(weight.shape)}
        stored[weight.data_ptr()] = f"{name}.weight"
    tied: dict[str, str] = {}
    for key, value in model.state_dict().items():
        if value.data_ptr() in stored and value.numel():
            if stored[value.data_ptr()] != key:
                tied[key] = stored[value.data_ptr()]
            continue
        stored[value.data_ptr()] = key
        tensors[key] = value.detach().to(float_dtype if key in parameters else value.dtype).contiguous()
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer: convert it with qlib.convert_bert first")
    metadata = {"format": FORMAT, "layers": json.dumps(layers), "tied": json.dumps(tied),
                "float_dtype": str(float_dtype).removeprefix("torch."), PAYLOAD_KEY: payload_sha256(tensors)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _weight_quantizer(module: nn.Module) -> WeightQuantizer | None:
    """The weight quantizer of a quantized module (``None``: the weight stays float)."""
    return module.spec if hasattr(module, "spec") else module.quant.weight


def _describe(module: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records of a quantized layer's weight (None: the weight stays float)."""
    if isinstance(module, (PQLinear, PQEmbedding)):
        return module.describe()
    quantizer = _weight_quantizer(module)
    return None if quantizer is None else quantizer.describe(module.weight)


def _check_layers_fit(model: nn.Module, layers: dict[str, dict[str, Any]], path: Path) -> None:
    """Refuse a model whose quantized layers differ from the file's (which layers, or anything their quantizers
    ``describe``)."""
    expected = {name: _describe(module) for name, module in quantized_modules(model)}
    expected = {name: described for name, described in expected.items() if described is not None}
    for name in sorted(set(expected) | set(layers)):
        if name not in layers or name not in expected:
            where, other = ("the model", "the file") if name in expected else ("the file", "the model")
            raise ValueError(f"{path} does not fit {type(model).__name__}: layer {name} is quantized in {where} but "
                             f"not in {other}; convert the model with the config the file was saved with")
        saved = {k: v for k, v in layers[name].items() if k != "shape"}
        differ = {k: (saved.get(k), expected[name].get(k)) for k in sorted(set(saved) | set(expected[name]))
                  if saved.get(k) != expected[name].get(k)}
        if differ:
            said = ", ".join(f"{k} {saved!r} in the file, {wanted!r} in the model"
                             for k, (saved, wanted) in differ.items())
            raise ValueError(f"{path} does not fit {type(model).__name__}: layer {name}: {said}; convert the model "
                             "with the config the file was saved with")


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise ValueError(f"corrupt or truncated checkpoint {path}: {err}") from err


def load_quantized(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``save_quantized`` file into ``model``; each weight is decoded exactly by the model's own quantizer.

    Refuses, naming the file and the layer, a model quantized otherwise (another layer set, or anything its
    quantizers ``describe``: bits, scheme, granularity, groups, percentile), and a file whose tensors do not match
    the hash it was saved with.

    Args:
        model: converted with the config the file was saved with.
        path: a ``save_quantized`` file.

    Returns:
        ``model``, holding the file's weights, ranges and float parameters.
    """
    path = Path(path)
    with _open(path) as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a qbook quantized checkpoint of this version (format "
                         f"{metadata.get('format')!r}, expected {FORMAT!r}); save it again with save_quantized")
    metadata, tensors = _verified_tensors(path)
    layers, tied = json.loads(metadata["layers"]), json.loads(metadata["tied"])
    _check_layers_fit(model, layers, path)
    modules = dict(quantized_modules(model))
    state: dict[str, torch.Tensor] = {}
    for name, info in layers.items():
        if info.get("method") == "pq" and isinstance(modules[name], (PQLinear, PQEmbedding)):
            continue  # its codebook and codes load with the rest of the state
        prefix = f"{name}.weight."
        encoded = {key.removeprefix(prefix): tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]}
        try:
            state[f"{name}.weight"] = _weight_quantizer(modules[name]).decode(encoded, info["shape"])
        except ValueError as err:
            raise ValueError(f"corrupt checkpoint {path}, layer {name}: {err}") from err
    state |= tensors
    for key, source in tied.items():
        state[key] = state[source]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; convert the model with the config it was saved with")
    return model


def checkpoint_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of the file, and of its embedding tables and everything else (tensor payloads); ``codes`` is
    the part of everything else stored as 8-bit integers (the packed weight codes), the rest of it is float."""
    path = Path(path)
    sizes = {"file": path.stat().st_size, "embeddings": 0, "other": 0, "codes": 0}
    with _open(path) as f:
        for key in f.keys():
            t = f.get_slice(key)
            nbytes = int(torch.Size(t.get_shape()).numel()) * _itemsize(t.get_dtype())
            embedding = ".embeddings." in f".{key}"
            sizes["embeddings" if embedding else "other"] += nbytes
            if not embedding and t.get_dtype() in ("U8", "I8"):
                sizes["codes"] += nbytes
    return sizes


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}[dtype]


def size_mb(model: nn.Module, config: BertQuantConfig | None, folder: str | os.PathLike,
            float_dtype: torch.dtype = torch.float32, ipq_centroids: int | None = None,
            ipq_centroid_bits: int | None = None) -> dict[str, float]:
    """Measured size (MB) of ``model`` saved in FP32 (``config=None`` and no iPQ) or bit-packed after conversion
    with ``config`` (the model itself is not changed; ``float_dtype`` as in ``save_quantized``): the whole file, its
    embedding tables, everything else, and the integer codes within everything else.

    With ``ipq_centroids`` k, every iPQ stage is applied after the conversion
    (``qlib.bert.pq_modules.product_quantize_all``, ``ipq_centroid_bits`` for its centroids): the file of an iPQ run,
    whose size depends on the shapes only (one k-means iteration is enough to measure it)."""
    folder = Path(folder)
    if config is None and ipq_centroids is None:
        path = save_float(model, folder / "fp32.safetensors")
    else:
        converted = copy.deepcopy(model)
        if config is not None:
            convert_bert(converted, config)
        if ipq_centroids is not None:
            product_quantize_all(find_bert(converted), ipq_centroids, iterations=1, centroid_bits=ipq_centroid_bits)
        path = save_quantized(converted, folder / "packed.safetensors", float_dtype)
    sizes = checkpoint_sizes(path)
    path.unlink()
    return {"file_mb": sizes["file"] / 1e6, "embedding_mb": sizes["embeddings"] / 1e6,
            "without_embedding_mb": sizes["other"] / 1e6, "codes_without_embedding_mb": sizes["codes"] / 1e6}
