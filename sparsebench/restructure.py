"""Changing a layer's structure during training: a new mask in place, or a new representation.

``restructure(weight, new_units, optimizer)`` gives a ``SparseWeight`` a new set of kept units
(weights, or blocks), keeping everything else consistent:
- a unit kept before and after keeps its value and its optimizer state (Adam's moments);
- a dropped unit's value and state are discarded (``masked``: set to exactly zero);
- a grown unit starts at zero, with zero state (RigL's choice: a new connection changes nothing
  until the gradient moves it).
A packed representation (``csr``, ``bsr``, ``bsr_cpp``) stores the kept units in row-major unit
order, so the old and new orders are matched by a sorted search over the units' flat indices: no
dense copy of the weight or of its state is made. The parameter object stays the same (resized in
place with ``set_``), so the optimizer and anything else holding it keep working.

``switch(module, representation, optimizer)`` moves a layer to another representation (the
gradual schedules store a layer densely until it is sparse enough to pay, then switch): the new
``SparseWeight`` is built from the old one's dense weight and mask, its parameter replaces the old one
in the optimizer, and the optimizer state moves with it (``densify`` then ``gather``).
"""

from __future__ import annotations

import torch
from torch import nn

from .patterns import as_matrix, expand_units, unit_scores
from .representations import REPRESENTATIONS, SparseWeight


def unit_mask(weight: SparseWeight, unit: tuple[int, int] | None = None) -> torch.Tensor:
    """The layer's kept units (bool, the weight matrix in ``unit``s; default: its pattern's, weights or blocks)."""
    unit = unit or weight.scheme.pattern.unit or (1, 1)
    return unit_scores(as_matrix(weight.mask()).to(torch.int32), unit) > 0


def _state_tensors(optimizer: torch.optim.Optimizer | None, param: nn.Parameter) -> dict[str, torch.Tensor]:
    """The optimizer's per-weight state of ``param`` (tensors shaped like it; a step count is not)."""
    if optimizer is None:
        return {}
    state = optimizer.state.get(param, {})
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape and v.dim() > 0}


def restructure(weight: SparseWeight, new_units: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Keep exactly the units ``new_units`` marks (bool, in the pattern's units as ``unit_mask``), moving
    values and state. The move is done in the representation's own storage units (a csr layer of a
    block pattern stores single weights)."""
    pattern_units = unit_mask(weight)
    if new_units.shape != pattern_units.shape:
        raise ValueError(f"new unit mask {tuple(new_units.shape)} does not match the layer's "
                         f"{tuple(pattern_units.shape)}")
    storage = weight.storage_unit
    elements = expand_units(new_units.to(pattern_units.device).bool(), weight.scheme.pattern.unit or (1, 1))
    new_units = unit_scores(elements.to(torch.int32), storage) > 0
    old_units = unit_mask(weight, storage)
    param = weight.stored
    states = _state_tensors(optimizer, param)
    with torch.no_grad():
        if not weight.packed:  # dense layout: keep value and state only where kept both before and after
            old_kept = weight.mask().clone()
            weight.set_units(new_units)
            both = (old_kept & weight.mask()).to(param.dtype)
            param.mul_(both)  # dropped: zero; grown: zero (they were pruned, so already exact zeros)
            for t in states.values():
                t.mul_(both)
        else:
            old_idx = old_units.reshape(-1).nonzero().reshape(-1)
            new_idx = new_units.reshape(-1).nonzero().reshape(-1)
            pos = torch.searchsorted(old_idx, new_idx).clamp_(max=max(len(old_idx) - 1, 0))
            survived = (old_idx[pos] == new_idx) if len(old_idx) else torch.zeros_like(new_idx, dtype=torch.bool)
            src = pos[survived]

            def moved(t: torch.Tensor) -> torch.Tensor:
                out = t.new_zeros((len(new_idx), *t.shape[1:]))
                out[survived] = t[src]
                return out

            new_values = moved(param.detach())
            new_states = {k: moved(t) for k, t in states.items()}
            weight.set_units(new_units)
            param.set_(new_values)
            for k, t in new_states.items():
                optimizer.state[param][k] = t
    param.grad = None


def switch(module: nn.Module, representation: str, optimizer: torch.optim.Optimizer | None = None) -> SparseWeight:
    """Store ``module``'s weight (a SparseLinear/SparseConv2d) in ``representation`` instead; returns the new one."""
    old: SparseWeight = module.sparse_weight
    with torch.no_grad():
        concrete = old.scheme.with_representation(representation)
        new = REPRESENTATIONS[representation](old.to_dense(), old.mask(), concrete)
    if optimizer is not None:
        old_param, new_param = old.stored, new.stored
        per_weight = _state_tensors(optimizer, old_param)
        moved = {k: new.gather(old.densify(per_weight[k])).contiguous() if k in per_weight else v
                 for k, v in optimizer.state.pop(old_param, {}).items()}
        if moved:
            optimizer.state[new_param] = moved
        for group in optimizer.param_groups:
            group["params"] = [new_param if p is old_param else p for p in group["params"]]
    module.sparse_weight = new
    return new
