"""Typed JSON documents: a field's kind and physical bounds (``field_spec``, the metadata of a
dataclass field), and the one check of a document's values against them. Grid results
(results.py) and study cost results (study/cost_result.py) are both declared and checked with it."""

from __future__ import annotations

import math
from dataclasses import field

_KINDS = {"str": (str,), "int": (int,), "number": (int, float), "dict": (dict,)}


def field_spec(kind: str, *, identity: bool = False, lo: float | None = None, hi: float | None = None,
               positive: bool = False, optional: bool = False):
    """A document field: its JSON kind and its physical bounds. Identity fields are required in every
    document; the others in a complete ("ok") one, unless optional."""
    return field(default=None, metadata={"kind": kind, "identity": identity, "lo": lo, "hi": hi,
                                         "positive": positive, "optional": optional})


def check_value(where: str, key: str, value, spec) -> None:
    """ValueError naming ``key`` when ``value`` is not of its field's kind or lies outside its bounds."""
    kind = spec["kind"]
    if not isinstance(value, _KINDS[kind]) or isinstance(value, bool):
        raise ValueError(f"{where}: key {key!r} must be {'a whole number' if kind == 'int' else 'a ' + kind}, "
                         f"got {value!r}")
    if kind in ("int", "number"):
        if not math.isfinite(value):
            raise ValueError(f"{where}: key {key!r} must be a finite number, got {value!r}")
        lo, hi = spec["lo"], spec["hi"]
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (spec["positive"] and value <= 0):
            bounds = "> 0" if spec["positive"] else f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"{where}: key {key!r} must be {bounds}, got {value!r}")


def check_fields(where: str, doc: dict, specs: dict, complete: bool) -> None:
    """Check every field of ``doc`` that is present; a ``complete`` document must also hold every field
    that is not optional (ValueError naming the first missing key)."""
    for key, spec in specs.items():
        value = doc.get(key)
        if value is None:
            if complete and not spec["optional"]:
                raise ValueError(f"{where}: missing key {key!r}")
            continue
        check_value(where, key, value, spec)
