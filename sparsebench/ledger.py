"""The memory ledger: bytes of weights, gradients, optimizer state and masks/indices, counted from
the tensors that actually exist, next to what the same model dense would take.

Dense equivalent: each sparse weight counted at its dense element count (weight, its gradient
if it has one, and optimizer state tensors shaped like it); masks and indices cost nothing dense.
"""

from __future__ import annotations

import torch
from torch import nn

from .representations import SparseWeight


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def memory_ledger(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    sparse_owner: dict[int, SparseWeight] = {}  # id(param) -> the SparseWeight storing it
    structure = 0
    for module in model.modules():
        if isinstance(module, SparseWeight):
            for p in module.parameters(recurse=False):
                sparse_owner[id(p)] = module
            structure += sum(_nbytes(b) for b in module.structure_buffers())

    weights = gradients = state = 0
    dense_weights = dense_gradients = dense_state = 0
    for p in model.parameters():
        owner = sparse_owner.get(id(p))
        scale = owner.dense_numel / p.numel() if owner is not None else 1.0  # sparse -> dense element ratio
        weights += _nbytes(p)
        dense_weights += _nbytes(p) * scale
        gradients += _nbytes(p.grad)
        dense_gradients += _nbytes(p.grad) * scale
        if optimizer is not None:
            for s in optimizer.state.get(p, {}).values():
                if torch.is_tensor(s):
                    state += _nbytes(s)
                    dense_state += _nbytes(s) * (scale if s.numel() == p.numel() else 1.0)
    # buffers that are not sparse structure (none in our models, but count them honestly)
    other_buffers = sum(_nbytes(b) for m in model.modules() if not isinstance(m, SparseWeight)
                        for b in m.buffers(recurse=False))
    weights += other_buffers
    dense_weights += other_buffers
    total = weights + gradients + state + structure
    return {
        "weights": int(weights),
        "gradients": int(gradients),
        "optimizer_state": int(state),
        "masks_and_indices": int(structure),
        "total": int(total),
        "dense_total": int(round(dense_weights + dense_gradients + dense_state)),
    }
