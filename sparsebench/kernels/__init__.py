"""sparsebench's CPU sparse training kernels, as the PyTorch op library ``sparse_linear``.

A linear layer's sparse weight ``W`` (``out x in``) is stored either as BSR (``R x C`` blocks,
int64 indices, exactly as ``W.to_sparse_bsr((R, C))`` gives them: ``values (nnzb, R, C)``,
``row_ptr (out/R + 1)``, ``col_idx (nnzb)``) or as CSR (int32 ``row_ptr``; ``col`` int16 where
the layer has at most 32767 columns, else int32; float32 ``values``) with W^T's structure beside it
for the backward (int32 ``t_row_ptr`` and ``perm``; ``t_col``, W's row of each entry, int16 where
the layer has at most 32767 rows, else int32). The CSR ops accept int16 or int32 column indices
either way; ``representations.csr`` picks the narrower. The training products (forward, input
gradient, weight gradient at kept positions only) are ``torch.ops.sparse_linear.*`` custom
operators: schemas and checks in C++ (``csrc/``), fake and autograd registrations in :mod:`.ops`.
A conv weight in either storage, seen as its (out, in*kh*kw) matrix, convolves directly on the kept
weights with :func:`sparse_conv2d`, vectorised over the batch (``csrc/conv.cpp``) or over the output
width (``csrc/conv_width.cpp``). Layout of this package:

* :mod:`.isa`         the variants (avx512, avx2, generic): compiler flags, which this CPU runs, forcing one
* :mod:`.errors`      KernelsUnavailable, and when "unavailable" is an error (SPARSEBENCH_REQUIRE_KERNELS)
* :mod:`.build_cache` a variant's build: cache directory, build lock, child-process build, checksum
* :mod:`.loader`      this process's library: load once, register, smoke-test
* :mod:`.ops`         fake implementations and autograd of the ops
* ``csrc/``           ``ops.cpp`` (schemas), ``bsr.cpp``, ``csr.cpp``, ``conv.cpp``, ``conv_width.cpp``,
                      ``conv_width_narrow.cpp`` (the width kernels at 8 lanes, for the avx512 build's
                      short rows), ``conv_tiles.h`` (what the conv files share), ``common.h``

Public API: :func:`variant`, :func:`variant_forced`, :func:`available`, :func:`unavailable_reason`,
:func:`required`, :func:`build` (ahead of time: ``python -m sparsebench.kernels build``), and the
checked products below. With ``SPARSEBENCH_REQUIRE_KERNELS=1`` every "unavailable" becomes
:class:`KernelsUnavailable`, a RuntimeError whose message is one line naming the cause.
Kernels run on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import build_cache as _build
from . import isa as _isa
from . import loader as _loader
from .errors import KernelsUnavailable, required

__all__ = [
    "KernelsUnavailable",
    "available",
    "build",
    "build_key",
    "bsr_linear",
    "bsr_linear_forward",
    "bsr_linear_input_grad",
    "bsr_linear_weight_grad",
    "csr_linear",
    "csr_mm",
    "csr_sddmm",
    "required",
    "sparse_conv2d",
    "supported_variants",
    "transpose_structure",
    "unavailable_reason",
    "variant",
    "variant_forced",
]


def variant() -> str:
    """The kernel variant this process uses ("avx512", "avx2" or "generic"): ``SPARSEBENCH_CPU_ISA``
    when set, else the best one this CPU runs. Needs no build."""
    return _isa.variant()


def variant_forced() -> bool:
    """True when ``SPARSEBENCH_CPU_ISA`` chose the variant (a forced variant is its own machine class)."""
    return _isa.forced_variant() is not None


def build_key() -> str:
    """A hash of this variant's kernel sources and build flags: measurements of the kernels (a cached
    conv path choice) are only valid for the build they were made with."""
    return _source_key(variant())


@functools.cache
def _source_key(v: str) -> str:  # the sources are read once per process, not at every new layer shape
    return _build._key(v)


def supported_variants() -> list[str]:
    """Every variant this CPU can run, best first."""
    return _isa.supported_variants()


def available() -> bool:
    """True when this process's variant is built (building it on the first call), loads and passes
    its smoke test. Raises KernelsUnavailable instead of returning False when kernels are required."""
    if torch.compiler.is_compiling():  # traced by torch.compile: read what was loaded eagerly, touch nothing
        return _loader.loaded_variant() is not None
    return _loader.state().variant is not None


def unavailable_reason() -> str | None:
    """One line saying why :func:`available` is False; None when available."""
    return _loader.state().reason


def build(variant_name: str | None = None) -> Path:
    """Build (or verify the cached build of) a variant ahead of time, without loading it here;
    returns the library's path. Raises KernelsUnavailable with one line when it cannot be built."""
    v = variant_name or variant()
    if v not in _isa.supported_variants():
        raise KernelsUnavailable(f"variant {v!r} cannot run on this CPU; it runs {', '.join(supported_variants())}")
    return _build.ensure_built(v)


def _ops():
    if not available():
        raise KernelsUnavailable(f"sparsebench kernels unavailable: {unavailable_reason()}")
    return torch.ops.sparse_linear


# ------------------------------------------------------------------ structure
def transpose_structure(row_ptr: torch.Tensor, col_idx: torch.Tensor, n_cols: int):
    """W^T's compressed structure from W's (CSR, or BSR at block level): ``(t_row_ptr, t_col_idx,
    perm)`` in ``row_ptr``'s dtype, such that ``t_row_ptr`` (``n_cols + 1``) indexes per column of W
    into ``t_col_idx`` (the row of each kept entry, increasing) and ``perm`` (its index in W's
    values): ``values[perm]`` are W^T's values. Depends on the pattern only: compute it once."""
    # In W's row-major order the rows never decrease, so a stable sort by column alone is W^T's
    # row-major order. int32 throughout (the largest transient is the sort's int64 order), so
    # building a large layer's structure costs a few bytes per kept weight, not tens.
    crow, col = row_ptr.cpu(), col_idx.cpu().to(torch.int32)
    rows = crow.shape[0] - 1
    r = torch.repeat_interleave(torch.arange(rows, dtype=torch.int32), torch.diff(crow.long()))
    perm = torch.sort(col, stable=True).indices
    t_col = r[perm]
    del r
    t_crow = torch.zeros(int(n_cols) + 1, dtype=torch.int64)
    if col.numel():
        t_crow[1:] = torch.cumsum(torch.bincount(col, minlength=int(n_cols)), 0)
    return tuple(t.to(row_ptr.dtype).to(row_ptr.device).contiguous() for t in (t_crow, t_col, perm))


# ------------------------------------------------------------------ BSR
def bsr_linear(x, values, row_ptr, col_idx, transposed, out_features: int, bias=None) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` for BSR ``W``, differentiable in ``x``, ``values`` and ``bias``.
    ``transposed`` is :func:`transpose_structure` of ``(row_ptr, col_idx)`` (int64), used by the backward."""
    return _ops().bsr_linear(x, values, bias, row_ptr, col_idx, *transposed, int(out_features))


def bsr_linear_forward(x, values, row_ptr, col_idx, out_features: int, bias=None) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` (n, out_features) for float32 ``x`` (n, in); no autograd."""
    return _ops().bsr_forward(x, values, bias, row_ptr, col_idx, int(out_features))


def bsr_linear_input_grad(dy, values, row_ptr, col_idx, in_features: int, transposed=None) -> torch.Tensor:
    """``dx = dy @ W`` (n, in_features). ``transposed``: :func:`transpose_structure` of the pattern
    (computed here when None)."""
    if transposed is None:
        transposed = transpose_structure(row_ptr, col_idx, int(in_features) // values.shape[2])
    return _ops().bsr_input_grad(dy, values, *transposed, int(in_features))


def bsr_linear_weight_grad(dy, x, row_ptr, col_idx, block) -> torch.Tensor:
    """``(dy^T @ x)`` at the kept blocks, (nnzb, R, C) in the order of ``values``."""
    try:
        R, C = (int(b) for b in block)
    except Exception:
        raise ValueError(f"block must be a pair (R, C), got {block!r}") from None
    return _ops().bsr_weight_grad(dy, x, row_ptr, col_idx, R, C)


# ------------------------------------------------------------------ CSR
def csr_linear(x, values, bias, row_ptr, col, transposed) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` for CSR ``W`` (out, in) and row-major ``x`` (n, in), differentiable
    in ``x``, ``values`` and ``bias``. ``transposed``: W^T's structure ``(t_row_ptr, t_col, perm)``, for
    the backward. ``row_ptr``, ``t_row_ptr`` and ``perm`` int32; ``col`` and ``t_col`` int16 or int32
    (``representations.csr`` stores int16 where W has at most 32767 columns, rows for ``t_col``)."""
    return _ops().csr_linear(x, values, bias, row_ptr, col, *transposed)


def csr_mm(row_ptr, col, values, x: torch.Tensor, cols: int, bias: torch.Tensor | None = None,
           perm: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ A^T (+ bias)`` for CSR ``A`` (rows x cols) and dense row-major ``x`` (n, cols); with
    ``perm``, A's k-th value is ``values[perm[k]]`` (W^T's values read from W's, no copy)."""
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must have {cols} columns (the sparse matrix's columns), got shape {tuple(x.shape)}")
    return _ops().csr_mm(row_ptr, col, values, x, bias, perm)


def csr_sddmm(row_ptr, col, dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(dy^T @ x)`` at the CSR pattern's positions, in its order: ``dy`` (n, rows), ``x`` (n, cols)."""
    return _ops().csr_sddmm(row_ptr, col, dy, x)


# ------------------------------------------------------------------ direct sparse convolution
def sparse_conv2d(x, values, row_ptr, col, block, kernel, stride, padding, bias=None,
                  vectorize: str = "batch") -> torch.Tensor:
    """``conv2d(x, W) + bias`` for NCHW float32 ``x`` and ``W`` (out, in, kh, kw) stored over its
    (out, in*kh*kw) matrix as CSR (``block`` (1, 1), ``values`` (nnz)) or BSR (``block`` (R, C),
    ``values`` (nnzb, R, C)); ``row_ptr`` and ``col`` any of int16/int32/int64. Computed on the
    kept weights directly (no im2col rows, no dense weight); differentiable in ``x``, ``values``
    and ``bias``. Zero padding, dilation 1, groups 1. ``vectorize``: ``"batch"`` (the batch in the
    vector lanes, output channels-last in memory) or ``"width"`` (the output width in the lanes, for
    small batches; output NCHW contiguous)."""
    if vectorize not in ("batch", "width"):
        raise ValueError(f"vectorize must be 'batch' or 'width', got {vectorize!r}")
    pair = lambda v: [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]  # noqa: E731
    op = _ops().sparse_conv2d_width if vectorize == "width" else _ops().sparse_conv2d
    return op(x, values, bias, row_ptr, col, pair(block), pair(kernel), pair(stride), pair(padding))
