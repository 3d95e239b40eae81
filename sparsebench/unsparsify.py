"""Back to dense: a sparsified model's sparse layers replaced by plain nn.Linear / nn.Conv2d layers that
compute the same function, the pruned weights zero (torch's ``prune.remove``, torchao's ``squash_mask``).

The result has no sparsebench module left in it: it saves, loads and exports as any torch model does.
A mask updater (a dynamic schedule) is removed with the sparse layers it moved.
"""

from __future__ import annotations

from torch import nn

from .representations.base import SparseLayer


def unsparsify(model: nn.Module) -> nn.Module:
    """Replace every SparseLinear / SparseConv2d of ``model`` in place by the nn.Linear / nn.Conv2d it stands
    for (same device and dtype, weights zero where pruned); returns the model. A model that is itself one
    sparse layer is returned as its plain layer (there is no parent to replace it in)."""
    if isinstance(model, SparseLayer):
        return model.plain()
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.plain())
    updater = model.__dict__.get("mask_updater")
    if updater is not None:
        updater.remove()  # its capture hooks
    for attr in ("mask_updater", "left_dense"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model
