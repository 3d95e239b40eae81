"""The data package (locate, cache, cifar10, imdb) on tiny parquet files written here in the hub schema; never the
shared data, never the network. Faults: a corrupt cache entry is named, discarded and rebuilt; bad source labels
are refused before anything is cached."""

import io
import json
import os
import shutil
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sparsebench import data
from sparsebench.atomic import Locked, locked
from sparsebench.data import DataNotFound, cifar10, imdb, load_cifar10, load_imdb, locate, resolve_data_dir

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_FEATURES = {"img": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
IMDB_FEATURES = {"text": {"dtype": "string", "_type": "Value"},
                 "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
WORDS = "the movie was great awful boring fun plot actor scene story loved hated music ending".split()
SEQ_LEN = 16


def write_parquet(path, columns: dict, features: dict) -> None:
    """A parquet file with the hub's `huggingface` schema metadata, as the shared copy has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_cifar(root, split: str, pixels: np.ndarray, labels: list[int]) -> None:
    img = pa.array([{"bytes": png(p), "path": None} for p in pixels],
                   type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    write_parquet(root / "cifar10" / f"{split}.parquet", {"img": img, "label": pa.array(labels, pa.int64())},
                  CIFAR_FEATURES)


# test split labels: the balanced subsets below are checked against these positions
IMDB_TEST_LABELS = [1, 1, 1, 0, 1, 0, 0, 1, 0, 0] * 2
BR_TEXT, PLAIN_TEXT = "Great movie!<br /><br />LOVED the ending", "great movie! loved the ending"


def imdb_texts(rng, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A data directory with 20 + 10 CIFAR-10 images and 30 + 20 IMDB reviews; returns (root, what was written)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    pixels = {"train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
              "test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)}
    labels = {"train": rng.integers(0, 10, 20).tolist(), "test": rng.integers(0, 10, 10).tolist()}
    for split in ("train", "test"):
        write_cifar(root, split, pixels[split], labels[split])
    texts = {"train": imdb_texts(rng, 28) + [BR_TEXT, " ".join(WORDS * 5)],  # the last is longer than SEQ_LEN
             "test": imdb_texts(rng, 19) + [PLAIN_TEXT]}
    ilabels = {"train": [i % 2 for i in range(30)], "test": IMDB_TEST_LABELS}
    for split in ("train", "test"):
        write_parquet(root / "imdb" / f"{split}.parquet",
                      {"text": pa.array(texts[split], pa.string()), "label": pa.array(ilabels[split], pa.int64())},
                      IMDB_FEATURES)
    return root, {"pixels": pixels, "labels": labels, "texts": texts, "imdb_labels": ilabels}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, no settings from the caller's environment, and no cache in the home directory."""
    def refuse(*args, **kwargs):
        raise AssertionError("sparsebench.data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in (data.DATA_ENV, data.HUB_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPARSEBENCH_CACHE_DIR", str(tmp_path / "default-cache"))


def forbid_loading(monkeypatch):
    """Make any decoding, tokenizer training or datasets access fail: only the cache may be used."""
    import datasets

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    for target, name in ((datasets, "load_dataset"), (cifar10, "_decode_images"), (imdb, "_train_tokenizer")):
        monkeypatch.setattr(target, name, fail)


def test_cifar10_pixels_labels_and_dtypes(sample, tmp_path, capsys):
    root, written = sample
    d = load_cifar10(root, cache_dir=tmp_path)
    assert d.name == "cifar10"
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), written["pixels"][split])  # exact, channels first
        assert y.tolist() == written["labels"][split]
    assert "decoding CIFAR-10" in capsys.readouterr().err


def test_cifar10_second_call_uses_cache(sample, tmp_path, monkeypatch, capsys):
    root, _ = sample
    first = load_cifar10(root, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("cifar10-*.pt"))) == 1
    assert not list(tmp_path.glob("hf-*")), "datasets' temporary Arrow copy should be gone"
    capsys.readouterr()
    forbid_loading(monkeypatch)
    second = load_cifar10(root, cache_dir=tmp_path)
    assert capsys.readouterr().err == ""
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_changed_data_invalidates_cache(tmp_path):
    rng = np.random.default_rng(1)
    root, cache = tmp_path / "data", tmp_path / "cache"
    pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for split in ("train", "test"):
        write_cifar(root, split, pixels, [0, 1, 2, 3])
    assert load_cifar10(root, cache_dir=cache).y_train.tolist() == [0, 1, 2, 3]
    write_cifar(root, "train", pixels, [9, 9, 9, 9])
    train = root / "cifar10" / "train.parquet"
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))  # a clearly newer file
    assert load_cifar10(root, cache_dir=cache).y_train.tolist() == [9, 9, 9, 9]
    assert len(list(cache.glob("cifar10-*.pt"))) == 2


def test_cifar10_prefix_subsets(sample, tmp_path):
    root, written = sample
    d = load_cifar10(root, cache_dir=tmp_path, train_size=5, test_size=3)
    assert d.x_train.shape == (5, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.y_train.tolist() == written["labels"]["train"][:5]
    assert np.array_equal(d.x_test.permute(0, 2, 3, 1).numpy(), written["pixels"]["test"][:3])
    with pytest.raises(ValueError, match="train_size"):
        load_cifar10(root, cache_dir=tmp_path, train_size=21)


def test_imdb_tokenisation(sample, tmp_path):
    root, written = sample
    d = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN)
    assert d.name == "imdb" and d.seq_len == SEQ_LEN
    assert d.x_train.shape == (30, SEQ_LEN) and d.x_test.shape == (20, SEQ_LEN)
    assert d.x_train.dtype == torch.int64 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == written["imdb_labels"]["train"] and d.y_test.tolist() == IMDB_TEST_LABELS
    assert 2 < d.vocab_size <= 300
    assert 0 <= int(d.x_train.min()) and int(d.x_train.max()) < d.vocab_size
    # every row: real tokens first, then only padding (id 0); the long review is truncated, not padded
    for row in torch.cat([d.x_train, d.x_test]):
        n = int((row != 0).sum())
        assert n > 0 and (row[n:] == 0).all()
    assert (d.x_train[-1] != 0).all()
    # "<br />" markup, case and the split do not matter: the same text gives the same ids
    assert torch.equal(d.x_train[-2], d.x_test[-1])
    # the tokenizer is cached as JSON with [PAD] = 0 and [UNK] = 1
    (tok_file,) = tmp_path.glob("imdb-tokenizer-*.json")
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1


def test_imdb_balanced_test_subset(sample, tmp_path):
    root, _ = sample
    full = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN)
    for size in (4, 5, 20):
        d = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN, train_size=7, test_size=size)
        neg = [i for i, y in enumerate(IMDB_TEST_LABELS) if y == 0][: size // 2]
        pos = [i for i, y in enumerate(IMDB_TEST_LABELS) if y == 1][: size - size // 2]
        rows = sorted(neg + pos)  # file order kept
        assert d.y_test.tolist() == [IMDB_TEST_LABELS[i] for i in rows]
        assert torch.equal(d.x_test, full.x_test[rows])
        assert torch.equal(d.x_train, full.x_train[:7])
    with pytest.raises(ValueError, match="test_size"):
        load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN, test_size=22)


def test_imdb_caches_tokenizer_and_ids(sample, tmp_path, monkeypatch):
    root, _ = sample
    first = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN)
    monkeypatch.setattr(imdb, "_train_tokenizer", lambda *a: pytest.fail("tokenizer trained twice"))
    longer = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=2 * SEQ_LEN)  # same tokenizer, new ids
    assert torch.equal(longer.x_train[:, :SEQ_LEN], first.x_train)
    forbid_loading(monkeypatch)
    again = load_imdb(root, cache_dir=tmp_path, vocab_size=300, seq_len=SEQ_LEN)
    assert torch.equal(again.x_train, first.x_train) and again.vocab_size == first.vocab_size


def test_missing_dir_names_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFound) as err:
        load_cifar10(missing, cache_dir=tmp_path)
    message = str(err.value)
    assert str(missing) in message and "SPARSEBENCH_DATA_DIR" in message and "--data-dir" in message


def test_env_var_and_defaults_are_reported(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    (empty / "cifar10").mkdir(parents=True)
    monkeypatch.setenv(data.DATA_ENV, str(empty))
    with pytest.raises(DataNotFound, match="lacks cifar10/train.parquet") as err:
        load_cifar10(cache_dir=tmp_path)
    assert str(empty) in str(err.value) and "$SPARSEBENCH_DATA_DIR" in str(err.value)
    # without the variable: beside the repository, then relative to the working directory (both in tmp_path here)
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.setattr(locate, "__file__", str(tmp_path / "repo" / "sparsebench" / "data" / "locate.py"))
    (tmp_path / "work" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "dir")
    with pytest.raises(DataNotFound) as err:
        resolve_data_dir()
    assert str(tmp_path / "shared" / "data") in str(err.value)
    assert str(tmp_path / "work" / "dir" / ".." / "shared" / "data") in str(err.value)


def test_resolve_checks_only_the_datasets_asked_for(sample, tmp_path):
    root, _ = sample
    assert resolve_data_dir(root) == root
    only_cifar = tmp_path / "only-cifar"
    write_cifar(only_cifar, "train", np.zeros((1, 32, 32, 3), np.uint8), [0])
    write_cifar(only_cifar, "test", np.zeros((1, 32, 32, 3), np.uint8), [0])
    assert resolve_data_dir(only_cifar, names=["cifar10"]) == only_cifar
    with pytest.raises(DataNotFound, match="imdb/train.parquet"):
        resolve_data_dir(only_cifar)


def test_wrong_columns(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        write_parquet(root / "imdb" / f"{split}.parquet", {"review": ["fine"], "label": [1]}, IMDB_FEATURES)
    with pytest.raises(ValueError, match="expected columns") as err:
        load_imdb(root, cache_dir=tmp_path / "cache")
    assert "train.parquet" in str(err.value) and "'text'" in str(err.value) and "review" in str(err.value)


def test_hub_only_when_asked(sample, tmp_path, monkeypatch):
    """With no offline copy and SPARSEBENCH_USE_HUB=1, the hub dataset (faked here) goes through the same code."""
    import datasets

    _, written = sample
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    splits = {s: datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in written["pixels"][s]],
                                             "label": written["labels"][s]}, features=features)
              for s in ("train", "test")}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: calls.append(name) or splits)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFound):
        load_cifar10(cache_dir=tmp_path)
    monkeypatch.setenv(data.HUB_ENV, "1")
    d = load_cifar10(cache_dir=tmp_path)
    assert calls == ["uoft-cs/cifar10"]
    assert np.array_equal(d.x_train.permute(0, 2, 3, 1).numpy(), written["pixels"]["train"])


@pytest.mark.parametrize("name", ["cifar10", "imdb"])
def test_the_cache_is_built_holding_its_lock(sample, tmp_path, monkeypatch, name):
    """Building takes atomic.locked on <cache>/<name>.lock (pid inside), so another loader would wait for it."""
    root, _ = sample
    module, step = (cifar10, "_decode_images") if name == "cifar10" else (imdb, "_train_tokenizer")
    real, seen = getattr(module, step), []

    def probe(*args):
        with pytest.raises(Locked) as held:
            with locked(tmp_path / f"{name}.lock", wait_s=0):
                pass
        seen.append(held.value.owner)
        return real(*args)

    monkeypatch.setattr(module, step, probe)
    load = load_cifar10 if name == "cifar10" else lambda *a: load_imdb(*a, vocab_size=300, seq_len=SEQ_LEN)
    load(root, tmp_path)
    assert seen and set(seen) == {os.getpid()}


# --- faults: corrupt cache entries, bad labels in the source ------------------------------------------------

def corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04garbage that is no pickle and no zip" * 10)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_corrupt_cifar_cache_is_named_discarded_and_rebuilt(sample, tmp_path, capsys, how):
    root, _ = sample
    first = load_cifar10(root, tmp_path)
    (entry,) = tmp_path.glob("cifar10-*.pt")
    corrupt(entry, how)
    capsys.readouterr()
    again = load_cifar10(root, tmp_path)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "corrupt" in x)
    assert str(entry) in line and "discarding it and rebuilding" in line and "weights_only" not in line
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    load_cifar10(root, tmp_path)  # rebuilt: the next load is quiet
    assert "corrupt" not in capsys.readouterr().err


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_imdb_cache_and_tokenizer_are_rebuilt(sample, tmp_path, capsys, how):
    root, _ = sample
    kw = dict(vocab_size=128, seq_len=SEQ_LEN)
    first = load_imdb(root, tmp_path, **kw)
    (entry,) = tmp_path.glob("imdb-*.pt")
    (tok,) = tmp_path.glob("imdb-tokenizer-*.json")
    corrupt(entry, how)
    corrupt(tok, how)
    capsys.readouterr()
    again = load_imdb(root, tmp_path, **kw)
    err = capsys.readouterr().err
    assert str(entry) in err and str(tok) in err
    assert torch.equal(first.x_train, again.x_train) and first.vocab_size == again.vocab_size


def test_cache_with_labels_out_of_range_is_rebuilt(sample, tmp_path, capsys):
    root, _ = sample
    load_cifar10(root, tmp_path)
    (entry,) = tmp_path.glob("cifar10-*.pt")
    t = torch.load(entry, weights_only=True)
    t["y_train"][0] = 42
    torch.save(t, entry)
    assert int(load_cifar10(root, tmp_path).y_train.max()) < 10
    assert "outside 0..9" in capsys.readouterr().err


@pytest.mark.parametrize("name, bad", [("cifar10", 12), ("cifar10", -1), ("imdb", 2)])
def test_bad_labels_in_the_source_are_refused_naming_the_file(sample, tmp_path, name, bad):
    src = tmp_path / "data"
    shutil.copytree(sample[0], src)
    path = src / name / "train.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[3] = bad
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())),
                   path)
    load = load_cifar10 if name == "cifar10" else load_imdb
    with pytest.raises(ValueError, match=f"train.parquet: label {bad} in row 3 is outside") as e:
        load(src, tmp_path / "cache")
    assert str(path.resolve()) in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached
