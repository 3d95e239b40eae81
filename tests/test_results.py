"""The result document: atomic writing, validation, loading."""

import json
import os

import pytest

from sparsebench import results
from sparsebench.results import (
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    load_results,
    result_path,
    validate_result,
    write_json_atomic,
)

# scheme -> (slug, pattern, target sparsity, representation); by hand so these tests need no pattern registry
SCHEMES = {
    "dense": ("dense", "dense", 0.0, "masked"),
    "random:0.5@csr": ("random-0.5-csr", "random", 0.5, "csr"),
    "block:4x4:0.5@bsr": ("block4x4-0.5-bsr", "block", 0.5, "bsr"),
}


def make_result(arch="cnn", scheme="dense", **overrides):
    """A complete, valid result document with plausible made-up numbers."""
    slug, pattern, target, rep = SCHEMES[scheme]
    doc = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "arch": arch, "scheme": scheme, "slug": slug,
        "pattern": pattern, "representation": rep, "target_sparsity": target,
        "budget": "ci", "budget_settings": {"steps": 300, "batch_size": 64}, "seed": 0,
        "dataset": {"name": "cifar10", "train_size": 50000, "test_size": 10000}, "model": {"params": 1000},
        "accuracy": 0.61, "final_loss": 1.1, "train_time_s": 40.2, "steps": 300, "samples": 19200,
        "step_time_s": 0.134, "inference_time_s": 3.1, "inference_samples_per_s": 3225.8,
        "peak_memory_bytes": 123_456_789, "peak_memory_method": "memray",
        "ledger": {"weights": 1, "gradients": 1, "optimizer_state": 1, "masks_and_indices": 1, "total": 4,
                   "dense_total": 8},
        "model_size_bytes": 1000, "dense_model_size_bytes": 2000,
        "sparsity": {"total": {"realised": target * 0.9, "kept": 100, "count": 200}, "layers": {}},
        "realised_sparsity": target * 0.9,
        "time_ratio_vs_dense": 1.0 if pattern == "dense" else 1.7,
        "env": {"torch": "2.13.0", "device": "cpu", "threads": 2, "cpu": "test cpu", "gpu": None,
                "commit": "abc123", "python": "3.11.7"},
    }
    doc.update(overrides)
    return doc


def test_required_keys_cover_the_document():
    assert set(REQUIRED_KEYS) == set(make_result())
    validate_result(make_result())


def test_atomic_write_round_trips_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"  # parent dirs are created
    write_json_atomic(path, {"k": 1})
    write_json_atomic(path, {"k": 2})
    assert json.loads(path.read_text()) == {"k": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_crash_before_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"k": "old"})

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_json_atomic(path, {"k": "new"})
    assert json.loads(path.read_text()) == {"k": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_unserialisable_object_keeps_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"k": "old"})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"k": float("nan")})  # NaN is not JSON
    assert json.loads(path.read_text()) == {"k": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("key", ["accuracy", "ledger", "env", "slug", "schema_version"])
def test_validate_names_missing_key_and_file(key):
    doc = make_result()
    del doc[key]
    with pytest.raises(ValueError, match=rf"somewhere\.json.*'{key}'"):
        validate_result(doc, "somewhere.json")


@pytest.mark.parametrize("key,value", [("accuracy", "high"), ("accuracy", float("nan")), ("steps", 1.5),
                                       ("arch", 3), ("env", []), ("peak_memory_bytes", True)])
def test_validate_names_wrong_type(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        validate_result(make_result(**{key: value}))


def test_validate_checks_nested_totals_and_version():
    with pytest.raises(ValueError, match="ledger.total"):
        validate_result(make_result(ledger={"dense_total": 8}))
    with pytest.raises(ValueError, match="sparsity.total.realised"):
        validate_result(make_result(sparsity={"layers": {}}))
    with pytest.raises(ValueError, match="schema_version"):
        validate_result(make_result(schema_version=99))


def test_non_ok_result_needs_only_identity():
    doc = {k: make_result()[k] for k in results.IDENTITY_KEYS} | {"status": "skipped", "reason": "no CUDA"}
    validate_result(doc)


def test_result_path():
    assert result_path("out", "cnn", "block4x4-0.5-bsr").as_posix() == "out/cnn/block4x4-0.5-bsr.json"


def test_load_results_recursive_skips_other_json(tmp_path):
    write_json_atomic(result_path(tmp_path, "cnn", "dense"), make_result())
    write_json_atomic(tmp_path / "deep" / "er" / "r.json", make_result(arch="transformer"))
    write_json_atomic(tmp_path / ".benchmarks" / "0001_run.json", {"machine_info": {}, "benchmarks": []})
    write_json_atomic(tmp_path / "list.json", [1, 2])
    (tmp_path / "notes.txt").write_text("not json")
    docs = load_results(tmp_path)
    assert sorted(d["arch"] for d in docs) == ["cnn", "transformer"]


def test_load_results_corrupt_names_file(tmp_path):
    write_json_atomic(result_path(tmp_path, "cnn", "dense"), make_result())
    bad = tmp_path / "cnn" / "random-0.5-csr.json"
    bad.write_text('{"schema_version": 1, "arch": "cnn", "stat')
    with pytest.raises(ValueError, match="random-0.5-csr.json"):
        load_results(tmp_path)
    bad.write_text(json.dumps(make_result(accuracy=None)))
    with pytest.raises(ValueError, match="random-0.5-csr.json.*accuracy"):
        load_results(tmp_path)


def test_load_results_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_results(tmp_path / "nope")
    assert load_results(tmp_path) == []


def test_atomic_write_gives_an_ordinary_file_mode(tmp_path):
    import os

    from sparsebench.results import write_json_atomic

    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
