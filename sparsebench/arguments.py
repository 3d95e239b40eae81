"""Argument types and checks shared by the command line's parsers (``cli`` and ``study.command``).

Each type turns one command-line word into a value or raises ``argparse.ArgumentTypeError`` with
a one-line message; ``writable_dir`` raises ``UsageError``. The command line (``cli.main``) prints
either as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path


class UsageError(Exception):
    """The user asked for something that cannot be done as asked; the message is the whole line printed."""


def writable_dir(path: Path) -> Path:
    """Fail before hours of training, not after: create ``path`` and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def number_type(convert: Callable[[str], float], noun: str, accept: Callable[[float], bool], bounds: str,
                name: str) -> Callable[[str], float]:
    """An argparse type: ``convert(text)``, which must satisfy ``accept``. ``noun`` ends the message for
    a word that does not convert ("is not {noun}"); ``bounds`` is the message for a value outside
    (``{text}`` is the word as given). ``name`` names the type in argparse's own messages."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(bounds.format(text=text, quoted=repr(text)))
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_seconds = number_type(float, "a number of seconds", lambda v: math.isfinite(v) and v > 0,
                               "must be a finite number of seconds > 0, got {quoted}", "positive_seconds")
seed_value = number_type(int, "a whole number", lambda v: 0 <= v < 2**63, "must be in [0, 2**63), got {text}",
                         "seed_value")
seed_count = number_type(int, "a whole number", lambda v: 1 <= v <= 100, "must be in [1, 100], got {text}",
                         "seed_count")
sparsity_level = number_type(float, "a number", lambda v: 0 < v < 1, "a sparsity level must be in (0, 1), got {text}",
                             "sparsity_level")


def layer_list(text: str) -> list[str]:
    """``fc1`` or ``conv2,fc1``: the layer names, at least one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one layer, e.g. --keep-dense fc1 or --keep-dense conv2,fc1")
    return names
