"""The per-cell result: one typed value (``Result``) built by training, written as one JSON document,
read back (and checked) by the gate, the report and the tests. The schema lives here and only here.

A results directory is scanned recursively; only JSON objects having both ``schema_version`` and
``arch`` are results, so other JSON (pytest-benchmark saves, a grid manifest) can live beside them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .atomic import read_json, write_json_atomic, write_json_temp  # noqa: F401  (the result writers' API)
from .curves import check_curve
from .fields import check_fields, field_spec

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # a name read from a file that may become a path


def is_safe_name(name) -> bool:
    """A single file-name component of file-safe characters: no separator, no leading dot, not empty."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None

KiB, MiB = 1024, 1024 * 1024  # the byte units results are shown in
STATUSES = ("ok", "skipped", "error")  # error: the cell crashed or lost its worker (after its retry), see reason
SCHEMA_VERSION = 2  # 2: env.machine (fingerprint), env.machine_class, env.kernel_variant*, ledger_bytes


def is_finite(x) -> bool:
    """A real number (not a bool) that is finite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Result:
    schema_version: int = field_spec("int", identity=True)
    status: str = field_spec("str", identity=True)  # "ok", "skipped" (with reason) or "error"
    arch: str = field_spec("str", identity=True)
    scheme: str = field_spec("str", identity=True)
    slug: str = field_spec("str", identity=True)
    budget: str = field_spec("str", identity=True)
    reason: str | None = field_spec("str", optional=True)  # why a cell did not run
    pattern: str = field_spec("str")
    representation: str = field_spec("str")
    target_sparsity: float = field_spec("number", lo=0, hi=1)
    budget_settings: dict = field_spec("dict")
    seed: int = field_spec("int")
    dataset: dict = field_spec("dict")
    model: dict = field_spec("dict")
    accuracy: float = field_spec("number", lo=0, hi=1)
    final_loss: float = field_spec("number", lo=0)
    train_time_s: float = field_spec("number", lo=0)
    steps: int = field_spec("int", lo=0)
    samples: int = field_spec("int", lo=0)
    step_time_s: float = field_spec("number", lo=0)
    inference_time_s: float = field_spec("number", lo=0)
    inference_samples_per_s: float = field_spec("number", lo=0)
    peak_memory_bytes: int = field_spec("number", lo=0)
    peak_memory_method: str = field_spec("str")
    ledger: dict = field_spec("dict")
    ledger_bytes: int = field_spec("number", lo=0)  # ledger["total"], flat so the gate can compare it
    model_size_bytes: int = field_spec("number", lo=0)
    dense_model_size_bytes: int = field_spec("number", lo=0)
    sparsity: dict = field_spec("dict")
    realised_sparsity: float = field_spec("number", lo=0, hi=1)
    representations: dict = field_spec("dict", optional=True)
    kernels: dict = field_spec("dict", optional=True)
    time_ratio_vs_dense: float = field_spec("number", positive=True)
    # {"low", "high", "confidence", "pairs"}: timing.ratio_interval over the interleaved pairs in step_times_s
    time_ratio_interval: dict | None = field_spec("dict", optional=True)
    step_times_s: dict = field_spec("dict", optional=True)
    curve: dict = field_spec("dict", optional=True)  # the learning curve (curves.py)
    mask_updates: dict | None = field_spec("dict", optional=True)  # a dynamic schedule's updates (updater.py)
    env: dict = field_spec("dict")

    def __post_init__(self):
        validate_result(asdict(self))

    @classmethod
    def skipped(cls, cell, budget: str, reason: str, status: str = "skipped") -> Result:
        """A cell that did not run still names itself and says why."""
        return cls(schema_version=SCHEMA_VERSION, status=status, reason=reason, arch=cell.arch,
                   scheme=str(cell.scheme), slug=cell.scheme.slug, budget=budget)

    @classmethod
    def from_dict(cls, doc: dict, path: str | os.PathLike | None = None) -> Result:
        validate_result(doc, path)
        return cls(**doc)

    def to_dict(self) -> dict:
        """The JSON document: every field of an ok result; identity and reason of any other."""
        doc = asdict(self)
        return {k: v for k, v in doc.items() if v is not None or (self.ok and k not in _OPTIONAL)}

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def cell(self) -> str:
        return f"{self.arch} {self.scheme}"

    @property
    def machine_class(self) -> str | None:
        return (self.env or {}).get("machine_class")

    @property
    def file_slug(self) -> str:
        """The file-safe name of the scheme, derived from the parsed scheme (never from the ``slug`` text)."""
        from .schemes import parse_scheme

        return parse_scheme(self.scheme).slug


FIELDS = {f.name: f.metadata for f in fields(Result)}
IDENTITY_KEYS = tuple(k for k, m in FIELDS.items() if m["identity"])
REQUIRED_KEYS = tuple(k for k, m in FIELDS.items() if not m["optional"])  # every key of an ok document
_OPTIONAL = {k for k, m in FIELDS.items() if m["optional"]}
ENV_KEYS = {"machine": dict, "machine_class": str, "kernel_variant": str, "threads": int, "device": str}


MASK_UPDATE_TIMES = ("update_s", "dense_grad_s", "overhead_s_per_step")


def check_mask_updates(updates, where: str) -> None:
    """A dynamic schedule's record (updater.MaskUpdater.report): its times and counts, and its lists."""
    if not isinstance(updates, dict):
        raise ValueError(f"{where}: expected an object, got {type(updates).__name__}")
    for key in MASK_UPDATE_TIMES:
        if not (is_finite(updates.get(key)) and updates[key] >= 0):
            raise ValueError(f"{where}.{key}: must be a number >= 0, got {updates.get(key)!r}")
    for key in ("updates", "steps", "total_steps"):
        if not (isinstance(updates.get(key), int) and not isinstance(updates[key], bool) and updates[key] >= 0):
            raise ValueError(f"{where}.{key}: must be a whole number >= 0, got {updates.get(key)!r}")
    for key in ("switches", "history"):
        if not isinstance(updates.get(key), list):
            raise ValueError(f"{where}.{key}: must be a list, got {updates.get(key)!r}")
    if updates["updates"] != len(updates["history"]):
        raise ValueError(f"{where}: {updates['updates']} updates but {len(updates['history'])} in its history")


def check_interval(interval, where: str) -> None:
    """A confidence interval as results store it: 0 < low <= high, a confidence in (0, 1), its pair count."""
    if not isinstance(interval, dict):
        raise ValueError(f"{where}: expected an object, got {type(interval).__name__}")
    low, high, confidence, pairs = (interval.get(k) for k in ("low", "high", "confidence", "pairs"))
    if not (is_finite(low) and is_finite(high) and 0 < low <= high):
        raise ValueError(f"{where}: needs 0 < low <= high, got low {low!r}, high {high!r}")
    if not (is_finite(confidence) and 0 < confidence < 1):
        raise ValueError(f"{where}.confidence: must be in (0, 1), got {confidence!r}")
    if not (isinstance(pairs, int) and not isinstance(pairs, bool) and pairs >= 2):
        raise ValueError(f"{where}.pairs: must be a whole number >= 2, got {pairs!r}")


def validate_result(doc: dict, path: str | os.PathLike | None = None) -> None:
    """Raise ValueError naming the first missing, unknown, ill-typed or out-of-bounds key (and the file)."""
    where = f"result {path}" if path is not None else "result document"
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    for key in IDENTITY_KEYS:
        if doc.get(key) is None:
            raise ValueError(f"{where}: missing key {key!r}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version is {doc['schema_version']!r}, this sparsebench reads "
                         f"{SCHEMA_VERSION}; rerun the cell to regenerate it")
    unknown = set(doc) - set(FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (schema {SCHEMA_VERSION})")
    _check_identity(where, doc)
    ok = doc["status"] == "ok"
    check_fields(where, doc, FIELDS, complete=ok)
    if not ok:
        return
    for key in ("total", "dense_total"):
        if not (is_finite(doc["ledger"].get(key)) and doc["ledger"][key] >= 0):
            raise ValueError(f"{where}: key 'ledger.{key}' must be a number >= 0, got {doc['ledger'].get(key)!r}")
    total = doc["sparsity"].get("total")
    if not isinstance(total, dict) or not is_finite(total.get("realised")):
        raise ValueError(f"{where}: key 'sparsity.total.realised' must be a number, got {total!r}")
    for key, kind in ENV_KEYS.items():
        if not isinstance(doc["env"].get(key), kind):
            raise ValueError(f"{where}: key 'env.{key}' must be a {kind.__name__}, got {doc['env'].get(key)!r}")
    if not is_safe_name(doc["env"]["machine_class"]):
        raise ValueError(f"{where}: key 'env.machine_class' must be a file-safe name (letters, digits, '.', '_', "
                         f"'-'; no leading dot), got {doc['env']['machine_class']!r}")
    if doc.get("time_ratio_interval") is not None:
        check_interval(doc["time_ratio_interval"], f"{where}: key 'time_ratio_interval'")
    if doc.get("curve") is not None:
        check_curve(doc["curve"], f"{where}: key 'curve'")
    if doc.get("mask_updates") is not None:
        check_mask_updates(doc["mask_updates"], f"{where}: key 'mask_updates'")


def _check_identity(where: str, doc: dict) -> None:
    """Arch, scheme and slug name files, so they must be what they say: a known architecture, a scheme
    that parses, and the slug that scheme has."""
    from .archs import ARCHS
    from .schemes import parse_scheme

    for key in ("arch", "scheme", "slug", "budget", "status"):
        if not isinstance(doc[key], str):
            raise ValueError(f"{where}: key {key!r} must be a str, got {doc[key]!r}")
    if doc["status"] not in STATUSES:
        raise ValueError(f"{where}: key 'status' is {doc['status']!r}, not one of {', '.join(STATUSES)}")
    if doc["status"] != "ok" and not isinstance(doc.get("reason"), str):
        raise ValueError(f"{where}: status {doc['status']!r} needs a 'reason' (why the cell did not run)")
    if doc["arch"] not in ARCHS:
        raise ValueError(f"{where}: key 'arch' is {doc['arch']!r}, not a known architecture ({', '.join(ARCHS)})")
    try:
        scheme = parse_scheme(doc["scheme"])
    except ValueError as e:
        raise ValueError(f"{where}: key 'scheme' does not parse ({e})") from None
    if doc["slug"] != scheme.slug:
        raise ValueError(f"{where}: key 'slug' is {doc['slug']!r} but scheme {doc['scheme']!r} has slug "
                         f"{scheme.slug!r}; the document is inconsistent, rerun that cell")
    if not is_safe_name(doc["budget"]):
        raise ValueError(f"{where}: key 'budget' must be a file-safe name, got {doc['budget']!r}")


def result_path(out_dir: str | os.PathLike, arch: str, slug: str) -> Path:
    """The place of a cell's document: ``OUT_DIR/<arch>/<slug>.json`` (Cell.path for a Cell)."""
    return Path(out_dir) / arch / f"{slug}.json"


def write_result(out_dir: str | os.PathLike, result: Result) -> Path:
    path = result_path(out_dir, result.arch, result.file_slug)
    write_json_atomic(path, result.to_dict())
    return path


def result_files(results_dir: str | os.PathLike) -> list[Path]:
    """Every ``*.json`` under ``results_dir``, in a stable order; FileNotFoundError if it is not a directory."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist; run the grid first "
                                f"(nox -s bench) or pass the directory it wrote")
    return sorted(p for p in results_dir.rglob("*.json") if p.is_file())


def read_result(path: str | os.PathLike) -> Result | None:
    """The result in ``path``, or None if the file is other JSON; ValueError naming the file if corrupt."""
    path = Path(path)
    try:
        doc = read_json(path, "result")
    except ValueError as e:
        # A truncated or garbled *.json in a results directory is most likely a result; never skip it silently.
        raise ValueError(f"{e}; delete it or rerun that cell") from e
    if not isinstance(doc, dict):
        # only results and other tools' JSON objects live in a results directory; a list is neither
        raise ValueError(f"result {path}: expected a JSON object, got a JSON {type(doc).__name__}; "
                         f"delete it or rerun that cell")
    if not ("schema_version" in doc and "arch" in doc):
        return None
    return Result.from_dict(doc, path)


def scan_results(results_dir: str | os.PathLike) -> list[tuple[Path, Result | ValueError]]:
    """Every result file under ``results_dir`` with its Result, or the ValueError that says why it is unreadable."""
    found = []
    for path in result_files(results_dir):
        try:
            result = read_result(path)
        except ValueError as e:
            found.append((path, e))
            continue
        if result is not None:
            found.append((path, result))
    return found


def load_results(results_dir: str | os.PathLike) -> list[Result]:
    """All results under ``results_dir`` (recursively), skipping JSON that is not a result; ValueError if corrupt."""
    loaded = []
    for _, result in scan_results(results_dir):
        if isinstance(result, ValueError):
            raise result
        loaded.append(result)
    return loaded
