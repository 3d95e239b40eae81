"""What ``sparsify`` did to a model, as a user reads it: one row per pruned layer (name, shape,
representation, realised sparsity, stored bytes) and every weight it left dense, with the reason.

Read from the model as it is now, so a layer a dynamic schedule has since moved to another
representation shows where it is; the reasons for dense weights are the ones ``sparsify`` recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tabulate import tabulate
from torch import nn

from .representations.base import SparseLayer


@dataclass(frozen=True)
class LayerRow:
    name: str
    shape: tuple[int, ...]
    representation: str
    sparsity: float  # 1 - kept / count, from the stored structure
    stored_bytes: int  # the kept values and the indices that place them
    dense_bytes: int  # the same weight stored densely


@dataclass(frozen=True)
class Summary:
    layers: tuple[LayerRow, ...]
    left_dense: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, why)

    @property
    def sparsity(self) -> float:
        """Realised sparsity over the pruned layers."""
        count = sum(math.prod(r.shape) for r in self.layers)
        kept = sum(round((1 - r.sparsity) * math.prod(r.shape)) for r in self.layers)
        return 1 - kept / count if count else 0.0

    def __str__(self) -> str:
        rows = [[r.name, "x".join(map(str, r.shape)), r.representation, f"{r.sparsity:.1%}",
                 f"{r.stored_bytes / 2**10:.1f}", f"{r.dense_bytes / 2**10:.1f}"] for r in self.layers]
        text = tabulate(rows, ["layer", "shape", "representation", "sparsity", "stored KiB", "dense KiB"])
        text += f"\n{len(self.layers)} layers pruned, {self.sparsity:.1%} of their weights"
        if self.left_dense:
            text += "\nleft dense:\n" + tabulate([[n, "x".join(map(str, s)), why] for n, s, why in self.left_dense],
                                                 ["weight", "shape", "why"])
        return text


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def summary(model: nn.Module) -> Summary:
    """The model's pruned layers and the weights left dense (``print(summary(model))`` shows both)."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, SparseLayer):
            sw = module.sparse_weight
            kept = int(sw.mask().sum())
            stored = _nbytes([sw.stored, *sw.structure_buffers()])
            rows.append(LayerRow(name, tuple(sw.shape), sw.name, 1 - kept / sw.dense_numel, stored,
                                 sw.dense_numel * sw.stored.element_size()))
    dense = []
    for name, why in getattr(model, "left_dense", {}).items():
        obj = model
        for part in name.split("."):  # a layer (its weight) or a parameter (MultiheadAttention's in_proj_weight)
            obj = getattr(obj, part, None)
        tensor = obj.weight if isinstance(obj, nn.Module) else obj
        dense.append((name, tuple(tensor.shape) if tensor is not None else (), why))
    return Summary(tuple(rows), tuple(dense))
