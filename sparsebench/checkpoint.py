"""Checkpoints that travel: one layout for every representation, so a model saved with one loads into
a model sparsified with any other representation of the same pattern (``auto`` picks per machine, so
this is also what lets a checkpoint cross machines), and into a plain dense model.

The layout names every tensor as the dense model would (``fc1.weight``, ``fc1.bias``): a pruned
layer's weight is its mask, bit-packed, and its kept values in row-major order; everything else is
stored as it is. The optimizer's per-weight state (Adam's moments) of a pruned weight is stored at
the same kept positions, so it maps onto any representation too.

Loading into a sparse layer gives it the checkpoint's mask first (``restructure``: the structure a
dynamic schedule left, not the one the target was built with), then the values. A checkpoint is read
with ``torch.load(weights_only=True)`` and checked before anything is changed.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .atomic import write_atomic
from .patterns import as_matrix, expand_units, unit_scores
from .representations.base import SparseLayer
from .restructure import restructure

FORMAT = "sparsebench-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (or is not one): the message names what and how to fix it."""


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy()))


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool)).reshape(shape)


def _key(layer: str) -> str:
    """A layer's weight as the layout names it: the dense model's parameter name."""
    return f"{layer}.weight" if layer else "weight"


def _param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the layout: a pruned layer's stored weight is ``<layer>.weight``."""
    names = {id(p): n for n, p in model.named_parameters()}
    for layer, module in model.named_modules():
        if isinstance(module, SparseLayer):
            names[id(module.sparse_weight.stored)] = _key(layer)
    return names


def state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """The model (and the optimizer's state) in the portable layout."""
    sparse, masks = {}, {}
    for layer, module in model.named_modules():
        if isinstance(module, SparseLayer):
            sw = module.sparse_weight
            mask = sw.mask()
            key = _key(layer)
            sparse[key] = {"shape": list(sw.shape), "mask": _pack(mask), "values": sw.to_dense()[mask].clone(),
                           "scheme": str(sw.scheme)}
            masks[id(sw.stored)] = (sw, mask)
    skip = tuple(f"{n}.sparse_weight." if n else "sparse_weight." for n, m in model.named_modules()
                 if isinstance(m, SparseLayer))
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(skip)}
    out = {"format": FORMAT, "version": VERSION, "tensors": tensors, "sparse": sparse, "optimizer": None}
    if optimizer is not None:
        names = _param_names(model)
        state = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                entry = {}
                for k, v in optimizer.state.get(p, {}).items():
                    if id(p) in masks and torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0:
                        sw, mask = masks[id(p)]
                        v = sw.densify(v.detach())[mask]  # at the kept positions, like the values
                    entry[k] = v.detach().clone() if torch.is_tensor(v) else v
                state[names[id(p)]] = entry
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        out["optimizer"] = {"param_groups": groups, "state": state}
    return out


def save(model: nn.Module, path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``state_dict(model, optimizer)`` to ``path`` atomically."""
    checkpoint = state_dict(model, optimizer)
    write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load(model: nn.Module, path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a checkpoint written by ``save`` into ``model`` (any representation, or dense) and ``optimizer``."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        raise CheckpointError(f"{path}: not a sparsebench checkpoint ({type(e).__name__}: {e})") from e
    load_state_dict(model, checkpoint, optimizer)


def _check(checkpoint) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError("not a sparsebench checkpoint (no 'format': 'sparsebench-checkpoint'); "
                              "write one with sparsebench.checkpoint.save")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {checkpoint.get('version')!r}; this sparsebench reads {VERSION}")
    for key, entry in checkpoint["sparse"].items():
        n = int(np.prod(entry["shape"]))
        if entry["mask"].numel() != (n + 7) // 8:
            raise CheckpointError(f"{key}: its mask has {entry['mask'].numel()} bytes for {n} weights")
        kept = int(_unpack(entry["mask"], entry["shape"]).sum())
        if entry["values"].numel() != kept:
            raise CheckpointError(f"{key}: {entry['values'].numel()} values for {kept} kept positions")


def _target_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``<layer>.weight`` -> the module holding it, for every Linear/Conv2d and sparse layer."""
    return {_key(n): m for n, m in model.named_modules()
            if isinstance(m, (SparseLayer, nn.Linear, nn.Conv2d))}


def load_state_dict(model: nn.Module, checkpoint: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load ``checkpoint`` (from ``state_dict``) into ``model``: every tensor is matched by name and
    shape before any is written."""
    _check(checkpoint)
    layers = _target_layers(model)
    masks, units = {}, {}
    for key, entry in checkpoint["sparse"].items():
        target = layers.get(key)
        if target is None:
            raise CheckpointError(f"{key}: the checkpoint's pruned weight has no Linear/Conv2d layer in this model")
        shape = tuple(target.sparse_weight.shape if isinstance(target, SparseLayer) else target.weight.shape)
        if shape != tuple(entry["shape"]):
            raise CheckpointError(f"{key}: shape {tuple(entry['shape'])} in the checkpoint, {shape} in the model")
        masks[key] = _unpack(entry["mask"], entry["shape"])
        if isinstance(target, SparseLayer):
            units[key] = _units(target.sparse_weight, key, masks[key])
    for key, module in layers.items():
        if isinstance(module, SparseLayer) and key not in checkpoint["sparse"]:
            raise CheckpointError(f"{key} is pruned in this model but dense in the checkpoint: load it into the dense "
                                  "model, then sparsify that")
    own = {k: v for k, v in model.state_dict().items() if ".sparse_weight." not in f".{k}"}
    dense_weights = {k for k, m in layers.items() if not isinstance(m, SparseLayer)}
    expected = set(own) - (dense_weights & set(checkpoint["sparse"]))
    missing, unexpected = expected - set(checkpoint["tensors"]), set(checkpoint["tensors"]) - expected
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not fit this model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for key, entry in checkpoint["sparse"].items():
            module, mask = layers[key], masks[key]
            if isinstance(module, SparseLayer):
                sw = module.sparse_weight
                if not torch.equal(sw.mask(), mask.to(sw.mask().device)):
                    restructure(sw, units[key])  # the checkpoint's structure (values follow just below)
                sw.stored.copy_(_stored_like(sw, mask, entry["values"]))
            else:
                dense = torch.zeros(entry["shape"], dtype=module.weight.dtype)
                dense[mask] = entry["values"].to(dense.dtype)
                module.weight.copy_(dense)
        for key, value in checkpoint["tensors"].items():
            own[key].copy_(value)
    if optimizer is not None:
        _load_optimizer(model, optimizer, checkpoint)


def _units(sw, key: str, mask: torch.Tensor) -> torch.Tensor:
    """The checkpoint's mask in the sparse layer's pattern units; refused where that pattern cannot store it."""
    unit = sw.scheme.pattern.unit or (1, 1)
    units = unit_scores(as_matrix(mask).to(torch.int32), unit) > 0
    if not torch.equal(expand_units(units, unit), as_matrix(mask)):
        raise CheckpointError(f"{key}: the checkpoint's mask is not made of {unit[0]}x{unit[1]} units, which this "
                              f"layer's scheme '{sw.scheme}' stores; sparsify the model with the checkpoint's scheme")
    return units


def _stored_like(sw, mask: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    dense = torch.zeros(sw.shape, dtype=sw.stored.dtype, device=sw.stored.device)
    dense[mask.to(dense.device)] = kept.to(dense)
    return sw.gather(dense)


def _load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict) -> None:
    saved = checkpoint.get("optimizer")
    if saved is None:
        raise CheckpointError("the checkpoint holds no optimizer state; save it with save(model, path, optimizer)")
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"the checkpoint's optimizer has {len(saved['param_groups'])} parameter groups, "
                              f"this one {len(optimizer.param_groups)}")
    names = _param_names(model)
    sparse = {_key(n): m.sparse_weight for n, m in model.named_modules()
              if isinstance(m, SparseLayer)}
    layers = _target_layers(model)
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
        for p in group["params"]:
            name = names[id(p)]
            entry = saved["state"].get(name)
            if not entry:
                optimizer.state.pop(p, None)
                continue
            state = {}
            for k, v in entry.items():
                if torch.is_tensor(v) and name in checkpoint["sparse"] and v.dim() > 0:
                    mask = _unpack(checkpoint["sparse"][name]["mask"], checkpoint["sparse"][name]["shape"])
                    if name in sparse:
                        v = _stored_like(sparse[name], mask, v)
                    else:  # into a dense layer: zero state at the pruned positions
                        dense = torch.zeros(mask.shape, dtype=layers[name].weight.dtype)
                        dense[mask] = v.to(dense.dtype)
                        v = dense
                state[k] = v.to(p.device) if torch.is_tensor(v) and v.dim() > 0 else v
            optimizer.state[p] = state
