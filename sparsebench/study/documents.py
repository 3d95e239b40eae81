"""The study's per-point JSON document: what a point measured, the settings that made it, and where.

``{"study_schema", "key", "point", "settings", "status", "reason", "value", "env"}``: ``point`` is
the point's own description (``points``), ``settings`` everything that shapes its numbers (budget,
the architecture's training settings and model size, the measurement's constants), ``env`` the
machine and code version (``measure.environment``: commit, machine fingerprint and class). A document
is read back only through ``check``: one that is not JSON, is of another schema, belongs to another
point, was made with other settings or lacks a number it must have is reported and recomputed,
never trusted. A cost point's ``value`` is a ``CostResult`` (``cost_result``), an accuracy point's
holds the grid's ``Result`` of its cell.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..archs import get_arch
from ..atomic import read_json
from ..budgets import get_budget
from ..results import Result
from . import cost
from .cost_result import POINT_STATUSES, CostResult

STUDY_SCHEMA = 1


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


# An accuracy point's numbers are its trained model's (accuracy, curve, training seconds); the budget's
# timing pairs and memory steps shape only the Result's time ratio and peak, which the study takes from
# cost points. A document made with another count of those is still this point's.
_NOT_ACCURACY_SETTINGS = ("timing_steps", "memory_steps")


def deciding_settings(settings: dict, kind: str) -> dict:
    """The part of a point's ``settings`` that decides the numbers the study reads from it."""
    if kind != "accuracy" or not isinstance(settings, dict) or not isinstance(settings.get("budget"), dict):
        return settings
    budget = {k: v for k, v in settings["budget"].items() if k not in _NOT_ACCURACY_SETTINGS}
    return settings | {"budget": budget}


def make_document(point, value: dict | CostResult) -> dict:
    """The document for ``point`` from its task's return value (a CostResult for a cost point)."""
    if isinstance(value, CostResult):
        value = value.to_dict()
    return {"study_schema": STUDY_SCHEMA, "key": point.key, "point": _plain(point.describe()),
            "settings": point_settings(point), "status": value.get("status"), "reason": value.get("reason"),
            "value": value, "env": value.get("env") or (value.get("result") or {}).get("env")}


class Unusable(ValueError):
    """A document that cannot be used for its point; the message says why."""


def check(doc, point) -> dict:
    """``doc`` if it is a complete document of ``point`` made with the current settings; else Unusable."""
    if not isinstance(doc, dict):
        raise Unusable(f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("study_schema") != STUDY_SCHEMA:
        raise Unusable(f"study_schema is {doc.get('study_schema')!r}, this sparsebench writes {STUDY_SCHEMA}")
    if doc.get("key") != point.key or doc.get("point") != _plain(point.describe()):
        raise Unusable(f"it describes another point ({doc.get('key')!r})")
    if deciding_settings(doc.get("settings"), point.kind) != deciding_settings(point_settings(point), point.kind):
        raise Unusable("it was made with other settings (budget, model size or measurement)")
    if doc.get("status") not in POINT_STATUSES:
        raise Unusable(f"status is {doc.get('status')!r}, not one of {', '.join(POINT_STATUSES)}")
    value = doc.get("value")
    if not isinstance(value, dict):
        raise Unusable("it has no value")
    if point.kind == "cost":
        try:
            result = CostResult.from_dict(value, "value")
        except ValueError as e:
            raise Unusable(f"its cost result is invalid ({e})") from None
        if result.status != doc["status"]:
            raise Unusable(f"its status is {doc['status']!r} but its value's is {result.status!r}")
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
                point.arch, str(point.training_scheme), point.seed, point.budget):
            raise Unusable("its result is of another cell")
    return doc


def read(path: str | os.PathLike, point) -> dict | None:
    """The usable document at ``path``; None when there is none; Unusable (with the reason) otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = read_json(path, "document")
    except ValueError as e:
        raise Unusable(f"not readable as JSON ({e.__cause__})") from None
    return check(doc, point)
