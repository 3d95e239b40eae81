"""The command line's shared argument types: the value, or one line saying what is wrong."""

import argparse

import pytest

from sparsebench.arguments import (
    UsageError,
    layer_list,
    positive_seconds,
    seed_count,
    seed_value,
    sparsity_level,
    writable_dir,
)


@pytest.mark.parametrize("parse, text, value", [
    (positive_seconds, "2.5", 2.5), (seed_value, "0", 0), (seed_value, str(2**63 - 1), 2**63 - 1),
    (seed_count, "100", 100), (sparsity_level, "0.9", 0.9), (layer_list, "conv2, fc1", ["conv2", "fc1"]),
])
def test_a_good_word_gives_its_value(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (positive_seconds, "x", "'x' is not a number of seconds"),
    (positive_seconds, "0", "must be a finite number of seconds > 0, got '0'"),
    (positive_seconds, "inf", "must be a finite number of seconds > 0, got 'inf'"),
    (seed_value, "1.5", "'1.5' is not a whole number"),
    (seed_value, "-1", "must be in [0, 2**63), got -1"),
    (seed_count, "0", "must be in [1, 100], got 0"),
    (sparsity_level, "x", "'x' is not a number"),
    (sparsity_level, "1", "a sparsity level must be in (0, 1), got 1"),
    (sparsity_level, "nan", "a sparsity level must be in (0, 1), got nan"),
    (layer_list, " , ", "name at least one layer"),
])
def test_a_bad_word_is_one_line(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_types_keep_their_names_for_argparse():
    assert [f.__name__ for f in (positive_seconds, seed_value, seed_count, sparsity_level)] == [
        "positive_seconds", "seed_value", "seed_count", "sparsity_level"]


def test_writable_dir_makes_the_directory_or_says_why_not(tmp_path):
    assert writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=f"cannot write to {tmp_path / 'file' / 'x'}"):
        writable_dir(tmp_path / "file" / "x")
