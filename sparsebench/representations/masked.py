"""``masked``: the dense weight times a bool mask. Saves nothing; it is the reference every other
representation must match, and the honest baseline for "sparsity without sparse storage".

Pruned weights stay exactly zero through any optimizer step: they start at zero and the forward
pass uses ``weight * mask``, so their gradient is exactly zero; Adam/AdamW/SGD (momentum, weight
decay) then leave a zero weight with zero gradient and zero state at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SparseWeight


class MaskedWeight(SparseWeight):
    name = "masked"

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        self.register_buffer("kept", mask.detach().clone().bool())
        self.weight = nn.Parameter((weight.detach() * self.kept).contiguous())

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.kept

    def linear(self, x):
        return F.linear(x, self.effective_weight().reshape(self.shape[0], -1))

    def conv2d(self, x, stride, padding, dilation):
        return F.conv2d(x, self.effective_weight(), None, stride, padding, dilation)

    @property
    def stored(self):
        return self.weight

    def densify(self, stored_like):
        return stored_like * self.kept

    def mask(self):
        return self.kept
