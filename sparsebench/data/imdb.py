"""IMDB as fixed-length token ids: a BPE tokenizer trained on the whole training split, both cached.

The test subset is exactly balanced: the first ``test_size // 2`` negative and the first ``test_size - test_size // 2``
positive reviews, in file order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from .cache import cache_root, cached, key, source_key, take
from .locate import SPLITS, labels, parquet_files, read_splits, source

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


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
    """IMDB as fixed-length token ids from a tokenizer trained on the whole training split; the first train_size
    training rows and a balanced test subset of test_size rows when given."""
    files = parquet_files("imdb", data_dir)
    data_key = source_key("imdb", files)
    cache_dir = cache_root(cache_dir)
    tok_path = cache_dir / f"imdb-tokenizer-{key(data_key, vocab_size)}.json"
    path = cache_dir / f"imdb-{key(data_key, vocab_size, seq_len)}.pt"

    def build() -> dict:
        with read_splits("imdb", files, cache_dir) as tables:
            texts = {s: t.column("text").to_pylist() for s, t in tables.items()}
            ys = {s: torch.from_numpy(labels(t, "imdb", source("imdb", files, s))) for s, t in tables.items()}
        n = sum(map(len, texts.values()))
        print(f"sparsebench: tokenising IMDB ({n:,} reviews, once; cached in {cache_dir})", file=sys.stderr)
        tok = _load_tokenizer(tok_path)
        if tok is None:
            tok = _train_tokenizer(texts["train"], vocab_size)
            write_atomic(tok_path, tok.save)
        tensors = {"vocab_size": torch.tensor(tok.get_vocab_size())}
        for s in SPLITS:
            tensors[f"x_{s}"], tensors[f"y_{s}"] = _encode(tok, texts[s], seq_len), ys[s]
        return tensors

    t = cached(path, "imdb", build)
    x_test, y_test = t["x_test"], t["y_test"]
    if test_size is not None:
        rows = _balanced(y_test, test_size)
        x_test, y_test = x_test[rows], y_test[rows]
    return TextData(take(t["x_train"], train_size, "train_size"), take(t["y_train"], train_size, "train_size"),
                    x_test, y_test, vocab_size=int(t["vocab_size"]), seq_len=seq_len)
