import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsebench import Scheme, parse_scheme

CANONICAL = ["dense", "random:0.5", "random:0.5@csr", "magnitude:0.9", "block:4x4:0.5@bsr", "block:16x32:0.95@csr",
             "nm:2:4", "nm:2:4@semi", "nm:1:8@csr"]


@pytest.mark.parametrize("text", CANONICAL)
def test_round_trip(text):
    scheme = parse_scheme(text)
    assert str(scheme) == text
    assert parse_scheme(str(scheme)) == scheme


def test_fields_and_default_representation():
    s = parse_scheme("block:4x4:0.5@bsr")
    assert (s.pattern, s.block, s.sparsity, s.representation) == ("block", (4, 4), 0.5, "bsr")
    assert s.slug == "block4x4-0.5-bsr"
    assert parse_scheme("random:0.25").representation == "masked"
    assert parse_scheme("nm:2:4").target_sparsity == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sparsity = 0.1  # immutable value


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
    ("", ["empty scheme"]),
])
def test_bad_schemes_are_refused_with_the_fix(text, words):
    with pytest.raises(ValueError) as err:
        parse_scheme(text)
    for w in words:
        assert w in str(err.value)
