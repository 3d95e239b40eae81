"""``masked``: the dense weight and a bool mask. Saves nothing; it is the reference every other
representation must match, and the honest baseline for "sparsity without sparse storage".

Pruned weights are stored as exact zeros, so the forward pass uses the stored weight as it is (the
dense kernels, nothing added per step); only the weight's gradient is masked, in backward. Pruned
weights therefore stay exactly zero through any optimizer step: Adam/AdamW/SGD (momentum, weight
decay) leave a zero weight with zero gradient and zero state at zero. Multiplying the weight by the
mask in every forward pass would cost two extra weight-sized passes per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SparseWeight


class _MaskGradient(torch.autograd.Function):
    """Identity in forward (a view, no copy); zeroes the gradient at pruned positions in backward."""

    @staticmethod
    def forward(ctx, weight, kept_scale):
        ctx.kept = kept_scale
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        if grad.is_contiguous():
            # in place: the incoming gradient is the fresh output of the weight-gradient product
            # (linear's or conv's), used by nothing else, so a new weight-sized tensor is saved
            return grad.mul_(ctx.kept), None
        return grad * ctx.kept, None


class MaskedWeight(SparseWeight):
    name = "masked"
    packed = False

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, scheme)
        self.register_buffer("kept", mask.detach().clone().bool())
        # the gradient is masked by a float copy: a float multiply runs much faster than a bool one,
        # at 4 bytes per weight of training memory
        self.register_buffer("kept_scale", self.kept.float(), persistent=False)
        self.weight = nn.Parameter((weight.detach() * self.kept).contiguous())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.kept_scale.copy_(self.kept)  # derived from the loaded mask

    def effective_weight(self) -> torch.Tensor:
        return _MaskGradient.apply(self.weight, self.kept_scale)

    def linear(self, x):
        return self.linear_bias(x, None)

    def linear_bias(self, x, bias):  # the bias fused into the dense kernel, as nn.Linear does
        return F.linear(x, self.effective_weight().reshape(self.shape[0], -1), bias)

    def conv2d(self, x, stride, padding, dilation):
        return self.conv2d_bias(x, None, stride, padding, dilation)

    def conv2d_bias(self, x, bias, stride, padding, dilation):
        return F.conv2d(x, self.effective_weight(), bias, stride, padding, dilation)

    @property
    def stored(self):
        return self.weight

    def densify(self, stored_like):
        return stored_like * self.kept

    def gather(self, dense_like):
        return dense_like * self.kept

    def set_units(self, unit_mask):
        kept = unit_mask.to(self.kept.device).reshape(self.shape)
        self.kept.copy_(kept)
        self.kept_scale.copy_(kept)

    def mask(self):
        return self.kept
