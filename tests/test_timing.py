"""The timing's spread: the paired bootstrap interval of a time ratio, and of one commit's ratio over
another's, on step times drawn with a known ratio."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsebench.timing import change_interval, interval_doc, ratio_interval, time_ratio


def noisy_pairs(ratio: float, n: int, noise: float = 0.05, seed: int = 0, drift: bool = True):
    """Interleaved (reference, candidate) step times whose true ratio is ``ratio``: each pair shares the
    machine's state at that moment (a slow drift and spikes), plus independent per-step noise."""
    rng = np.random.default_rng(seed)
    state = 1 + (0.5 * np.sin(np.arange(n) / 5) if drift else 0) + (rng.random(n) < 0.1) * 2.0
    ref = 0.01 * state * (1 + noise * rng.standard_normal(n))
    cand = ratio * 0.01 * state * (1 + noise * rng.standard_normal(n))
    return np.abs(ref).tolist(), np.abs(cand).tolist()


@given(ratio=st.floats(0.3, 3.0), seed=st.integers(0, 2**16))
def test_interval_covers_the_true_ratio_and_excludes_a_far_one(ratio, seed):
    ref, cand = noisy_pairs(ratio, 30, seed=seed)
    low, high = ratio_interval(ref, cand)
    assert low <= time_ratio(ref, cand) <= high
    assert low < ratio * 1.1 and high > ratio / 1.1  # 5% noise per step: the interval is near the truth
    assert not (low <= ratio * 1.5 <= high) and not (low <= ratio / 1.5 <= high)


def test_pairing_cancels_the_machines_drift():
    """Drift shared by the two steps of a pair leaves the ratio's interval narrow: resampling pairs whole
    keeps it so, where resampling the two lists independently would not."""
    ref, cand = noisy_pairs(1.3, 40, noise=0.01)
    low, high = ratio_interval(ref, cand)
    assert high - low < 0.05
    rng = np.random.default_rng(1)
    unpaired = [np.median(rng.choice(cand, 40)) / np.median(rng.choice(ref, 40)) for _ in range(2000)]
    assert np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5) > 2 * (high - low)


def test_interval_is_reproducible_and_narrows_with_pairs():
    ref, cand = noisy_pairs(1.5, 200, noise=0.1)
    assert ratio_interval(ref, cand) == ratio_interval(ref, cand)
    wide = ratio_interval(ref[:10], cand[:10])
    narrow = ratio_interval(ref, cand)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_interval_doc_is_what_results_store():
    ref, cand = noisy_pairs(2.0, 12)
    doc = interval_doc(ref, cand)
    assert set(doc) == {"low", "high", "confidence", "pairs"} and doc["pairs"] == 12 and doc["confidence"] == 0.95
    assert (doc["low"], doc["high"]) == ratio_interval(ref, cand)


def test_change_interval_sees_a_slowdown_between_two_runs():
    base = noisy_pairs(1.2, 30, seed=1)
    same = noisy_pairs(1.2, 30, seed=2)
    slower = noisy_pairs(1.2 * 1.5, 30, seed=3)
    low, high = change_interval(base, same)
    assert low <= 1.0 <= high
    low, high = change_interval(base, slower)
    assert low > 1.3 and high < 1.7


@pytest.mark.parametrize("ref,cand,match", [
    ([1.0], [1.0], "at least 2"),
    ([1.0, 2.0], [1.0], "at least 2"),
    ([1.0, float("nan")], [1.0, 1.0], "finite and positive"),
    ([1.0, 0.0], [1.0, 1.0], "finite and positive"),
])
def test_bad_times_are_refused(ref, cand, match):
    with pytest.raises(ValueError, match=match):
        ratio_interval(ref, cand)
