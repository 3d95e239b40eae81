"""How a sparsity S is spread over the pruned layers: how many units each layer zeroes.

- ``uniform`` (the default, never written): every layer zeroes S of its units, by the rounding rule
  of ``patterns.n_zeroed``. Today's schemes.
- ``erk`` (Erdős-Rényi-Kernel, RigL's default; written ``random:0.9/erk``): a layer of shape
  ``(d_1, ..., d_k)`` keeps a density proportional to ``sum(d) / prod(d)``, so small layers stay denser
  and large ones sparser, scaled so that the kept count over all pruned layers is that of uniform.
  A layer whose density would pass 1 is kept dense and the scale is found again for the others
  (jaxpruner's ``get_sparsities_erdos_renyi``). Counts are whole weights, assigned by largest
  remainder so that the zeroed total is exactly ``n_zeroed(S, total)``: the realised sparsity over
  the pruned layers is S (to one weight).

``counts(name, shapes, S)`` -> {layer: units to zero}; ``shapes`` are the layers' weight shapes and
``unit`` the pattern's unit (ERK needs single weights). torch is not imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .patterns import n_zeroed

DISTRIBUTIONS = ("uniform", "erk")


def _units(shape: tuple[int, ...], unit: tuple[int, int]) -> int:
    rows, cols = shape[0], math.prod(shape[1:])
    return (rows // unit[0]) * (cols // unit[1])


def uniform_counts(shapes: Mapping[str, tuple[int, ...]], sparsity: float,
                   unit: tuple[int, int] = (1, 1)) -> dict[str, int]:
    return {name: n_zeroed(sparsity, _units(shape, unit)) for name, shape in shapes.items()}


def erk_densities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Each layer's kept fraction under ERK: ``eps * sum(shape) / prod(shape)``, capped at 1."""
    dense: set[str] = set()
    while True:
        kept_target = sum((1 - sparsity) * math.prod(s) for n, s in shapes.items() if n not in dense)
        kept_target -= sum(sparsity * math.prod(s) for n, s in shapes.items() if n in dense)
        raw = {n: sum(s) / math.prod(s) for n, s in shapes.items() if n not in dense}
        if not raw:
            return dict.fromkeys(shapes, 1.0)
        eps = kept_target / sum(raw[n] * math.prod(shapes[n]) for n in raw)
        over = [n for n in raw if eps * raw[n] > 1]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        top = max(raw[n] for n in over)
        dense |= {n for n in over if raw[n] == top}  # the densest first, then the scale again


def erk_counts(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, int]:
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total_zero = n_zeroed(sparsity, sum(sizes.values()))
    ideal = {n: sizes[n] * (1 - d) for n, d in erk_densities(shapes, sparsity).items()}
    counts = {n: min(math.floor(z), sizes[n] - 1) for n, z in ideal.items()}
    short = total_zero - sum(counts.values())
    # largest remainder first; a layer takes at most one more, and never all of its weights
    order = sorted(ideal, key=lambda n: (-(ideal[n] - math.floor(ideal[n])), n))
    while short > 0:
        room = [n for n in order if counts[n] < sizes[n] - 1]
        if not room:
            break
        for n in room[:short]:
            counts[n] += 1
        short = total_zero - sum(counts.values())
    while short < 0:  # rounding took one too many somewhere
        n = max((n for n in counts if counts[n] > 0), key=lambda n: counts[n] - ideal[n])
        counts[n] -= 1
        short += 1
    return counts


def counts(distribution: str, shapes: Mapping[str, tuple[int, ...]], sparsity: float,
           unit: tuple[int, int] = (1, 1)) -> dict[str, int]:
    """Units each layer zeroes at ``sparsity`` under ``distribution``."""
    if distribution == "uniform":
        return uniform_counts(shapes, sparsity, unit)
    if distribution == "erk":
        if tuple(unit) != (1, 1):
            raise ValueError("erk spreads single weights; a block pattern takes the uniform distribution")
        return erk_counts(shapes, sparsity)
    raise ValueError(f"unknown sparsity distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
