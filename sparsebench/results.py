"""The per-cell result document: its keys, its checks, and writing it atomically.

One JSON document per cell (architecture x scheme x budget), written by the training harness.
A results directory is scanned recursively; only JSON objects having both ``schema_version``
and ``arch`` are results, so other JSON (pytest-benchmark saves, say) can live beside them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1

# Every key of a complete ("status": "ok") document.
REQUIRED_KEYS = (
    "schema_version", "status", "arch", "scheme", "slug", "pattern", "representation", "target_sparsity",
    "budget", "budget_settings", "seed", "dataset", "model",
    "accuracy", "final_loss",
    "train_time_s", "steps", "samples", "step_time_s",
    "inference_time_s", "inference_samples_per_s",
    "peak_memory_bytes", "peak_memory_method",
    "ledger", "model_size_bytes", "dense_model_size_bytes",
    "sparsity", "realised_sparsity", "time_ratio_vs_dense", "env",
)
# A cell that did not run (status "skipped" / "error") still names itself; nothing else is promised.
IDENTITY_KEYS = ("schema_version", "status", "arch", "scheme", "slug", "budget")

_STR_KEYS = ("status", "arch", "scheme", "slug", "pattern", "representation", "budget", "peak_memory_method")
_NUMBER_KEYS = (
    "target_sparsity", "accuracy", "final_loss", "train_time_s", "step_time_s", "inference_time_s",
    "inference_samples_per_s", "peak_memory_bytes", "model_size_bytes", "dense_model_size_bytes",
    "time_ratio_vs_dense", "realised_sparsity",
)
_INT_KEYS = ("seed", "steps", "samples")
_DICT_KEYS = ("budget_settings", "dataset", "model", "ledger", "sparsity", "env")


def result_path(out_dir: str | os.PathLike, arch: str, slug: str) -> Path:
    """The default place of a cell's document: ``OUT_DIR/<arch>/<slug>.json``."""
    return Path(out_dir) / arch / f"{slug}.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_temp(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as JSON to a fsynced temp file beside ``path`` and return the temp file's path.

    The temp name ends in ``.tmp`` (never ``.json``), so a scan never mistakes it for a result.
    Half of an atomic write; ``write_json_atomic`` and the baseline update do the ``os.replace``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"  # NaN is not JSON; fail here, not in the reader
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = write_json_temp(path, obj)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_result(doc: dict, path: str | os.PathLike | None = None) -> None:
    """Raise ValueError naming the first missing or ill-typed key (and the file, if given).

    Documents with ``status`` other than ``"ok"`` need only the identity keys.
    """
    where = f"result {path}" if path is not None else "result document"
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    for key in IDENTITY_KEYS:
        if key not in doc:
            raise ValueError(f"{where}: missing key {key!r}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version is {doc['schema_version']!r}, this sparsebench reads "
                         f"{SCHEMA_VERSION}; rerun the cell to regenerate it")
    keys = REQUIRED_KEYS if doc["status"] == "ok" else IDENTITY_KEYS
    for key in keys:
        if key not in doc:
            raise ValueError(f"{where}: missing key {key!r}")
        value = doc[key]
        if key in _STR_KEYS and not isinstance(value, str):
            raise ValueError(f"{where}: key {key!r} must be a string, got {value!r}")
        if key in _NUMBER_KEYS and not (_is_number(value) and math.isfinite(value)):
            raise ValueError(f"{where}: key {key!r} must be a finite number, got {value!r}")
        if key in _INT_KEYS and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"{where}: key {key!r} must be a whole number, got {value!r}")
        if key in _DICT_KEYS and not isinstance(value, dict):
            raise ValueError(f"{where}: key {key!r} must be an object, got {value!r}")
    if doc["status"] != "ok":
        return
    for key in ("total", "dense_total"):
        if not _is_number(doc["ledger"].get(key)):
            raise ValueError(f"{where}: key 'ledger.{key}' must be a number, got {doc['ledger'].get(key)!r}")
    total = doc["sparsity"].get("total")
    if not isinstance(total, dict) or not _is_number(total.get("realised")):
        raise ValueError(f"{where}: key 'sparsity.total.realised' must be a number, got {total!r}")


def result_files(results_dir: str | os.PathLike) -> list[Path]:
    """Every ``*.json`` under ``results_dir``, in a stable order; FileNotFoundError if it is not a directory."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist; run the grid first "
                                f"(nox -s bench) or pass the directory it wrote")
    return sorted(p for p in results_dir.rglob("*.json") if p.is_file())


def read_result(path: str | os.PathLike) -> dict | None:
    """The result document in ``path``, or None if the file is other JSON; ValueError naming the file if corrupt."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        # A truncated or garbled *.json in a results directory is most likely a result; never skip it silently.
        raise ValueError(f"result {path}: cannot read it as JSON ({e}); delete it or rerun that cell") from e
    if not (isinstance(doc, dict) and "schema_version" in doc and "arch" in doc):
        return None
    validate_result(doc, path)
    return doc


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """All result documents under ``results_dir`` (recursively), skipping JSON that is not a result."""
    return [doc for path in result_files(results_dir) if (doc := read_result(path)) is not None]
