import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsebench import PATTERNS, Scheme, parse_scheme
from sparsebench.patterns import Block, Pattern

CANONICAL = ["dense", "random:0.5", "random:0.5@csr", "magnitude:0.9", "block:4x4:0.5@bsr", "block:16x32:0.95@csr",
             "nm:2:4", "nm:2:4@semi", "nm:1:8@csr"]


@pytest.mark.parametrize("text", CANONICAL)
def test_round_trip(text):
    scheme = parse_scheme(text)
    assert str(scheme) == text
    assert parse_scheme(str(scheme)) == scheme


def test_fields_and_default_representation():
    s = parse_scheme("block:4x4:0.5@bsr")
    assert s.pattern == Block(4, 4, 0.5)
    assert (s.pattern.name, s.pattern.family, s.pattern.level, s.representation) == ("block", "block:4x4", 0.5, "bsr")
    assert s.slug == "block4x4-0.5-bsr"
    assert parse_scheme("random:0.25").representation == "masked"
    assert parse_scheme("nm:2:4").target_sparsity == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.representation = "csr"  # immutable value
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pattern.sparsity = 0.1


@pytest.mark.parametrize("text, slug, target, family, level", [
    ("dense", "dense", 0.0, "dense", None),
    ("random:0.5@csr", "random-0.5-csr", 0.5, "random", 0.5),
    ("magnitude:0.9", "magnitude-0.9-masked", 0.9, "magnitude", 0.9),
    ("block:4x4:0.5@bsr", "block4x4-0.5-bsr", 0.5, "block:4x4", 0.5),
    ("block:16x32:0.95@csr", "block16x32-0.95-csr", 0.95, "block:16x32", 0.95),
    ("block:16x16:0.9@auto", "block16x16-0.9-auto", 0.9, "block:16x16", 0.9),
    ("nm:2:4", "nm2of4-masked", 0.5, "nm:2:4", None),
    ("nm:1:8@csr", "nm1of8-csr", 0.875, "nm:1:8", None),
])
def test_slugs_and_parameters(text, slug, target, family, level):
    """Baselines are stored under these slugs: they must not change."""
    s = parse_scheme(text)
    assert (s.slug, s.target_sparsity, s.pattern.family, s.pattern.level) == (slug, target, family, level)
    assert isinstance(s.pattern, Pattern)


def test_schemes_are_values():
    assert parse_scheme("random:0.5") == parse_scheme(" random:0.50@masked ")
    assert parse_scheme("random:0.5") != parse_scheme("magnitude:0.5")
    assert len({parse_scheme("nm:2:4"), parse_scheme("nm:2:4"), parse_scheme("nm:2:4@csr")}) == 2
    s = parse_scheme("block:4x4:0.5")
    assert s.with_representation("bsr") == parse_scheme("block:4x4:0.5@bsr")
    assert parse_scheme(s) is s
    with pytest.raises(ValueError, match="square"):
        parse_scheme("block:4x8:0.5").with_representation("bsr")  # a Scheme is valid by construction


def test_each_pattern_owns_its_syntax():
    for name, cls in PATTERNS.items():
        assert cls.name == name and cls.syntax.split(":")[0] == name


@given(s=st.floats(0, 1, exclude_max=True), rep=st.sampled_from(["masked", "csr"]))
def test_any_sparsity_round_trips(s, rep):
    scheme = parse_scheme(f"random:{s!r}@{rep}")
    assert parse_scheme(str(scheme)) == scheme
    assert isinstance(scheme, Scheme)


@pytest.mark.parametrize("text, words", [
    ("random:1.0", ["outside [0, 1)"]),
    ("random:-0.1", ["outside [0, 1)"]),
    ("magnitude:abc", ["not a number"]),
    ("spiky:0.5", ["unknown pattern", "choose one of"]),
    ("random:0.5@coo", ["unknown representation", "csr"]),
    ("random:0.5@bsr", ["bsr", "block", "instead"]),
    ("nm:2:4@bsr", ["bsr"]),
    ("nm:5:4", ["N=5 > M=4"]),
    ("nm:2:8@semi", ["2:4"]),
    ("block:4:0.5", ["RxC"]),
    ("block:0x4:0.5", ["positive"]),
    ("random", ["written 'random:S'"]),
    ("dense@csr", ["write 'dense'"]),
    ("dense@auto", ["write 'dense'"]),
    ("block:4x8:0.5@bsr", ["square", "8x8", "block:4x8:0.5@csr"]),
    ("random:0.5@semi", ["semi", "nm", "instead"]),
    ("", ["empty scheme"]),
])
def test_bad_schemes_are_refused_with_the_fix(text, words):
    with pytest.raises(ValueError) as err:
        parse_scheme(text)
    for w in words:
        assert w in str(err.value)
