import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsebench import PATTERNS, make_mask, parse_scheme
from sparsebench.patterns import n_zeroed

sparsities = st.floats(0.0, 0.99)
seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 40)


def weight(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_registry_covers_the_spec():
    assert set(PATTERNS) >= {"dense", "random", "magnitude", "block", "nm"}


@pytest.mark.parametrize("s, n, zeroed", [
    (0.5, 3, 2),  # 1.5 rounds half up
    (0.5, 4, 2),
    (0.25, 2, 1),  # 0.5 rounds half up
    (0.125, 4, 1),
    (0.1, 4, 0),  # 0.4 rounds down
    (0.3, 10, 3),  # 0.3 * 10 is 3.0000000000000004 in floats
    (0.9, 10, 9),
    (0.99, 3, 2),  # 2.97 rounds to 3: capped at n - 1, a layer is never cut off
    (0.75, 2, 1),  # 1.5 -> 2, capped at 1
    (0.5, 1, 0),  # a single unit is always kept
    (0.0, 7, 0),
    (0.5, 0, 0),
])
def test_rounding_rule_cases(s, n, zeroed):
    assert n_zeroed(s, n) == zeroed


@given(n=st.integers(1, 10_000), s=sparsities)
def test_rounding_never_zeroes_every_unit(n, s):
    assert 0 <= n_zeroed(s, n) < n


@pytest.mark.parametrize("scheme, shape, kept", [
    ("random:0.5", (1, 3), 1),
    ("magnitude:0.5", (3, 1), 1),
    ("random:0.25", (2, 1), 1),
    ("magnitude:0.99", (1, 3), 1),
    ("random:0.9", (10, 10), 10),
    ("block:2x2:0.5", (2, 6), 4),  # 3 blocks, 1.5 -> 2 zeroed, one block of 4 kept
    ("block:2x2:0.5", (4, 4), 8),
    ("nm:2:4", (2, 8), 8),
    ("nm:1:4", (3, 4), 3),
    ("dense", (3, 5), 15),
])
def test_kept_counts(scheme, shape, kept):
    assert int(make_mask(weight(shape, 0), scheme).sum()) == kept


@given(rows=dims, cols=dims, s=sparsities, seed=seeds, pattern=st.sampled_from(["random", "magnitude"]))
def test_unstructured_kept_count(rows, cols, s, seed, pattern):
    w = weight((rows, cols), seed)
    mask = make_mask(w, f"{pattern}:{s}", seed=seed)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == w.numel() - n_zeroed(s, w.numel())


@given(out=st.integers(1, 8), cin=st.integers(1, 8), k=st.sampled_from([1, 3]), s=sparsities, seed=seeds)
def test_conv_weight_mask_has_conv_shape(out, cin, k, s, seed):
    w = weight((out, cin, k, k), seed)
    mask = make_mask(w, f"random:{s}", seed=seed)
    assert mask.shape == w.shape
    assert int(mask.sum()) == w.numel() - n_zeroed(s, w.numel())


@given(rows=dims, cols=dims, s=sparsities, seed=seeds)
def test_magnitude_keeps_the_largest(rows, cols, s, seed):
    w = weight((rows, cols), seed)
    mask = make_mask(w, f"magnitude:{s}")
    assume(0 < int(mask.sum()) < w.numel())
    assert w.abs()[mask].min() >= w.abs()[~mask].max()


@given(rows=st.integers(8, 40), cols=st.integers(8, 40), s=st.floats(0.1, 0.9), seed=seeds)
def test_random_same_seed_same_mask_other_seed_other_mask(rows, cols, s, seed):
    w = weight((rows, cols), 0)
    a = make_mask(w, f"random:{s}", seed=seed)
    assert torch.equal(a, make_mask(w, f"random:{s}", seed=seed))
    assert not torch.equal(a, make_mask(w, f"random:{s}", seed=seed + 1))


@given(br=st.integers(1, 6), bc=st.integers(1, 6), r=st.sampled_from([1, 2, 4, 8]), c=st.sampled_from([1, 2, 4, 8]),
       s=sparsities, seed=seeds)
def test_block_all_or_nothing(br, bc, r, c, s, seed):
    w = weight((br * r, bc * c), seed)
    mask = make_mask(w, f"block:{r}x{c}:{s}")
    blocks = mask.reshape(br, r, bc, c).permute(0, 2, 1, 3).reshape(br * bc, r * c)
    assert bool((blocks.all(dim=1) | ~blocks.any(dim=1)).all())  # each block all kept or all zero
    assert int(blocks.all(dim=1).sum()) == br * bc - n_zeroed(s, br * bc)
    # the kept blocks are those with the largest L1 norm
    norms = w.abs().reshape(br, r, bc, c).sum(dim=(1, 3)).reshape(-1)
    kept = blocks.all(dim=1)
    if 0 < int(kept.sum()) < kept.numel():
        assert norms[kept].min() >= norms[~kept].max()


@given(rows=dims, groups=st.integers(1, 10), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 3), (2, 8)]),
       seed=seeds)
def test_nm_exactly_n_per_group(rows, groups, nm, seed):
    n, m = nm
    w = weight((rows, groups * m), seed)
    mask = make_mask(w, f"nm:{n}:{m}")
    grouped = mask.reshape(rows, groups, m)
    assert bool((grouped.sum(-1) == n).all())
    wg = w.abs().reshape(rows, groups, m)  # the kept are the N largest of each group
    kept_min = torch.where(grouped, wg, torch.inf).min(-1).values
    pruned_max = torch.where(~grouped, wg, -torch.inf).max(-1).values
    assert bool((kept_min >= pruned_max).all())


def test_dense_keeps_everything():
    assert bool(make_mask(torch.randn(5, 7), "dense").all())


@pytest.mark.parametrize("scheme, shape, words", [
    ("block:4x4:0.5", (10, 16), ["'fc'", "does not tile", "10x16", "divide", "keep_dense=['fc'"]),
    ("nm:2:4", (8, 10), ["'fc'", "M=4", "divides 10", "keep_dense=['fc'"]),
])
def test_shape_mismatch_names_layer_and_fix(scheme, shape, words):
    with pytest.raises(ValueError) as err:
        make_mask(torch.randn(shape), parse_scheme(scheme), layer="fc")
    for w in words:
        assert w in str(err.value)


def _stable_sort_mask(scores, n_zero):
    """The definition: a stable sort's first ``n_zero`` indices are zeroed."""
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    mask[torch.sort(scores.reshape(-1).float(), stable=True).indices[:n_zero]] = False
    return mask.reshape(scores.shape)


@settings(deadline=None, max_examples=200)
@given(n=st.integers(1, 300), kind=st.sampled_from(["uniform", "ties", "signed", "zeros"]),
       fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_keep_largest_is_the_stable_sort_rule(n, kind, fraction, seed):
    """The bisection that replaced the sort keeps exactly the same weights, ties and signs included."""
    from sparsebench.patterns import keep_largest

    g = torch.Generator().manual_seed(seed)
    scores = {"uniform": lambda: torch.rand(n, generator=g),
              "ties": lambda: torch.randint(0, 4, (n,), generator=g).float(),
              "signed": lambda: torch.randn(n, generator=g),
              "zeros": lambda: torch.randint(-1, 2, (n,), generator=g).float() * 0.0}[kind]()  # -0.0 and +0.0
    n_zero = min(int(fraction * n), n - 1)
    assert torch.equal(keep_largest(scores, n_zero), _stable_sort_mask(scores, n_zero))
