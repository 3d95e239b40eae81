"""Datasets as tensors: CIFAR-10 and IMDB from an offline parquet copy (or the hub), decoded once and cached.

The offline directory has the hub layout: ``cifar10/{train,test}.parquet`` (``img``: PNG struct, ``label``) and
``imdb/{train,test}.parquet`` (``text``, ``label``). The first call decodes (CIFAR-10) or tokenises (IMDB) the whole
dataset and saves the tensors under the cache directory; later calls only load them. Normalisation and
augmentation belong to the training code, so images stay uint8.

Subsets: ``train_size``/``test_size`` take the first N rows (the files are pre-shuffled, so a prefix is roughly
balanced), except the IMDB test subset, which is exactly balanced: the first ``test_size // 2`` negative and the
first ``test_size - test_size // 2`` positive reviews, in file order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic
from .machine import cache_dir as machine_cache_dir

DATA_ENV = "SPARSEBENCH_DATA_DIR"
HUB_ENV = "SPARSEBENCH_USE_HUB"
HUB_NAMES = {"cifar10": "uoft-cs/cifar10", "imdb": "stanfordnlp/imdb"}
COLUMNS = {"cifar10": ("img", "label"), "imdb": ("text", "label")}
SPLITS = ("train", "test")
CACHE_VERSION = 1  # bump when the cached tensors' format or the tokenizer recipe changes
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


class DataNotFound(Exception):
    """No directory with the dataset's parquet files was found."""


@dataclass(frozen=True)
class ImageData:
    """CIFAR-10 as uint8 images (N, 3, 32, 32) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "cifar10"


@dataclass(frozen=True)
class TextData:
    """IMDB as int64 token ids (N, seq_len), 0 = padding, and int64 labels (0 = neg, 1 = pos).

    ``vocab_size`` is the size of the trained vocabulary (all ids are below it); it is the requested size unless
    the training texts are too few to fill it.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    vocab_size: int
    seq_len: int
    name: str = "imdb"


def _missing(root: Path, names: Iterable[str]) -> list[str]:
    return [f"{n}/{s}.parquet" for n in names for s in SPLITS if not (root / n / f"{s}.parquet").is_file()]


def resolve_data_dir(data_dir: str | os.PathLike | None = None, *, names: Iterable[str] = tuple(COLUMNS)) -> Path:
    """The directory holding ``<name>/{train,test}.parquet`` for each of ``names``.

    An explicit ``data_dir`` or $SPARSEBENCH_DATA_DIR is the only place looked at (a wrong setting is an error, not
    something to silently fall back from); otherwise ``shared/data`` beside the repository, then ``../shared/data``
    relative to the working directory.
    """
    names = tuple(names)
    if data_dir is not None:
        candidates = [(Path(data_dir), "data_dir argument / --data-dir")]
    elif os.environ.get(DATA_ENV):
        candidates = [(Path(os.environ[DATA_ENV]), f"${DATA_ENV}")]
    else:
        candidates = [(Path(__file__).resolve().parents[2] / "shared" / "data", "beside the repository"),
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


def _key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:16]


def _locate(name: str, data_dir) -> tuple[dict[str, Path] | None, str]:
    """The dataset's parquet files (None = use the hub) and a key that changes when they change."""
    try:
        root = resolve_data_dir(data_dir, names=[name])
    except DataNotFound:
        if os.environ.get(HUB_ENV) != "1":
            raise
        return None, _key("hub", HUB_NAMES[name])
    files = {s: (root / name / f"{s}.parquet").resolve() for s in SPLITS}
    return files, _key(*((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()))


@contextlib.contextmanager
def _splits(name: str, files: dict[str, Path] | None, cache_dir: Path) -> Iterator[dict]:
    """{"train": table, "test": table} as raw pyarrow tables (no per-row decoding by datasets)."""
    import datasets
    import pyarrow.parquet as pq

    quiet = not datasets.are_progress_bars_disabled()
    if quiet:  # our own one-line message says what is happening
        datasets.disable_progress_bars()
    try:
        if files is None:  # the hub: keep its download in our cache so later runs need no network
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


def _check_columns(found: list[str], name: str, source) -> None:
    if not set(COLUMNS[name]) <= set(found):
        raise ValueError(f"{source}: expected columns {list(COLUMNS[name])} ({name}), found {list(found)}")


def _cache_lock(cache_dir: Path, name: str):
    """Parallel workers (pytest-xdist) wait for one of them to build the cache instead of all building it."""
    from filelock import FileLock

    return FileLock(str(cache_dir / f"{name}.lock"))


N_CLASSES = {"cifar10": 10, "imdb": 2}


def _source(name: str, files: dict[str, Path] | None, split: str) -> str:
    return str(files[split]) if files is not None else f"{HUB_NAMES[name]} ({split})"


def _labels(table, name: str = "", source: str = "") -> np.ndarray:
    """Labels as int64, range-checked before anything is cached: a bad label is the source file's fault."""
    column = table.column("label")
    if column.null_count:
        raise ValueError(f"{source}: column 'label' has {column.null_count} missing values; fix or replace the file")
    labels = np.array(column.to_numpy(), dtype=np.int64)  # a copy, not a view of datasets' files
    n = N_CLASSES.get(name)
    if n is not None and len(labels):
        bad = np.flatnonzero((labels < 0) | (labels >= n))
        if len(bad):
            raise ValueError(f"{source}: label {labels[bad[0]]} in row {bad[0]} is outside 0..{n - 1} ({name} has "
                             f"{n} classes; {len(bad)} bad rows); fix or replace the file")
    return labels


def _load_cache(path: Path, name: str) -> dict | None:
    """The cached tensors in ``path``, or None when there are none. A corrupt entry (truncated, garbage, wrong
    contents) is named in one line on stderr and discarded, so the caller rebuilds it."""
    if not path.exists():
        return None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about a garbage pickle say nothing useful here
            t = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001  (whatever a broken file raises, the fix is the same)
        reason = f"torch.load failed: {type(e).__name__}"  # its text suggests weights_only=False: never for a cache
    else:
        try:
            _check_cached(t, name)
            return t
        except ValueError as e:
            reason = str(e)
    print(f"sparsebench: cache {path} is corrupt ({reason}); discarding it and rebuilding", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def _check_cached(t, name: str) -> None:
    if not isinstance(t, dict):
        raise ValueError(f"expected a dict of tensors, got {type(t).__name__}")
    dims = 4 if name == "cifar10" else 2
    for s in SPLITS:
        x, y = t.get(f"x_{s}"), t.get(f"y_{s}")
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError(f"x_{s} or y_{s} missing")
        if x.dim() != dims or y.dim() != 1 or len(x) != len(y) or y.dtype != torch.int64:
            raise ValueError(f"x_{s} {tuple(x.shape)} and y_{s} {tuple(y.shape)} do not fit together")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= N_CLASSES[name]):
            raise ValueError(f"y_{s} holds labels outside 0..{N_CLASSES[name] - 1}")
    if name == "imdb" and not isinstance(t.get("vocab_size"), torch.Tensor):
        raise ValueError("vocab_size missing")


def _decode_images(table) -> np.ndarray:
    """PNG bytes -> uint8 (N, 32, 32, 3). A plain PIL loop into one array beats datasets' numpy formatting."""
    from PIL import Image

    pngs = table.column("img").combine_chunks().field("bytes").to_pylist()
    out = np.empty((len(pngs), 32, 32, 3), dtype=np.uint8)
    for i, png in enumerate(pngs):
        img = Image.open(io.BytesIO(png))
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (32, 32):
            raise ValueError(f"CIFAR-10 image {i} is {img.size[0]}x{img.size[1]}, expected 32x32")
        out[i] = np.asarray(img)
    return out


def _take(x: torch.Tensor, n: int | None, what: str) -> torch.Tensor:
    """The first n rows (a copy, so the rest can be freed); all rows when n is None."""
    if n is None:
        return x
    if not 0 < n <= len(x):
        raise ValueError(f"{what} must be between 1 and {len(x)}, got {n}")
    return x[:n].clone()


def load_cifar10(data_dir=None, cache_dir=None, train_size: int | None = None,
                 test_size: int | None = None) -> ImageData:
    """CIFAR-10 as uint8 tensors; the first train_size / test_size rows when given."""
    files, key = _locate("cifar10", data_dir)
    cache_dir = Path(cache_dir or machine_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"cifar10-{key}.pt"
    with _cache_lock(cache_dir, "cifar10"):
        t = _load_cache(path, "cifar10")
        if t is None:
            with _splits("cifar10", files, cache_dir) as tables:
                n = sum(t.num_rows for t in tables.values())
                print(f"sparsebench: decoding CIFAR-10 ({n:,} images, once; cached in {path})", file=sys.stderr)
                tensors = {}
                for s, t in tables.items():
                    tensors[f"y_{s}"] = torch.from_numpy(_labels(t, "cifar10", _source("cifar10", files, s)))
                    tensors[f"x_{s}"] = torch.from_numpy(_decode_images(t)).permute(0, 3, 1, 2).contiguous()
            write_atomic(path, lambda tmp: torch.save(tensors, tmp))
            t = tensors
    return ImageData(_take(t["x_train"], train_size, "train_size"), _take(t["y_train"], train_size, "train_size"),
                     _take(t["x_test"], test_size, "test_size"), _take(t["y_test"], test_size, "test_size"))


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A lowercase BPE tokenizer trained on ``texts``; [PAD] = 0, [UNK] = 1.

    BPE without subword prefixes/suffixes: the tokenizers trainer then gives the same vocabulary on every run
    (WordPiece, and BPE with "##" or "</w>" markers, assign ids differently from run to run).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("<br />", " "), normalizers.NFD(),
                                           normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # words and single punctuation marks
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def _load_tokenizer(path: Path):
    """The cached tokenizer, or None (none yet, or a corrupt one: named in one line and discarded)."""
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
        if tok.token_to_id(PAD) != 0 or tok.token_to_id(UNK) != 1:
            raise ValueError(f"{PAD} and {UNK} are not ids 0 and 1")
        return tok
    except Exception as e:  # noqa: BLE001  (whatever a broken file raises, the fix is the same)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        print(f"sparsebench: cache {path} is corrupt ({reason}); discarding it and retraining the tokenizer",
              file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def _encode(tok, texts: list[str], seq_len: int) -> torch.Tensor:
    """Token ids (N, seq_len): the first seq_len tokens of each text, right-padded with 0."""
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(pad_id=0, pad_token=PAD, length=seq_len)
    ids = np.array([e.ids for e in tok.encode_batch_fast(texts)], dtype=np.int64).reshape(-1, seq_len)
    return torch.from_numpy(ids)


def _balanced(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first n // 2 label-0 and the first n - n // 2 label-1 rows, in file order."""
    keep = torch.zeros(len(y), dtype=torch.bool)
    for label, k in ((0, n // 2), (1, n - n // 2)):
        rows = (y == label).nonzero().squeeze(1)
        if not 0 < k <= len(rows):
            raise ValueError(f"test_size={n} needs {k} rows of label {label}; there are {len(rows)}")
        keep[rows[:k]] = True
    return keep.nonzero().squeeze(1)


def load_imdb(data_dir=None, cache_dir=None, vocab_size: int = 8192, seq_len: int = 256,
              train_size: int | None = None, test_size: int | None = None) -> TextData:
    """IMDB as fixed-length token ids from a tokenizer trained on the whole training split (never downloaded)."""
    files, key = _locate("imdb", data_dir)
    cache_dir = Path(cache_dir or machine_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tok_path = cache_dir / f"imdb-tokenizer-{_key(key, vocab_size)}.json"
    path = cache_dir / f"imdb-{_key(key, vocab_size, seq_len)}.pt"
    with _cache_lock(cache_dir, "imdb"):
        t = _load_cache(path, "imdb")
        if t is None:
            with _splits("imdb", files, cache_dir) as tables:
                texts = {s: t.column("text").to_pylist() for s, t in tables.items()}
                labels = {s: torch.from_numpy(_labels(t, "imdb", _source("imdb", files, s))) for s, t in tables.items()}
            n = sum(map(len, texts.values()))
            print(f"sparsebench: tokenising IMDB ({n:,} reviews, once; cached in {cache_dir})", file=sys.stderr)
            tok = _load_tokenizer(tok_path)
            if tok is None:
                tok = _train_tokenizer(texts["train"], vocab_size)
                write_atomic(tok_path, tok.save)
            tensors = {"vocab_size": torch.tensor(tok.get_vocab_size())}
            for s in SPLITS:
                tensors[f"x_{s}"], tensors[f"y_{s}"] = _encode(tok, texts[s], seq_len), labels[s]
            write_atomic(path, lambda tmp: torch.save(tensors, tmp))
            t = tensors
    x_test, y_test = t["x_test"], t["y_test"]
    if test_size is not None:
        rows = _balanced(y_test, test_size)
        x_test, y_test = x_test[rows], y_test[rows]
    return TextData(_take(t["x_train"], train_size, "train_size"), _take(t["y_train"], train_size, "train_size"),
                    x_test, y_test, vocab_size=int(t["vocab_size"]), seq_len=seq_len)
