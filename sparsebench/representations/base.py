"""What every representation is: a module holding one layer's sparse weight, and the two layers
(Linear, Conv2d) that compute with it.

A representation subclasses ``SparseWeight`` and implements ``linear(x)`` (``x @ W^T`` for a
2-D ``x``) with its own kernels and autograd, ``to_dense()`` and ``mask()``. ``conv2d`` has a
default that unfolds the input into columns and calls ``linear``, so a representation that only
knows matrix products also serves conv layers (the im2col machinery is in ``conv``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..schemes import Scheme
from .conv import conv2d_recompute


class RepresentationUnavailable(RuntimeError):
    """The representation cannot run on this machine (e.g. ``semi`` without CUDA); a reason, not a bug."""


class SparseWeight(nn.Module):
    name: ClassVar[str]  # its key in REPRESENTATIONS; which schemes it stores is schemes.STORES[name]
    # True: ``stored`` holds only the kept units, in row-major unit order (a mask update resizes it);
    # False: ``stored`` is the dense weight (``masked``), zero at pruned positions
    packed: ClassVar[bool] = True
    # True: another project's kernels, shown beside sparsebench's; ``auto`` never picks it
    peer: ClassVar[bool] = False

    def __init__(self, weight: torch.Tensor, scheme: Scheme):
        """The layer's shape and scheme; a subclass takes ``(weight, mask, scheme)`` and stores what
        it keeps of them."""
        super().__init__()
        self.shape = tuple(weight.shape)  # the layer's weight shape (4-D for conv)
        self.scheme = scheme

    @classmethod
    def check_layer(cls, scheme: Scheme, shape2d: tuple[int, int], layer: str) -> None:
        """Refuse a layer this representation cannot serve here (shape, device, kernels): ValueError
        or RepresentationUnavailable naming the layer and the fix. Default: any."""

    @classmethod
    def unsupported(cls, dtype: torch.dtype, device: torch.device) -> str | None:
        """Why this representation cannot compute in ``dtype`` on ``device`` (None: it can). Default: anywhere."""
        return None

    # -- computing -----------------------------------------------------------------------
    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` for ``x`` of shape (n, in)."""
        raise NotImplementedError

    def conv2d(self, x: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
        """The convolution as ``linear`` on the im2col rows, in chunks of images, keeping only ``x``
        for backward (``conv.conv2d_recompute``): the columns are rebuilt chunk by chunk there."""
        return conv2d_recompute(self, x, stride, padding, dilation)

    # -- the products without autograd, for the conv path (override with the representation's kernels)
    def linear_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` without recording autograd."""
        with torch.no_grad():
            return self.linear(x)

    def linear_backward(self, dy: torch.Tensor, x: torch.Tensor, need_x: bool, need_w: bool):
        """(dx, d stored) of ``y = x @ W^T`` for the output gradient ``dy``. Default: the
        representation's own autograd, on a recomputed product."""
        x = x.detach().requires_grad_(need_x)
        stored = self.stored
        with torch.enable_grad():
            y = self.linear(x)
            wanted = [t for t, need in ((x, need_x), (stored, need_w)) if need]
            grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True))
        return (next(grads) if need_x else None), (next(grads) if need_w else None)

    def linear_bias(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W^T + bias``. A representation whose kernel can fuse the bias overrides this."""
        y = self.linear(x)
        return y if bias is None else y + bias

    def conv2d_bias(self, x: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
        y = self.conv2d(x, stride, padding, dilation)
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    # -- inspecting ----------------------------------------------------------------------
    @property
    def stored(self) -> nn.Parameter:
        """The parameter the optimizer sees (dense weight for masked, kept values otherwise)."""
        raise NotImplementedError

    def densify(self, stored_like: torch.Tensor) -> torch.Tensor:
        """Scatter a tensor laid out like ``stored`` into the layer's dense weight shape (zeros elsewhere)."""
        raise NotImplementedError

    def gather(self, dense_like: torch.Tensor) -> torch.Tensor:
        """The inverse of ``densify``: a tensor of the layer's shape laid out like ``stored`` (its values at
        the kept positions), e.g. an optimizer state carried over from another representation."""
        raise NotImplementedError

    @property
    def storage_unit(self) -> tuple[int, int]:
        """The (rows, cols) one stored entry covers: a weight (csr, masked) or a block (bsr)."""
        return (1, 1)

    def set_units(self, unit_mask: torch.Tensor) -> None:
        """Store a new structure: ``unit_mask`` (bool, the layer's matrix in ``storage_unit`` units) says
        which are kept. Only the structure changes here; ``restructure.restructure`` moves the values and
        the optimizer state."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense tensor of the layer's shape, zeros at pruned positions."""
        return self.densify(self.stored.detach())

    def dense_grad(self) -> torch.Tensor | None:
        """The weight gradient in the layer's dense shape (zeros at pruned positions), or None."""
        return None if self.stored.grad is None else self.densify(self.stored.grad)

    def mask(self) -> torch.Tensor:
        """Bool tensor of the layer's shape, True = kept."""
        return self.densify(torch.ones_like(self.stored, dtype=torch.float32)) != 0

    def structure_buffers(self) -> list[torch.Tensor]:
        """Tensors that store where the kept weights are (masks, indices): the ledger's overhead."""
        return list(self.buffers(recurse=False))

    @property
    def dense_numel(self) -> int:
        return math.prod(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, scheme='{self.scheme}'"


class SparseLayer(nn.Module):
    """What SparseLinear and SparseConv2d share: a SparseWeight, an optional bias, the layer's name in its
    model (``layer``, set by ``sparsify``, for messages), a read-only dense ``weight`` for code that reads
    one, and a check at ``.to()`` / ``.half()`` / ``.cuda()`` that the representation runs where it goes."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None):
        super().__init__()
        self.sparse_weight = weight
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.layer = "?"

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, rebuilt from the stored values at each access: zeros at pruned positions, and
        gradients reach the kept values. For code that reads ``.weight`` itself (nn.MultiheadAttention's
        ``out_proj``, nn.TransformerEncoderLayer's fused inference path), which then computes densely.
        Writing into it changes nothing; this layer's own forward uses the representation's kernels."""
        return self.sparse_weight.densify(self.sparse_weight.stored)

    def _apply(self, fn, recurse=True):
        stored = self.sparse_weight.stored
        # where ``fn`` would move the stored values: applied to an empty tensor like them, before anything moves
        target = fn(torch.empty(0, dtype=stored.dtype, device=stored.device))
        why = self.sparse_weight.unsupported(target.dtype, target.device)
        if why:
            raise RepresentationUnavailable(
                f"layer {self.layer!r} is stored '{self.sparse_weight.name}', which cannot run in {target.dtype} on "
                f"{target.device.type}: {why}. Sparsify it with a representation that runs there ('masked' runs "
                "anywhere), or turn the model back into dense layers first (sparsebench.unsparsify)")
        return super()._apply(fn, recurse)


class SparseLinear(SparseLayer):
    """Drop-in for nn.Linear whose weight is a SparseWeight."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None):
        super().__init__(weight, bias)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.sparse_weight.linear_bias(x.reshape(-1, self.in_features), self.bias)
        return y.reshape(*lead, self.out_features)

    def plain(self) -> nn.Linear:
        """An nn.Linear computing the same function (pruned weights zero)."""
        layer = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                   device=self.sparse_weight.stored.device, dtype=self.sparse_weight.stored.dtype)
        return _filled(layer, self)


class SparseConv2d(SparseLayer):
    """Drop-in for nn.Conv2d (groups=1) whose weight is a SparseWeight. Any padding mode and padding
    (numbers, 'same', 'valid') is kept; the kernels see zero padding (ph, pw), or an input padded first
    (``F.pad``) where the conv's padding is not that."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None, conv: nn.Conv2d):
        super().__init__(weight, bias)
        self.stride, self.dilation = conv.stride, conv.dilation
        self.padding, self.padding_mode = conv.padding, conv.padding_mode  # as the conv had them
        if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
            self.input_padding, self.kernel_padding = None, tuple(conv.padding)
        else:
            self.input_padding, self.kernel_padding = tuple(conv._reversed_padding_repeated_twice), (0, 0)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the kernels take it (padded first where the conv's padding is not plain zeros)."""
        if self.input_padding is None:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return nn.functional.pad(x, self.input_padding, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse_weight.conv2d_bias(self.padded(x), self.bias, self.stride, self.kernel_padding,
                                              self.dilation)

    def plain(self) -> nn.Conv2d:
        """An nn.Conv2d computing the same function (pruned weights zero)."""
        out_ch, in_ch, kh, kw = self.sparse_weight.shape
        layer = nn.utils.skip_init(nn.Conv2d, in_ch, out_ch, (kh, kw), stride=self.stride, padding=self.padding,
                                   dilation=self.dilation, bias=self.bias is not None, padding_mode=self.padding_mode,
                                   device=self.sparse_weight.stored.device, dtype=self.sparse_weight.stored.dtype)
        return _filled(layer, self)


def _filled(layer: nn.Module, sparse: SparseLayer) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(sparse.sparse_weight.to_dense())
        if sparse.bias is not None:
            layer.bias.copy_(sparse.bias)
    return layer
