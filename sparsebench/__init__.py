"""sparsebench: what a sparsity pattern, stored in a given representation, costs and buys in
accuracy, memory and time.

The names below are imported on first use (PEP 562), so ``from sparsebench.schemes import
parse_scheme`` validates a scheme without importing torch.
"""

import sys
import types
from importlib import import_module

# public name -> the core module that defines it
_EXPORTS = {
    "PATTERNS": "patterns",
    "make_mask": "patterns",
    "REPRESENTATIONS": "representations",
    "RepresentationUnavailable": "representations",
    "SparseConv2d": "representations",
    "SparseLinear": "representations",
    "SparseWeight": "representations",
    "Scheme": "schemes",
    "parse_scheme": "schemes",
    "sparsify": "sparsify",
    "unsparsify": "unsparsify",
    "summary": "summary",
    "MaskUpdater": "updater",
    "SCHEDULES": "schedules",
    "memory_ledger": "ledger",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'sparsebench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Importing the submodule ``sparsebench.sparsify`` makes Python set the package attribute
    ``sparsify`` to that module; the attribute stays the function, as an eager import left it."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
