"""``auto``: for each layer, whichever valid representation trains fastest on this machine for
that layer's shape and batch, measured once and cached.

At sparsify time every representation that can store the scheme on this layer (``masked``, which
runs at dense speed, is always one) is built from the layer's real weight and mask and timed on a
forward and backward pass over an input of the layer's training shape, with the rows capped at
``ROWS`` so each measurement takes milliseconds; the fastest is used. Choices are cached per machine
(CPU, torch version, threads), layer kind, weight shape, input shape and scheme in
``<cache dir>/auto-choices.json``, and recorded in each run's result.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

from .base import RepresentationUnavailable, SparseConv2d, SparseLinear, SparseWeight

ROWS = 4096  # calibration rows (tokens, or conv output positions): the real size of the layers benchmarked here
REPEATS = 3
# A sparse representation must beat `masked` (dense kernels) by this much to be chosen: a narrow win
# in a few milliseconds of calibration can be noise (at 1024 rows torch's csr once won narrowly and
# then lost, 0.74x dense, at 4096).
MARGIN = 0.9


def _wrap(cls, layer: nn.Module, mask: torch.Tensor, scheme) -> nn.Module:
    weight = cls(layer.weight.detach(), mask, scheme)
    return SparseLinear(weight, layer.bias) if isinstance(layer, nn.Linear) else SparseConv2d(weight, layer.bias, layer)


def _calibration_input(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        rows = min(ROWS, max(1, int(torch.tensor(shape[:-1]).prod())))
        return torch.randn(rows, shape[-1])
    positions = shape[2] * shape[3]  # conv: keep the image size, cap the batch
    return torch.randn(max(1, min(shape[0], ROWS // positions)), *shape[1:])


def _time_ms(module: nn.Module, x: torch.Tensor) -> float:
    """Best of REPEATS forward + backward passes, after a warm-up. The output gradient is a real
    dense tensor, as in training: ``y.sum().backward()`` would hand the layer an expanded (stride 0)
    gradient, and a representation that copies it pays a cost training never sees."""
    x = x.requires_grad_()
    grad = torch.randn_like(module(x))
    best = float("inf")
    for i in range(REPEATS + 1):  # the first is a warm-up
        start = time.perf_counter()
        module(x).backward(grad)
        elapsed = time.perf_counter() - start
        if i:
            best = min(best, elapsed)
    return 1e3 * best


def _cache_path():
    from ..data import default_cache_dir

    return default_cache_dir() / "auto-choices.json"


def _machine_key() -> str:
    from ..measure import cpu_name

    return f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _load_cache(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: measure again


class AutoWeight(SparseWeight):
    name = "auto"
    needs_input_shapes = True

    @classmethod
    def candidates(cls, scheme, shape2d, layer_name) -> list[type[SparseWeight]]:
        from . import REPRESENTATIONS

        valid = []
        for rep in REPRESENTATIONS.values():
            if rep is cls:
                continue
            try:
                rep.check_scheme(scheme.with_representation(rep.name))
                rep.check_layer(scheme, shape2d, layer_name)
            except (ValueError, RepresentationUnavailable):
                continue
            valid.append(rep)
        return valid

    @classmethod
    def resolve(cls, scheme, layer_name, layer, mask, input_shape):
        from . import REPRESENTATIONS

        if input_shape is None:
            raise ValueError(f"layer {layer_name!r}: 'auto' times each representation at the layer's input shape; "
                             "pass sparsify(..., example_inputs=a training batch)")
        shape2d = (layer.weight.shape[0], layer.weight[0].numel())
        key = "|".join([_machine_key(), type(layer).__name__, "x".join(map(str, layer.weight.shape)),
                        "x".join(map(str, input_shape)), str(scheme)])
        path = _cache_path()
        cached = _load_cache(path).get(key)
        if cached and cached["chosen"] in REPRESENTATIONS:
            return REPRESENTATIONS[cached["chosen"]]
        x = _calibration_input(layer, input_shape)
        times = {rep.name: _time_ms(_wrap(rep, layer, mask, scheme), x)
                 for rep in cls.candidates(scheme, shape2d, layer_name)}
        chosen = min(times, key=times.get)
        if "masked" in times and times[chosen] > MARGIN * times["masked"]:
            chosen = "masked"  # a narrow win at calibration size is noise or does not scale
        decision = {"chosen": chosen, "times_ms": times, "calibration_input": list(x.shape)}
        cache = _load_cache(path)
        cache[key] = decision
        try:
            from ..results import write_json_atomic

            write_json_atomic(path, cache)
        except (OSError, ValueError) as err:  # a read-only cache costs a re-measurement, nothing else
            print(f"sparsebench: could not cache auto choice in {path}: {err}", file=sys.stderr)
        return REPRESENTATIONS[chosen]
