"""One training step of a single layer (forward, backward with input gradient, Adam step), the unit
the layer benchmark times. Timing itself is ``sparsebench.timing`` (interleaved, one ratio
convention: speed-up = 1 / time_ratio)."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench import allocator, memory_ledger, sparsify

# the layer shapes of the reference models: (tokens, in, out)
SHAPES = {
    "ffn": (4096, 512, 2048),  # transformer feed-forward: 4096 tokens (batch 8 x 512), 512 -> 2048
    "fc": (64, 4096, 512),  # CNN's first fully connected layer: batch 64, 4096 -> 512
}


class LayerStep:
    """A Linear layer under ``scheme`` with Adam, fixed input and output gradient; ``step()`` trains once."""

    def __init__(self, shape: str, scheme: str, seed: int = 0):
        allocator.keep_freed_memory()  # as in every training process of the harness (sparsebench/allocator.py)
        tokens, d_in, d_out = SHAPES[shape]
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.x = torch.randn(tokens, d_in, generator=gen).requires_grad_()  # as inside a network: dx is needed
        self.grad_out = torch.randn(tokens, d_out, generator=gen)
        self.model = sparsify(nn.Sequential(nn.Linear(d_in, d_out)), scheme, seed=seed, keep_dense=[],
                              example_inputs=self.x.detach())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None
        self.model(self.x).backward(self.grad_out)
        self.optimizer.step()

    def representation(self) -> str:
        layer = self.model[0]
        return layer.sparse_weight.name if hasattr(layer, "sparse_weight") else "dense"

    def ledger(self) -> dict[str, int]:
        return memory_ledger(self.model, self.optimizer)
