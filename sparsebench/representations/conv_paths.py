"""Which way a sparse convolution computes, chosen per layer and input shape by measurement.

* ``batch``: the direct kernels with the batch in the vector lanes (``csrc/conv.cpp``); fastest at
  training batch sizes, since every kept weight multiplies whole vectors of images.
* ``width``: the direct kernels with the output width in the lanes (``csrc/conv_width.cpp``); for a
  small batch, where ``batch``'s vectors would be mostly padding, on rows at least a vector long.
* ``im2col``: the weight's matrix products on im2col rows (``conv.conv2d_recompute``).

Where the direct kernels apply (float32 NCHW on the CPU, dilation 1, kernels built), the first
call at a new (layer geometry, storage, kept count, input shape, training or inference) times a
forward (and, in training, backward) pass of each path on a random input of that shape and keeps
the fastest (``batch`` unless another beats it by ``MARGIN``), as ``auto`` does for
representations; in memory for this process, and in ``<cache dir>/conv-paths.json`` keyed by
machine class and kernel build, so a later process with the same kernels reuses it. Under
``torch.compile`` tracing nothing is measured: a cached choice, else ``batch`` from a batch of
``DIRECT_MIN_BATCH``. ``forced(path)`` fixes the path (tests, ``benchmarks/conv_paths.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import kernels
from ..machine import cache_dir, this_machine
from ..timing import best_of
from . import choices
from .conv import DIRECT_MIN_BATCH, conv2d_recompute

PATHS = ("batch", "width", "im2col")
REPEATS = 3
# another path must beat `batch` (the training default) by this much: a narrow win in a few
# milliseconds of calibration can be noise, and a wrong pick would move every training step
MARGIN = 0.9
LOCK_TIMEOUT_S = 60

_memory: dict[tuple[int, str], str] = {}
_forced: list[str] = []


@contextlib.contextmanager
def forced(path: str) -> Iterator[None]:
    """Every sparse convolution in this block takes ``path`` where the direct kernels apply
    (``im2col`` everywhere)."""
    if path not in PATHS:
        raise ValueError(f"conv path must be one of {', '.join(PATHS)}, got {path!r}")
    _forced.append(path)
    try:
        yield
    finally:
        _forced.pop()


def direct_applies(x: torch.Tensor, dilation) -> bool:
    """Whether the direct kernels can compute this convolution: float32 NCHW on the CPU, dilation 1
    (kernels available is the caller's test)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and tuple(dilation) == (1, 1))


def _cache_path() -> Path:
    return cache_dir() / "conv-paths.json"


def _run(weight, path: str, x: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    if path == "im2col":
        return conv2d_recompute(weight, x, stride, padding, dilation)
    return kernels.sparse_conv2d(x, weight.values, weight.crow, weight.col, weight.block_shape, weight.shape[2:],
                                 stride, padding, None, vectorize=path)


def _time_ms(weight, path: str, shape, stride, padding, dilation, training: bool) -> float:
    x = torch.randn(shape, requires_grad=training)
    if not training:
        with torch.no_grad():
            return 1e3 * best_of(lambda: _run(weight, path, x, stride, padding, dilation), REPEATS)
    grad = torch.randn_like(_run(weight, path, x, stride, padding, dilation))

    def step():
        y = _run(weight, path, x, stride, padding, dilation)
        # both gradients, none accumulated into the layer's parameter
        torch.autograd.grad(y, [x, weight.stored], grad)

    return 1e3 * best_of(step, REPEATS)


def choose(weight, x: torch.Tensor, stride, padding, dilation) -> str:
    """The path ``weight`` (a csr or bsr_cpp SparseWeight) convolves ``x`` by."""
    if not direct_applies(x, dilation) or not kernels.available():
        return "im2col"
    if _forced:
        return _forced[-1]
    training = torch.is_grad_enabled() and (x.requires_grad or weight.stored.requires_grad)
    layer = "|".join([type(weight).__name__, "x".join(map(str, weight.block_shape)), "x".join(map(str, weight.shape)),
                      str(int(weight.stored.numel())), "x".join(map(str, x.shape)), "x".join(map(str, stride)),
                      "x".join(map(str, padding)), "train" if training else "infer"])
    # this process's own choices by the cheap part of the key (threads can change within a process)
    chosen = _memory.get((torch.get_num_threads(), layer))
    if chosen is not None:
        return chosen
    key = "|".join([this_machine(kernels.variant(), x.device)[1], kernels.build_key(), layer])
    path = _cache_path()
    cached = choices.load(path).get(key)
    if isinstance(cached, dict) and cached.get("chosen") in PATHS:
        _memory[(torch.get_num_threads(), layer)] = cached["chosen"]
        return cached["chosen"]
    if torch.compiler.is_compiling():
        return "batch" if x.shape[0] >= DIRECT_MIN_BATCH else "im2col"
    with torch.random.fork_rng():  # calibration draws no numbers from the caller's stream
        times = {p: _time_ms(weight, p, tuple(x.shape), stride, padding, dilation, training) for p in PATHS}
    chosen = min(times, key=times.get)
    if times[chosen] > MARGIN * times["batch"]:
        chosen = "batch"
    _memory[(torch.get_num_threads(), layer)] = chosen
    choices.save(path, key, {"chosen": chosen, "times_ms": times}, LOCK_TIMEOUT_S, "a conv path")
    return chosen
