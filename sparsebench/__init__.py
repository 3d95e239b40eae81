"""sparsebench: what a sparsity pattern, stored in a given representation, costs and buys in
accuracy, memory and time."""

from .ledger import memory_ledger
from .patterns import PATTERNS, make_mask
from .representations import REPRESENTATIONS, RepresentationUnavailable
from .schemes import Scheme, parse_scheme
from .sparsify import sparsify

__all__ = ["PATTERNS", "REPRESENTATIONS", "RepresentationUnavailable", "Scheme", "make_mask", "memory_ledger",
           "parse_scheme", "sparsify"]
__version__ = "0.1.0"
