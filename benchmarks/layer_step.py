"""One training step of a single layer (forward, backward with input gradient, Adam step), the unit
the layer benchmark times. Timing itself is ``sparsebench.timing`` (interleaved, one ratio
convention: speed-up = 1 / time_ratio). ``PeerStep`` is the same step through SparseProp's layers
(IST-DASLab's published CPU sparse-backprop library), where it is installed."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench import allocator, memory_ledger, sparsify

# the layer shapes of the reference models: Linear (tokens, in, out)
SHAPES = {
    "ffn": (4096, 512, 2048),  # transformer feed-forward: 4096 tokens (batch 8 x 512), 512 -> 2048
    "fc": (64, 4096, 512),  # CNN's first fully connected layer: batch 64, 4096 -> 512
}
# Conv2d 3x3, padding 1: (batch, in, out, image side); the seed CNN's sparse conv layers
CONV_SHAPES = {
    "conv2": (64, 64, 128, 16),
    "conv3": (64, 128, 256, 8),
}


def describe(shape: str) -> str:
    if shape in CONV_SHAPES:
        b, cin, cout, side = CONV_SHAPES[shape]
        return f"Conv2d 3x3 {cin} -> {cout} at {side}x{side}, batch {b}"
    tokens, d_in, d_out = SHAPES[shape]
    return f"Linear {tokens} tokens x {d_in} -> {d_out}"


def _layer_and_data(shape: str, gen: torch.Generator):
    if shape in CONV_SHAPES:
        b, cin, cout, side = CONV_SHAPES[shape]
        layer = nn.Conv2d(cin, cout, 3, padding=1)
        return layer, torch.randn(b, cin, side, side, generator=gen), torch.randn(b, cout, side, side, generator=gen)
    tokens, d_in, d_out = SHAPES[shape]
    return nn.Linear(d_in, d_out), torch.randn(tokens, d_in, generator=gen), torch.randn(tokens, d_out, generator=gen)


class LayerStep:
    """A layer under ``scheme`` with Adam, fixed input and output gradient; ``step()`` trains once."""

    def __init__(self, shape: str, scheme: str, seed: int = 0):
        allocator.keep_freed_memory()  # as in every training process of the harness (sparsebench/allocator.py)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        layer, x, self.grad_out = _layer_and_data(shape, gen)
        self.x = x.requires_grad_()  # as inside a network: dx is needed
        self.model = sparsify(nn.Sequential(layer), scheme, seed=seed, keep_dense=[], example_inputs=self.x.detach())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None
        self.model(self.x).backward(self.grad_out)
        self.optimizer.step()

    def representation(self) -> str:
        layer = self.model[0]
        return layer.sparse_weight.name if hasattr(layer, "sparse_weight") else "dense"

    def plain_layer(self) -> nn.Module:
        """The layer as torch's own module with the same kept weights (pruned ones zero)."""
        layer = self.model[0]
        return layer.plain() if hasattr(layer, "plain") else layer

    def ledger(self) -> dict[str, int]:
        return memory_ledger(self.model, self.optimizer)


def peer_unavailable() -> str | None:
    """Why SparseProp cannot be measured here (None: it can)."""
    try:
        import sparseprop.modules  # noqa: F401
    except Exception as err:  # not installed, or its extension does not load
        return f"SparseProp not importable ({type(err).__name__}: {err}); pip install sparseprop"
    return None


class PeerStep:
    """The same training step with ``sparse``'s kept weights in SparseProp's layer: for a conv its
    ``sparsify_conv2d_auto`` (which measures its two vectorisations and keeps the faster), for a
    Linear its SparseLinear; Adam (fused) over its parameters."""

    def __init__(self, sparse: LayerStep):
        from sparseprop import modules as spm

        self.x, self.grad_out = sparse.x.detach().clone().requires_grad_(), sparse.grad_out
        plain = sparse.plain_layer()
        if isinstance(plain, nn.Conv2d):
            self.layer = spm.sparsify_conv2d_auto(plain, tuple(self.x.shape))
        else:
            bias = None if plain.bias is None else nn.Parameter(plain.bias.detach().clone())
            self.layer = spm.SparseLinear(plain.weight.detach().clone(), bias=bias)
        self.optimizer = torch.optim.Adam(self.layer.parameters(), lr=1e-3, fused=True)
        self.check(plain)

    def check(self, plain: nn.Module) -> None:
        """SparseProp must compute the same function as the dense layer with the same kept weights."""
        with torch.no_grad():
            ours, ref = self.layer(self.x), plain(self.x)
        err = ((ours - ref).norm() / ref.norm()).item()
        if err > 1e-5:
            raise RuntimeError(f"SparseProp's layer disagrees with the dense reference (relative error {err:.1e})")

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None
        self.layer(self.x).backward(self.grad_out)
        self.optimizer.step()

    def representation(self) -> str:
        return repr(self.layer)
