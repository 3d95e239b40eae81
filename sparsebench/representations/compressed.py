"""torch's sparse compressed tensors (CSR, BSR) as the representations build them.

Two things are settled here, for sparsebench's own tensors only, so that importing sparsebench leaves
the user's process as it was: torch's "beta state" warning is silenced around each construction (it
says nothing a user of these representations can act on), and the invariant checks follow the user's
own setting (``torch.sparse.check_sparse_tensor_invariants``), passed explicitly so torch does not
warn that they are "implicitly disabled".
"""

from __future__ import annotations

import warnings

import torch

BETA_WARNING = "Sparse (CSR|BSR|CSC|BSC) tensor support is in beta state"


def _checks() -> bool:
    return torch.sparse.check_sparse_tensor_invariants.is_enabled()


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BETA_WARNING)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=_checks())


def bsr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BETA_WARNING)
        return torch.sparse_bsr_tensor(crow, col, values, size, check_invariants=_checks())
