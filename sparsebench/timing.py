"""The one step timer: interleaved timing of a reference and a candidate step in the same process.

Alternating the two steps makes both see the same machine state, so a noisy neighbour slows both
and their ratio survives it. Convention everywhere: ``time_ratio = median(candidate) /
median(reference)``; above 1.0 the candidate is slower. A speed-up is ``1 / time_ratio``.
Library core: used by ``auto``'s calibration, the grid and the layer benchmark alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Wall seconds of one call of ``fn``; ``sync`` (e.g. ``torch.cuda.synchronize``) brackets it."""
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def interleaved(reference: Callable[[], object], candidate: Callable[[], object], steps: int,
                sync: Callable[[], None] | None = None, warmup: int = 1) -> tuple[list[float], list[float]]:
    """``steps`` timed calls of each, alternating, after ``warmup`` untimed calls of each."""
    if steps < 1:
        raise ValueError(f"interleaved timing needs at least one step, got {steps}")
    for _ in range(warmup):
        reference(), candidate()
    ref, cand = [], []
    for _ in range(steps):
        ref.append(timed(reference, sync))
        cand.append(timed(candidate, sync))
    return ref, cand


def time_ratio(reference_times: list[float], candidate_times: list[float]) -> float:
    """Candidate step time over reference step time (medians): above 1.0 the candidate is slower."""
    return statistics.median(candidate_times) / statistics.median(reference_times)


def best_of(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, in seconds (for short calibrations)."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, sync) for _ in range(max(1, repeats)))
