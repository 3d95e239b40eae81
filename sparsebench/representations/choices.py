"""A JSON file of measured choices keyed by string (machine class and what was measured): the cache of
``auto``'s representations and of ``conv_paths``' conv paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..atomic import Locked, locked, write_json_atomic


def load(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a corrupt one: measure again, and the next write replaces it
    return cache if isinstance(cache, dict) else {}


def save(path: Path, key: str, decision: dict, wait_s: float, what: str) -> None:
    """Read-modify-write under a lock, so parallel workers (xdist, Ray) add their choices, not drop others'."""
    try:
        with locked(path.with_name(path.name + ".lock"), wait_s=wait_s):
            cache = load(path)
            cache[key] = decision
            write_json_atomic(path, cache)
    except (OSError, ValueError, Locked) as err:  # a read-only or busy cache costs a re-measurement, nothing else
        print(f"sparsebench: could not cache {what} in {path}: {err}", file=sys.stderr)
