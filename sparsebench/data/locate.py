"""Where the raw data comes from, and reading it: the data directory's parquet files, or the Hugging Face hub.

By default the data is read from a local directory in the hub's parquet layout (``<name>/{train,test}.parquet``),
named by ``data_dir`` / ``--data-dir`` or $SPARSEBENCH_DATA_DIR, else ``shared/data`` beside the repository. It is
downloaded from the hub only when that directory is missing and $SPARSEBENCH_USE_HUB is ``1``; CI and the tests
never set it, so they never download anything.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

DATA_ENV = "SPARSEBENCH_DATA_DIR"
HUB_ENV = "SPARSEBENCH_USE_HUB"
HUB_NAMES = {"cifar10": "uoft-cs/cifar10", "imdb": "stanfordnlp/imdb"}
COLUMNS = {"cifar10": ("img", "label"), "imdb": ("text", "label")}
N_CLASSES = {"cifar10": 10, "imdb": 2}
SPLITS = ("train", "test")


class DataNotFound(Exception):
    """No directory with the dataset's parquet files was found."""


def _missing(root: Path, names: Iterable[str]) -> list[str]:
    return [f"{n}/{s}.parquet" for n in names for s in SPLITS if not (root / n / f"{s}.parquet").is_file()]


def resolve_data_dir(data_dir: str | os.PathLike | None = None, *, names: Iterable[str] = tuple(COLUMNS)) -> Path:
    """The directory holding ``<name>/{train,test}.parquet`` for each of ``names``.

    An explicit ``data_dir`` or $SPARSEBENCH_DATA_DIR is the only place looked at (a wrong setting is an error, not
    something to silently fall back from); otherwise ``shared/data`` beside the repository, then ``../shared/data``
    relative to the working directory. It never consults the hub: callers that allow it (``parquet_files``) do.
    """
    names = tuple(names)
    if data_dir is not None:
        candidates = [(Path(data_dir), "data_dir argument / --data-dir")]
    elif os.environ.get(DATA_ENV):
        candidates = [(Path(os.environ[DATA_ENV]), f"${DATA_ENV}")]
    else:  # this file is <repository>/sparsebench/data/locate.py
        candidates = [(Path(__file__).resolve().parents[3] / "shared" / "data", "beside the repository"),
                      (Path("../shared/data"), "relative to the working directory")]
    tried = []
    for root, origin in candidates:
        missing = _missing(root, names)
        if not missing:
            return root
        reason = "does not exist" if not root.is_dir() else "lacks " + ", ".join(missing)
        tried.append(f"{root.absolute()} ({origin}: {reason})")
    raise DataNotFound(  # one line: the CLI prints it as is
        f"dataset files for {', '.join(names)} not found; looked in " + "; ".join(tried) + ". "
        f"Set {DATA_ENV} or pass --data-dir to a directory holding cifar10/{{train,test}}.parquet and "
        f"imdb/{{train,test}}.parquet, e.g. ../shared/data (or set {HUB_ENV}=1 to download from the Hugging Face hub)"
    )


def parquet_files(name: str, data_dir) -> dict[str, Path] | None:
    """The dataset's parquet file per split, resolved; None = download it from the hub, which happens only when
    no data directory has it and $SPARSEBENCH_USE_HUB is ``1`` (otherwise that is DataNotFound)."""
    try:
        root = resolve_data_dir(data_dir, names=[name])
    except DataNotFound:
        if os.environ.get(HUB_ENV) != "1":
            raise
        return None
    return {s: (root / name / f"{s}.parquet").resolve() for s in SPLITS}


def source(name: str, files: dict[str, Path] | None, split: str) -> str:
    """The split's origin as error messages name it: its file, or the hub dataset."""
    return str(files[split]) if files is not None else f"{HUB_NAMES[name]} ({split})"


def _check_columns(found: list[str], name: str, where) -> None:
    if not set(COLUMNS[name]) <= set(found):
        raise ValueError(f"{where}: expected columns {list(COLUMNS[name])} ({name}), found {list(found)}")


@contextlib.contextmanager
def read_splits(name: str, files: dict[str, Path] | None, cache_dir: Path) -> Iterator[dict]:
    """{"train": table, "test": table} as raw pyarrow tables (no per-row decoding by datasets), from ``files`` or,
    when ``files`` is None, from the hub (downloaded into ``cache_dir/hf``, so later runs need no network)."""
    import datasets
    import pyarrow.parquet as pq

    quiet = not datasets.are_progress_bars_disabled()
    if quiet:  # our own one-line message says what is happening
        datasets.disable_progress_bars()
    try:
        if files is None:
            ds = datasets.load_dataset(HUB_NAMES[name], cache_dir=str(cache_dir / "hf"))
            for s in SPLITS:
                _check_columns(ds[s].column_names, name, f"{HUB_NAMES[name]} ({s})")
            yield {s: ds[s].with_format("arrow")[:] for s in SPLITS}
            return
        for path in files.values():
            _check_columns(pq.read_schema(path).names, name, path)
        # datasets copies local parquet into Arrow files; we only need them until the tensors are saved
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="hf-") as tmp:
            ds = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in files.items()}, cache_dir=tmp)
            yield {s: ds[s].with_format("arrow")[:] for s in SPLITS}
    finally:
        if quiet:
            datasets.enable_progress_bars()


def labels(table, name: str = "", where: str = "") -> np.ndarray:
    """Labels as int64, range-checked before anything is cached: a bad label is the source file's fault."""
    column = table.column("label")
    if column.null_count:
        raise ValueError(f"{where}: column 'label' has {column.null_count} missing values; fix or replace the file")
    out = np.array(column.to_numpy(), dtype=np.int64)  # a copy, not a view of datasets' files
    n = N_CLASSES.get(name)
    if n is not None and len(out):
        bad = np.flatnonzero((out < 0) | (out >= n))
        if len(bad):
            raise ValueError(f"{where}: label {out[bad[0]]} in row {bad[0]} is outside 0..{n - 1} ({name} has "
                             f"{n} classes; {len(bad)} bad rows); fix or replace the file")
    return out
