"""``sparseprop``: the published peer as a representation. SparseProp (IST-DASLab, Nikdan et al.
2023; ``pip install 'sparsebench[peers]'``) stores a layer's kept weights in its own CSR-like
format and trains with its own CPU kernels; sparsebench wraps them unchanged so that the layer
benchmark and the study's cost sweep can show the peer beside sparsebench's own kernels, under the
same property tests against the masked reference.

Optional, like ``semi``: where the package is not installed (or its extension does not load),
``check_layer`` raises RepresentationUnavailable with the reason and callers skip it. Its conv
kernels take square kernels, one stride (1 or 2) and one zero padding for both dimensions, no
dilation; other convs are refused with the fix. They vectorise over the batch (SparseProp's
other choice, over the output width, it selects by measuring a given input shape, which a
representation does not have), and compute wrong results for a batch that is not a multiple of 8
(found by the property tests), so such a batch is zero-padded to one first.

The format is built from the mask, not from the nonzero weights (SparseProp's own converter keeps
only nonzeros, which would drop a kept weight that is zero, as every weight RigL grows is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..patterns import as_matrix
from .base import RepresentationUnavailable, SparseWeight


def sparseprop_unavailable_reason() -> str | None:
    try:
        from sparseprop.modules import functions  # noqa: F401
    except Exception as err:  # not installed, or its compiled backend does not load
        return (f"SparseProp is not importable here ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "pip install 'sparsebench[peers]'")
    return None


def _conv_format(kept4d: torch.Tensor):
    """SparseProp's conv index format for a kept mask (out, in, k, k): per-output-channel starts
    (int32, out + 1), per (out, in) starts within the channel (int16, out * (in + 1)), and each
    entry's kernel row and column (uint8), entries in the row-major order of the (out, in*k*k)
    matrix, which is the order of the values."""
    out_ch, in_ch, k, _ = kept4d.shape
    per_in = kept4d.reshape(out_ch, in_ch, k * k).sum(2)  # kept per (out, in)
    w_oc = torch.zeros(out_ch + 1, dtype=torch.int64)
    w_oc[1:] = per_in.sum(1).cumsum(0)
    w_ic = torch.zeros(out_ch, in_ch + 1, dtype=torch.int64)
    w_ic[:, 1:] = per_in.cumsum(1)
    if out_ch and int(w_ic[:, -1].max()) > 32767:
        raise ValueError("SparseProp's int16 index cannot hold more than 32767 kept weights per output channel")
    where = kept4d.nonzero()
    return (w_oc.int(), w_ic.reshape(-1).short(), where[:, 2].to(torch.uint8).contiguous(),
            where[:, 3].to(torch.uint8).contiguous())


class SparsePropWeight(SparseWeight):
    name = "sparseprop"
    peer = True

    @classmethod
    def check_layer(cls, scheme, shape2d, layer):
        reason = sparseprop_unavailable_reason()
        if reason:
            raise RepresentationUnavailable(f"layer {layer!r}: {reason}")

    @classmethod
    def unsupported(cls, dtype, device):
        if device.type != "cpu" or dtype != torch.float32:
            return "SparseProp's kernels run float32 on the CPU only"
        return None

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, scheme)
        if len(self.shape) == 4 and self.shape[2] != self.shape[3]:
            raise ValueError(f"sparseprop convolves with square kernels only, got {tuple(self.shape[2:])}; "
                             "use '@csr' for this layer")
        self.register_buffer("kept", mask.detach().clone().bool())
        self.values = nn.Parameter(as_matrix(weight).detach()[as_matrix(self.kept)].contiguous())
        self._index()

    def _index(self):
        if len(self.shape) == 4:
            self._conv_idx = _conv_format(self.kept.cpu())
        else:
            m = as_matrix(self.kept).cpu()
            crow = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
            crow[1:] = m.sum(1).cumsum(0)
            self._linear_idx = (crow.int(), m.nonzero()[:, 1].int().contiguous())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index()

    def linear(self, x):
        from sparseprop.modules.functions import SparseLinearFunction

        return SparseLinearFunction.apply(x, self.values, self._linear_idx, None, self.shape[0])

    def conv2d(self, x, stride, padding, dilation):
        from sparseprop.modules.functions import SparseConvFunction

        (sh, sw), (ph, pw) = tuple(stride), tuple(padding)
        if sh != sw or ph != pw or sh not in (1, 2) or tuple(dilation) != (1, 1):
            raise RepresentationUnavailable(
                f"sparseprop convolves with one stride of 1 or 2 and one padding for both dimensions, no dilation; "
                f"got stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}; use '@csr'")
        n = x.shape[0]
        pad = -n % 8  # its batch-vectorised kernels miscompute a batch that is not a multiple of 8
        xp = F.pad(x, (0, 0, 0, 0, 0, 0, 0, pad)) if pad else x
        y = SparseConvFunction.apply(xp.contiguous(), self.values, self._conv_idx, None, self.shape[0],
                                     self.shape[2], ph, sh, False, False)
        return y[:n] if pad else y

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = stored_like.new_zeros(as_matrix(self.kept).shape)
        dense[as_matrix(self.kept)] = stored_like
        return dense.reshape(self.shape)

    def gather(self, dense_like):
        return as_matrix(dense_like)[as_matrix(self.kept)]

    def set_units(self, unit_mask):
        self.kept.copy_(unit_mask.to(self.kept.device).reshape(self.shape))
        self._index()

    def mask(self):
        return self.kept
