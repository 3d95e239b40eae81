"""The study's per-point JSON document: what a point measured, the settings that made it, and where.

``{"study_schema", "key", "point", "settings", "status", "reason", "value", "env"}``: ``point`` is
the point's own description (``points``), ``settings`` everything that shapes its numbers (budget,
the architecture's training settings and model size, the measurement's constants), ``env`` the
machine and code version (``measure.environment``: commit, machine fingerprint and class). A document
is read back only through ``check``: one that is not JSON, is of another schema, belongs to another
point, was made with other settings or lacks a number it must have is reported and recomputed,
never trusted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..archs import get_arch
from ..budgets import get_budget
from ..results import Result, is_finite
from . import cost

STUDY_SCHEMA = 1
STATUSES = ("ok", "skipped")


def _plain(obj):
    """JSON's view of ``obj`` (tuples become lists), so settings compare equal after a round trip."""
    return json.loads(json.dumps(obj))


def point_settings(point) -> dict:
    """Everything besides the code that decides a point's numbers."""
    budget_name = point.budget if point.kind == "accuracy" else point.size
    budget = get_budget(budget_name)
    arch = get_arch(point.arch)
    size = arch.size_for(budget)
    out = {"budget": budget.settings(), "training": asdict(arch.training_for(budget)),
           "model_size": asdict(size) if is_dataclass(size) else size}
    if point.kind == "cost":
        out["measurement"] = cost.settings()
    return _plain(out)


def make_document(point, value: dict) -> dict:
    """The document for ``point`` from its task's return value."""
    return {"study_schema": STUDY_SCHEMA, "key": point.key, "point": _plain(point.describe()),
            "settings": point_settings(point), "status": value.get("status"), "reason": value.get("reason"),
            "value": value, "env": value.get("env") or (value.get("result") or {}).get("env")}


class Unusable(ValueError):
    """A document that cannot be used for its point; the message says why."""


def _need_number(value: dict, path: str, positive: bool = True):
    node = value
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not is_finite(node) or (positive and node <= 0) or node < 0:
        raise Unusable(f"value.{path} must be a {'positive ' if positive else ''}finite number, got {node!r}")


COST_NUMBERS = ("speedup", "peak_ratio", "time_s.dense.total", "time_s.scheme.total", "time_ratio.forward",
                "time_ratio.backward", "time_ratio.optimizer", "peak_memory_bytes.dense", "peak_memory_bytes.scheme",
                "ledger.total", "ledger.dense_total", "dense_ledger_total", "model_size_bytes.dense",
                "model_size_bytes.scheme", "inference.dense_samples_per_s", "inference.scheme_samples_per_s")


def check(doc, point) -> dict:
    """``doc`` if it is a complete document of ``point`` made with today's settings; else Unusable."""
    if not isinstance(doc, dict):
        raise Unusable(f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("study_schema") != STUDY_SCHEMA:
        raise Unusable(f"study_schema is {doc.get('study_schema')!r}, this sparsebench writes {STUDY_SCHEMA}")
    if doc.get("key") != point.key or doc.get("point") != _plain(point.describe()):
        raise Unusable(f"it describes another point ({doc.get('key')!r})")
    if doc.get("settings") != point_settings(point):
        raise Unusable("it was made with other settings (budget, model size or measurement)")
    if doc.get("status") not in STATUSES:
        raise Unusable(f"status is {doc.get('status')!r}, not one of {', '.join(STATUSES)}")
    value = doc.get("value")
    if not isinstance(value, dict):
        raise Unusable("it has no value")
    if doc["status"] != "ok":
        if not isinstance(doc.get("reason"), str):
            raise Unusable("a skipped point must say why")
        return doc
    env = doc.get("env")
    if not (isinstance(env, dict) and isinstance(env.get("machine_class"), str) and isinstance(env.get("commit"), str)):
        raise Unusable("env must name the machine class and the commit")
    if point.kind == "accuracy":
        try:
            result = Result.from_dict(value.get("result"))
        except (TypeError, ValueError) as e:
            raise Unusable(f"its result document is invalid ({e})") from None
        if (result.arch, result.scheme, result.seed, result.budget) != (
                point.arch, point.training_scheme, point.seed, point.budget):
            raise Unusable("its result is of another cell")
    else:
        for path in COST_NUMBERS:
            _need_number(value, path)
        if not isinstance(value.get("representations"), dict):
            raise Unusable("value.representations must be an object")
    return doc


def read(path: str | os.PathLike, point) -> dict | None:
    """The usable document at ``path``; None when there is none; Unusable (with the reason) otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Unusable(f"not readable as JSON ({e})") from None
    return check(doc, point)
