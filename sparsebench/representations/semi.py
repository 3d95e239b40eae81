"""``semi``: 2:4 semi-structured sparsity on NVIDIA GPUs (torch's ``to_sparse_semi_structured``,
CUTLASS/cuSPARSELt kernels). CUDA only: elsewhere it raises RepresentationUnavailable with the
reason, and callers skip it.

The weight is kept as a masked dense parameter (the 2:4 compressed form is rebuilt from it each
step); the forward product runs on the semi-structured kernel; the input gradient and the weight
gradient (masked to the kept positions) are dense products, as torch offers no 2:4 kernel for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..patterns import as_matrix
from .base import RepresentationUnavailable, SparseWeight


def semi_unavailable_reason(device: torch.device | None = None) -> str | None:
    if not torch.cuda.is_available():
        return "semi needs a CUDA GPU with 2:4 sparse tensor cores (sm80+); this machine has no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"semi needs compute capability 8.0 or newer; this GPU has {major}.x"
    return None


class _SemiMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, kept):
        from torch.sparse import to_sparse_semi_structured

        w = weight * kept
        ctx.save_for_backward(x, w, kept)
        return F.linear(x, to_sparse_semi_structured(w.to(x.dtype)))

    @staticmethod
    def backward(ctx, dy):
        x, w, kept = ctx.saved_tensors
        dx = dy @ w.to(dy.dtype)
        dw = (dy.t() @ x).to(w.dtype) * kept
        return dx, dw, None


class SemiWeight(SparseWeight):
    name = "semi"

    @classmethod
    def check_layer(cls, scheme, shape2d, layer):
        reason = semi_unavailable_reason()
        if reason:
            raise RepresentationUnavailable(f"layer {layer!r}: {reason}")
        if shape2d[0] % 32 or shape2d[1] % 64:
            raise ValueError(f"layer {layer!r}: semi needs a weight of rows divisible by 32 and cols by 64, "
                             f"got {shape2d}; leave this layer dense or use 'nm:2:4@masked'")

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, scheme)
        self.register_buffer("kept", as_matrix(mask).bool().clone())
        self.weight = nn.Parameter((as_matrix(weight).detach() * self.kept).contiguous())

    def linear(self, x):
        return _SemiMatmul.apply(x, self.weight, self.kept)

    @property
    def stored(self):
        return self.weight

    def densify(self, stored_like):
        return (stored_like * self.kept).reshape(self.shape)
