"""The one step timer: interleaved timing of a reference and a candidate step in the same process.

Alternating the two steps makes both see the same machine state, so a noisy neighbour slows both
and their ratio survives it. Convention everywhere: ``time_ratio = median(candidate) /
median(reference)``; above 1.0 the candidate is slower. A speed-up is ``1 / time_ratio``.
Library core: used by ``auto``'s calibration, the grid and the layer benchmark alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95  # of every interval a timing carries
RESAMPLES = 10000  # bootstrap resamples: at this count the ends move by under 1% between seeds (30 pairs of a ci cell)


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


def ratio_interval(reference_times: Sequence[float], candidate_times: Sequence[float],
                   confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """A ``confidence`` interval of ``time_ratio`` from interleaved pairs: the percentile bootstrap over
    pairs (the i-th reference and candidate step ran back to back, so a pair is resampled whole and
    the machine's drift stays paired). Seeded, so the same times give the same interval."""
    return _percentiles(_resampled_ratios(reference_times, candidate_times, np.random.default_rng(seed), resamples),
                        confidence)


def interval_doc(reference_times: Sequence[float], candidate_times: Sequence[float]) -> dict:
    """``ratio_interval`` as results and baselines store it."""
    low, high = ratio_interval(reference_times, candidate_times)
    return {"low": low, "high": high, "confidence": CONFIDENCE, "pairs": len(reference_times)}


def change_interval(base: tuple[Sequence[float], Sequence[float]], head: tuple[Sequence[float], Sequence[float]],
                    confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """A ``confidence`` interval of head's time ratio over base's, each from its own interleaved
    (reference, candidate) pairs, resampled independently (two processes, two runs): above 1 the head
    is slower against its reference than the base was against its own."""
    rng = np.random.default_rng(seed)
    head_ratios = _resampled_ratios(*head, rng, resamples)
    return _percentiles(head_ratios / _resampled_ratios(*base, rng, resamples), confidence)


def _resampled_ratios(reference_times, candidate_times, rng, resamples: int) -> np.ndarray:
    """``resamples`` bootstrap replicates of the median ratio, each pair resampled whole."""
    ref, cand = _pairs(reference_times, candidate_times)
    idx = rng.integers(0, len(ref), size=(resamples, len(ref)))
    ratios = np.median(cand[idx], axis=1) / np.median(ref[idx], axis=1)
    return ratios


def _pairs(reference_times, candidate_times) -> tuple[np.ndarray, np.ndarray]:
    ref, cand = np.asarray(reference_times, dtype=float), np.asarray(candidate_times, dtype=float)
    if ref.ndim != 1 or ref.shape != cand.shape or len(ref) < 2:
        raise ValueError(f"an interval needs at least 2 interleaved pairs of step times, got {ref.shape} reference "
                         f"and {cand.shape} candidate times")
    if not (np.isfinite(ref).all() and np.isfinite(cand).all() and (ref > 0).all() and (cand > 0).all()):
        raise ValueError("step times must be finite and positive")
    return ref, cand


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def best_of(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, in seconds (for short calibrations)."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, sync) for _ in range(max(1, repeats)))
