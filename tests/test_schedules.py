"""When sparsity is chosen: the schedule syntax, the schedules' timetables, and the layer-wise
distributions (uniform, ERK) with their exact totals."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsebench import parse_scheme, sparsify
from sparsebench.distributions import counts, erk_counts, erk_densities
from sparsebench.patterns import n_zeroed
from sparsebench.schedules import GMP, SCHEDULES, OneShot, RigL, default_interval

ROUND_TRIPS = {
    "magnitude:0.9/gmp": "magnitude-0.9-gmp-masked",
    "magnitude:0.9/gmp:0.2-0.7@csr": "magnitude-0.9-gmp0.2to0.7-csr",
    "magnitude:0.9/oneshot:0.5@auto": "magnitude-0.9-oneshot0.5-auto",
    "random:0.9/set": "random-0.9-set-masked",
    "random:0.9/rigl:100:0.3/erk@csr": "random-0.9-rigl-100-0.3-erk-csr",
    "block:16x16:0.9/rigl@bsr_cpp": "block16x16-0.9-rigl-bsr_cpp",
    "random:0.9/erk": "random-0.9-erk-masked",
}


@pytest.mark.parametrize("text", sorted(ROUND_TRIPS))
def test_a_scheme_with_a_schedule_reads_back_as_itself(text):
    scheme = parse_scheme(text)
    assert parse_scheme(str(scheme)) == scheme
    assert scheme.slug == ROUND_TRIPS[text]


def test_defaults_are_not_written_and_static_schemes_keep_their_strings():
    assert str(parse_scheme("random:0.9/static")) == "random:0.9"
    assert str(parse_scheme("random:0.9/uniform@csr")) == "random:0.9@csr"
    assert str(parse_scheme("magnitude:0.9/gmp:0.1-0.6")) == "magnitude:0.9/gmp"
    assert str(parse_scheme("random:0.9/rigl/erk")) == str(parse_scheme("random:0.9/erk/rigl"))
    assert parse_scheme("block:4x4:0.5@bsr").slug == "block4x4-0.5-bsr"  # the baselines' keys stay


@pytest.mark.parametrize("text, words", [
    ("random:0.9/gmp", "magnitude:0.9/gmp"),  # gmp prunes by magnitude
    ("nm:2:4/rigl", "fixes which weights"),
    ("dense/set", "nothing to prune"),
    ("block:4x4:0.9/erk", "single weights"),
    ("random:0.9/rigl/set", "two schedules"),
    ("random:0.9/erk/erk", "two distributions"),
    ("random:0.9/sometimes", "unknown schedule"),
    ("random:0.9/rigl:0:0.3", "positive whole number"),
    ("random:0.9/set:10:1.5", "(0, 1)"),
    ("magnitude:0.9/gmp:0.6-0.1", "A < B"),
    ("magnitude:0.9/gmp:0.1", "gmp:A-B"),
    ("magnitude:0.9/oneshot:x", "not a number"),
])
def test_a_bad_schedule_says_what_is_wrong(text, words):
    with pytest.raises(ValueError, match="scheme") as err:
        parse_scheme(text)
    assert words in str(err.value)


@given(total=st.integers(1, 5000), s=st.floats(0.05, 0.99))
def test_gmp_rises_along_its_cubic_inside_its_window_and_holds_outside(total, s):
    gmp = GMP()
    levels = [gmp.level_at(t, total, s) for t in range(total + 1)]
    assert all(a <= b for a, b in zip(levels, levels[1:], strict=False))  # never regrows
    assert levels[-1] == s
    assert all(v == 0.0 for t, v in enumerate(levels) if t < 0.1 * total)
    assert all(v == s for t, v in enumerate(levels) if t >= 0.6 * total)
    mid = math.ceil(0.1 * total) + default_interval(total) * 10
    if mid < 0.6 * total:  # a pruning step: exactly the cubic at that point
        p = (mid - 0.1 * total) / (0.5 * total)
        stepped = (math.floor((mid - 0.1 * total) / default_interval(total)) * default_interval(total)) / (0.5 * total)
        assert levels[mid] == pytest.approx(s * (1 - (1 - stepped) ** 3))
        assert levels[mid] <= s * (1 - (1 - p) ** 3) + 1e-12


def test_oneshot_prunes_once_at_its_point():
    levels = [OneShot(0.3).level_at(t, 100, 0.9) for t in range(101)]
    assert levels[:30] == [0.0] * 30 and levels[30:] == [0.9] * 71


@given(total=st.integers(10, 5000))
def test_rigl_drops_a_cosine_decayed_fraction_every_interval_until_three_quarters(total):
    rigl = RigL()
    every = default_interval(total)
    fractions = {t: rigl.drop_fraction(t, total) for t in range(total + 1)}
    updates = [t for t, f in fractions.items() if f > 0]
    assert updates and all(t % every == 0 and 0 < t < 0.75 * total for t in updates)
    assert all(fractions[t] == pytest.approx(0.15 * (1 + math.cos(math.pi * t / (0.75 * total)))) for t in updates)
    assert all(a >= b for a, b in zip([fractions[t] for t in updates], [fractions[t] for t in updates][1:],
                                      strict=False))
    assert len(updates) == len([t for t in range(every, total + 1, every) if t < 0.75 * total])


def test_every_schedule_class_is_registered_under_its_name():
    assert all(cls.name == name for name, cls in SCHEDULES.items())


# -- distributions --------------------------------------------------------------------------------

SHAPES = st.dictionaries(st.sampled_from(list("abcdef")),
                         st.one_of(st.tuples(st.integers(1, 64), st.integers(1, 64)),
                                   st.tuples(st.integers(1, 32), st.integers(1, 16), st.integers(1, 3),
                                             st.integers(1, 3))),
                         min_size=1, max_size=6)


@given(shapes=SHAPES, s=st.floats(0.0, 0.99))
def test_erk_zeroes_exactly_the_uniform_total(shapes, s):
    total = sum(math.prod(v) for v in shapes.values())
    zeros = erk_counts(shapes, s)
    cap = sum(math.prod(v) - 1 for v in shapes.values())  # no layer loses every weight
    assert sum(zeros.values()) == min(n_zeroed(s, total), cap)
    assert all(0 <= zeros[n] <= math.prod(shapes[n]) - 1 for n in shapes)


@given(shapes=SHAPES, s=st.floats(0.05, 0.99))
def test_erk_keeps_small_layers_denser(shapes, s):
    density = erk_densities(shapes, s)
    assert all(0 < d <= 1 for d in density.values())
    raw = {n: sum(v) / math.prod(v) for n, v in shapes.items()}
    for a in shapes:
        for b in shapes:
            if raw[a] > raw[b]:
                assert density[a] >= density[b] - 1e-12


def test_uniform_counts_are_the_pattern_rule_per_layer():
    shapes = {"a": (10, 10), "b": (7, 3)}
    assert counts("uniform", shapes, 0.5) == {"a": 50, "b": n_zeroed(0.5, 21)}
    assert counts("uniform", {"a": (8, 8)}, 0.5, unit=(4, 4)) == {"a": 2}
    with pytest.raises(ValueError, match="single weights"):
        counts("erk", shapes, 0.5, unit=(4, 4))


@pytest.mark.parametrize("scheme", ["random:0.9/erk", "magnitude:0.8/erk@csr"])
def test_a_model_sparsified_under_erk_zeroes_exactly_s_of_its_pruned_weights(scheme):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 32),
                          nn.ReLU(), nn.Linear(32, 10))
    sparsify(model, scheme, keep_dense=["0", "6"])
    pruned = [model[2].sparse_weight, model[4].sparse_weight]
    total = sum(w.dense_numel for w in pruned)
    kept = sum(int(w.mask().sum()) for w in pruned)
    assert total - kept == n_zeroed(parse_scheme(scheme).target_sparsity, total)
    densities = [int(w.mask().sum()) / w.dense_numel for w in pruned]
    assert densities[0] != pytest.approx(densities[1])  # not uniform
