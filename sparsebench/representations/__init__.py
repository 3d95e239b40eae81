"""Registry: representation name -> the SparseWeight class that stores and computes with it.

Adding a representation: one module with a ``SparseWeight`` subclass (its autograd function
beside it), one entry here, one ``schemes.STORES`` entry (which schemes it stores, known without
torch), and its name in the property tests' list. ``auto`` is no class here: it is a selection
policy of ``sparsify`` (``representations.auto``) that picks one of these per layer.

Importing it changes nothing global: torch's sparse-tensor warnings and invariant checks are handled
where sparsebench builds its tensors (``compressed``).
"""

from .base import RepresentationUnavailable, SparseConv2d, SparseLinear, SparseWeight
from .bsr import BsrWeight
from .bsr_cpp import BsrCppWeight
from .csr import CsrWeight
from .masked import MaskedWeight
from .semi import SemiWeight
from .sparseprop import SparsePropWeight

REPRESENTATIONS: dict[str, type[SparseWeight]] = {
    "masked": MaskedWeight,
    "csr": CsrWeight,
    "bsr": BsrWeight,
    "bsr_cpp": BsrCppWeight,
    "semi": SemiWeight,
    "sparseprop": SparsePropWeight,  # the published peer, where installed (sparsebench[peers])
}

__all__ = ["REPRESENTATIONS", "RepresentationUnavailable", "SparseConv2d", "SparseLinear", "SparseWeight"]
