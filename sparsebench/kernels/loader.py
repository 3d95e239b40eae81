"""This process's kernel library: load the verified build of the selected variant once, register
the Python halves of the ops (fake and autograd), and smoke-test it.

``state()`` does that on first use and remembers the outcome: the loaded variant, or the one-line
reason the kernels are unavailable. Where kernels are required (``SPARSEBENCH_REQUIRE_KERNELS=1``),
an unavailable library raises KernelsUnavailable instead of being reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from . import build_cache, isa
from .errors import ENV_REQUIRE, KernelsUnavailable, required

_lock = threading.Lock()


@dataclass
class _State:
    variant: str | None = None
    reason: str | None = None
    tried: bool = False


_state = _State()


def _smoke_test() -> str | None:
    """A tiny product of each op against dense; None when right, else what went wrong."""
    ops = torch.ops.sparse_linear
    W = torch.zeros(8, 8)
    W[:4, 4:] = torch.arange(16.0).reshape(4, 4)
    x = torch.arange(16.0).reshape(2, 8)
    one = torch.tensor([0, 1, 1]), torch.tensor([1])
    bias = torch.arange(8.0)
    y = ops.bsr_forward(x, W[:4, 4:].reshape(1, 4, 4).contiguous(), bias, *one, 8)
    if not torch.allclose(y, x @ W.t() + bias):
        return "BSR forward product disagrees with dense in the smoke test"
    keep = W != 0
    crow = torch.zeros(9, dtype=torch.int32)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].to(torch.int32)
    out = ops.csr_mm(crow, col, W[keep], x, None)
    if not torch.allclose(out, x @ W.t()):
        return "CSR product disagrees with dense in the smoke test"
    return None


def _load(v: str) -> None:
    so = build_cache.ensure_built(v)
    torch.ops.load_library(str(so))
    loaded = torch.ops.sparse_linear.isa()
    if loaded != v:
        raise KernelsUnavailable(f"kernel library {so} is the {loaded} variant, expected {v}")
    from . import ops  # noqa: F401  fake and autograd registrations (need the schemas loaded)

    problem = _smoke_test()
    if problem:
        raise KernelsUnavailable(f"kernel library {so} loads but fails its smoke test: {problem}")
    _state.variant = v


def loaded_variant() -> str | None:
    """The variant loaded so far (None before the first ``state()``): a plain read, for traced code."""
    return _state.variant


def state() -> _State:
    v = isa.variant()  # a forced variant this CPU cannot run is refused here, required or not
    with _lock:
        if not _state.tried:
            _state.tried = True
            try:
                _load(v)
            except KernelsUnavailable as err:
                _state.reason = str(err)
            except Exception as err:  # a load error from torch or the OS: one line, not a traceback
                _state.reason = f"kernel library failed to load: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
    if _state.reason and required():
        raise KernelsUnavailable(f"{_state.reason} ({ENV_REQUIRE}=1)")
    return _state
