"""Fault injection on the data caches (issue 13): a truncated or garbage cache entry is named in one
line, discarded and rebuilt; labels out of range in the source data are refused before caching."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import write_tiny_datasets

from sparsebench import data


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_tiny_datasets(tmp_path_factory.mktemp("faultdata"), n_images=(20, 10), n_reviews=(40, 20))


def corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04garbage that is no pickle and no zip" * 10)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_corrupt_cifar_cache_is_named_discarded_and_rebuilt(small_data, tmp_path, capsys, how):
    first = data.load_cifar10(small_data, tmp_path)
    (entry,) = tmp_path.glob("cifar10-*.pt")
    corrupt(entry, how)
    capsys.readouterr()
    again = data.load_cifar10(small_data, tmp_path)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "corrupt" in x)
    assert str(entry) in line and "discarding it and rebuilding" in line and "weights_only" not in line
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    data.load_cifar10(small_data, tmp_path)  # rebuilt: the next load is quiet
    assert "corrupt" not in capsys.readouterr().err


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_imdb_cache_and_tokenizer_are_rebuilt(small_data, tmp_path, capsys, how):
    kw = dict(vocab_size=128, seq_len=16)
    first = data.load_imdb(small_data, tmp_path, **kw)
    (entry,) = tmp_path.glob("imdb-*.pt")
    (tok,) = tmp_path.glob("imdb-tokenizer-*.json")
    corrupt(entry, how)
    corrupt(tok, how)
    capsys.readouterr()
    again = data.load_imdb(small_data, tmp_path, **kw)
    err = capsys.readouterr().err
    assert str(entry) in err and str(tok) in err
    assert torch.equal(first.x_train, again.x_train) and first.vocab_size == again.vocab_size


def test_cache_with_labels_out_of_range_is_rebuilt(small_data, tmp_path, capsys):
    data.load_cifar10(small_data, tmp_path)
    (entry,) = tmp_path.glob("cifar10-*.pt")
    t = torch.load(entry, weights_only=True)
    t["y_train"][0] = 42
    torch.save(t, entry)
    assert int(data.load_cifar10(small_data, tmp_path).y_train.max()) < 10
    assert "outside 0..9" in capsys.readouterr().err


@pytest.mark.parametrize("name, bad", [("cifar10", 12), ("cifar10", -1), ("imdb", 2)])
def test_bad_labels_in_the_source_are_refused_naming_the_file(small_data, tmp_path, name, bad):
    src = tmp_path / "data"
    shutil.copytree(small_data, src)
    path = src / name / "train.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[3] = bad
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())),
                   path)
    load = data.load_cifar10 if name == "cifar10" else data.load_imdb
    with pytest.raises(ValueError, match=f"train.parquet: label {bad} in row 3 is outside") as e:
        load(src, tmp_path / "cache")
    assert str(path.resolve()) in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached
