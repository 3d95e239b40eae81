"""``auto``: a selection policy, not a representation. For each layer ``sparsify`` asks ``choose``
which representation stores it: of the valid ones that train in no more memory than the dense
layer, whichever trains fastest on this machine for that layer's shape and batch, measured once and
cached. ``masked`` (the dense weight plus a mask, so always more than dense) is chosen only where no
sparse representation fits in dense's memory (low sparsity), or where none is faster than it by
``MARGIN`` and none fits either. The layer then holds that representation (its ``name`` says which),
and the scheme string keeps ``@auto``.

``fastest`` is the same measurement without the memory rule: the fastest valid representation,
``masked`` kept unless another beats it by ``MARGIN``. It is for training where only time matters
(the study's accuracy points: every representation computes the same function).

A layer's training memory is counted as the ledger counts it, for Adam: the stored parameter four
times (weight, gradient, two moments) plus its masks and indices; dense is 16 bytes per weight.

Every representation that can store the scheme on this layer (``masked``, which runs at dense
speed, is always one) is built from the layer's real weight and mask and timed on a forward and
backward pass over an input of the layer's training shape, with the rows capped at ``ROWS`` so each
measurement takes milliseconds. Choices are cached in ``<cache dir>/auto-choices.json``, keyed by
machine class (CPU identity, kernel variant, threads, torch, device), layer kind, weight shape,
input shape and scheme; the file is updated under a lock, and a corrupt one is ignored and rewritten.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .. import kernels
from ..machine import cache_dir, this_machine
from ..schemes import Scheme
from ..timing import best_of
from . import REPRESENTATIONS, choices
from .base import RepresentationUnavailable, SparseConv2d, SparseLinear, SparseWeight

ROWS = 4096  # calibration rows (tokens, or conv output positions): the size of the layers benchmarked here
REPEATS = 3
# A sparse representation must beat `masked` (dense kernels) by this much to be chosen: a narrow win
# in a few milliseconds of calibration can be noise, or vanish at the real batch size.
MARGIN = 0.9
LOCK_TIMEOUT_S = 60
RULES = {"auto": "fastest-within-dense-memory", "fastest": "fastest"}  # in the cache key: a changed rule re-measures


def _cache_path() -> Path:
    return cache_dir() / "auto-choices.json"


def _machine_key(device: torch.device) -> str:
    return this_machine(kernels.variant(), device)[1]


def _save_choice(path: Path, key: str, decision: dict) -> None:
    choices.save(path, key, decision, LOCK_TIMEOUT_S, "auto choice")


def _wrap(weight: SparseWeight, layer: nn.Module) -> nn.Module:
    return SparseLinear(weight, layer.bias) if isinstance(layer, nn.Linear) else SparseConv2d(weight, layer.bias, layer)


def _calibration_input(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        rows = min(ROWS, max(1, math.prod(shape[:-1])))
        return torch.randn(rows, shape[-1], device=layer.weight.device)
    positions = shape[2] * shape[3]  # conv: keep the image size, cap the batch
    return torch.randn(max(1, min(shape[0], ROWS // positions)), *shape[1:], device=layer.weight.device)


def _time_ms(module: nn.Module, x: torch.Tensor) -> float:
    """Best forward + backward pass. The output gradient is a real dense tensor, as in training:
    ``y.sum().backward()`` would hand the layer an expanded (stride 0) gradient, and a representation
    that copies it pays a cost training never sees."""
    x = x.detach().requires_grad_()
    grad = torch.randn_like(module(x))
    sync = torch.cuda.synchronize if x.is_cuda else None
    return 1e3 * best_of(lambda: module(x).backward(grad), REPEATS, sync=sync)


def candidates(scheme: Scheme, shape2d: tuple[int, int], layer_name: str) -> dict[str, Scheme]:
    """Representation name -> the concrete scheme, for each representation that can store this layer here."""
    valid = {}
    for name, cls in REPRESENTATIONS.items():
        if cls.peer:  # auto picks among sparsebench's own kernels; a peer is measured beside them
            continue
        try:
            concrete = scheme.with_representation(name)
            cls.check_layer(concrete, shape2d, layer_name)
        except (ValueError, RepresentationUnavailable):
            continue
        valid[name] = concrete
    return valid


def training_bytes(weight: SparseWeight) -> int:
    """Bytes a layer's weight takes in training with Adam: stored parameter x 4, plus structure."""
    params = sum(p.numel() * p.element_size() for p in weight.parameters(recurse=False))
    return 4 * params + sum(b.numel() * b.element_size() for b in weight.structure_buffers())


def pick(times: dict[str, float], fits: dict[str, bool]) -> str:
    """The fastest of the representations that fit in dense's memory; where none fits, the fastest,
    with ``masked`` kept unless another beats it by ``MARGIN`` (a narrow win at calibration size is
    noise or does not scale)."""
    within = [name for name in times if fits[name]]
    if within:
        return min(within, key=times.get)
    chosen = min(times, key=times.get)
    if "masked" in times and times[chosen] > MARGIN * times["masked"]:
        chosen = "masked"
    return chosen


def choose(scheme: Scheme, layer_name: str, layer: nn.Module, mask: torch.Tensor,
           input_shape: tuple[int, ...] | None) -> str:
    """The name of the representation that stores ``layer``: cached, else measured and cached."""
    if input_shape is None:
        raise ValueError(f"layer {layer_name!r}: 'auto' times each representation at the layer's input shape; "
                         "pass sparsify(..., example_inputs=a training batch)")
    shape2d = (layer.weight.shape[0], layer.weight[0].numel())
    key = "|".join([RULES[scheme.representation], _machine_key(layer.weight.device), type(layer).__name__,
                    "x".join(map(str, layer.weight.shape)),
                    "x".join(map(str, input_shape)), str(scheme)])
    valid = candidates(scheme, shape2d, layer_name)
    path = _cache_path()
    cached = choices.load(path).get(key)
    if isinstance(cached, dict) and cached.get("chosen") in valid:
        return cached["chosen"]
    x = _calibration_input(layer, input_shape)
    dense_bytes = 16 * layer.weight.numel()
    times, fits = {}, {}
    for name, concrete in valid.items():
        weight = REPRESENTATIONS[name](layer.weight.detach(), mask, concrete)
        fits[name] = training_bytes(weight) <= dense_bytes
        times[name] = _time_ms(_wrap(weight, layer), x)
        del weight
    chosen = pick(times, fits if scheme.representation == "auto" else dict.fromkeys(fits, False))
    _save_choice(path, key, {"chosen": chosen, "times_ms": times, "fits_dense_memory": fits,
                             "calibration_input": list(x.shape)})
    return chosen
