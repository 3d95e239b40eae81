"""Registry: representation name -> the SparseWeight class that stores and computes with it.

Adding a representation: one module with a ``SparseWeight`` subclass (its autograd function
beside it), one entry here, one ``schemes.STORES`` entry (which schemes it stores, known without
torch), and its name in the property tests' list. ``auto`` is no class here: it is a selection
policy of ``sparsify`` (``representations.auto``) that picks one of these per layer.
"""

import warnings

import torch

# torch marks its sparse compressed layouts "beta" on every construction; we use them on purpose
warnings.filterwarnings("ignore", message="Sparse (CSR|BSR|CSC|BSC) tensor support is in beta state")
# invariant checks are off by default; saying so explicitly silences torch's warning about it
torch.sparse.check_sparse_tensor_invariants.disable()

from .base import RepresentationUnavailable, SparseConv2d, SparseLinear, SparseWeight  # noqa: E402
from .bsr import BsrWeight  # noqa: E402
from .bsr_cpp import BsrCppWeight  # noqa: E402
from .csr import CsrWeight  # noqa: E402
from .masked import MaskedWeight  # noqa: E402
from .semi import SemiWeight  # noqa: E402

REPRESENTATIONS: dict[str, type[SparseWeight]] = {
    "masked": MaskedWeight,
    "csr": CsrWeight,
    "bsr": BsrWeight,
    "bsr_cpp": BsrCppWeight,
    "semi": SemiWeight,
}

__all__ = ["REPRESENTATIONS", "RepresentationUnavailable", "SparseConv2d", "SparseLinear", "SparseWeight"]
