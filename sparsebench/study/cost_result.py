"""The cost point's result: one typed value (``CostResult``) built by ``cost.measure_cost``, written as
the ``value`` of the point's document, read back (and checked) by ``documents`` and ``analysis``.

Its fields are checked as a grid result's are (``results``: the same field specs and the same value
check), so a number out of its bounds fails where the value is made or read, naming the key.
``to_dict`` gives the JSON object the document holds: every field of a measured ("ok") point, in
field order; ``status`` and ``reason`` of a skipped one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..fields import check_fields, check_value, field_spec

POINT_STATUSES = ("ok", "skipped")  # skipped: its representation cannot run on this machine, see reason

_POSITIVE = field_spec("number", positive=True).metadata
# numbers inside the object fields that every measured point has (a path of keys, dot-separated)
NESTED_NUMBERS = ("time_s.dense.total", "time_s.scheme.total", "time_ratio.forward", "time_ratio.backward",
                  "time_ratio.optimizer", "time_ratio.total", "peak_memory_bytes.dense", "peak_memory_bytes.scheme",
                  "ledger.total", "ledger.dense_total", "model_size_bytes.dense", "model_size_bytes.scheme",
                  "inference.dense_samples_per_s", "inference.scheme_samples_per_s")


@dataclass(frozen=True)
class CostResult:
    status: str = field_spec("str", identity=True)  # "ok" or "skipped" (with reason)
    reason: str | None = field_spec("str", optional=True)
    batch_size: int = field_spec("int", positive=True)
    model: dict = field_spec("dict")  # the architecture's description of the model costed
    time_s: dict = field_spec("dict")  # per model (dense, scheme): median seconds per phase and total, per-step totals
    time_ratio: dict = field_spec("dict")  # per phase and total: the scheme's median over dense's
    speedup: float = field_spec("number", positive=True)  # 1 / time_ratio["total"]
    # timing.interval_doc of the per-step totals (dense, scheme): the 95% interval of time_ratio["total"]
    time_ratio_interval: dict | None = field_spec("dict", optional=True)
    peak_memory_bytes: dict = field_spec("dict")  # dense, scheme, method
    peak_ratio: float = field_spec("number", positive=True)
    ledger: dict = field_spec("dict")  # the scheme model's memory ledger (total, dense_total, ...)
    dense_ledger_total: float = field_spec("number", positive=True)
    model_size_bytes: dict = field_spec("dict")  # dense, scheme
    inference: dict = field_spec("dict")  # rows, dense_samples_per_s, scheme_samples_per_s, ratio
    realised_sparsity: float = field_spec("number", lo=0, hi=1)
    representations: dict = field_spec("dict")  # layer -> the representation it stores (auto: what it chose)
    seconds: float = field_spec("number", lo=0)  # the measurement's wall-clock time
    env: dict = field_spec("dict")  # measure.environment

    def __post_init__(self):
        validate_cost_result(asdict(self))

    @classmethod
    def skipped(cls, reason: str) -> CostResult:
        return cls(status="skipped", reason=reason)

    @classmethod
    def from_dict(cls, doc: dict, where: str = "cost result") -> CostResult:
        validate_cost_result(doc, where)
        return cls(**doc)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def ok(self) -> bool:
        return self.status == "ok"


FIELDS = {f.name: f.metadata for f in fields(CostResult)}


def _at(doc: dict, path: str):
    node = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def validate_cost_result(doc, where: str = "cost result") -> None:
    """Raise ValueError naming the first missing, unknown, ill-typed or out-of-bounds key."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - set(FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if doc.get("status") not in POINT_STATUSES:
        raise ValueError(f"{where}: key 'status' is {doc.get('status')!r}, not one of {', '.join(POINT_STATUSES)}")
    ok = doc["status"] == "ok"
    if not ok and not isinstance(doc.get("reason"), str):
        raise ValueError(f"{where}: status {doc['status']!r} needs a 'reason' (why the point was not measured)")
    check_fields(where, doc, FIELDS, complete=ok)
    if ok:
        for path in NESTED_NUMBERS:
            check_value(where, path, _at(doc, path), _POSITIVE)
