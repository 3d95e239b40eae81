"""The result document: atomic writing, validation, loading."""

import json
import os

import pytest
from factories import make_doc, make_result

from sparsebench import results
from sparsebench.cell import Cell
from sparsebench.results import (
    REQUIRED_KEYS,
    Result,
    load_results,
    result_path,
    validate_result,
    write_json_atomic,
    write_result,
)


def test_required_keys_cover_the_document():
    doc = make_result().to_dict()
    assert set(REQUIRED_KEYS) <= set(doc) and "reason" not in doc
    validate_result(doc)


def test_result_round_trips_through_its_document(tmp_path):
    result = make_result("transformer", "block:4x4:0.5@bsr")
    path = write_result(tmp_path, result)
    assert path == tmp_path / "transformer" / "block4x4-0.5-bsr.json"
    assert load_results(tmp_path) == [result]


def test_an_impossible_result_cannot_be_made():
    with pytest.raises(ValueError, match="'accuracy' must be in"):
        make_result(accuracy=1.5)  # constructing an impossible result fails where it is made


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
    doc = make_doc()
    del doc[key]
    with pytest.raises(ValueError, match=rf"somewhere\.json.*'{key}'"):
        validate_result(doc, "somewhere.json")


@pytest.mark.parametrize("key,value", [("accuracy", "high"), ("accuracy", float("nan")), ("steps", 1.5),
                                       ("arch", 3), ("env", []), ("peak_memory_bytes", True)])
def test_validate_names_wrong_type(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        validate_result(make_doc(**{key: value}))


@pytest.mark.parametrize("key,value", [("accuracy", 1.01), ("accuracy", -0.1), ("realised_sparsity", 1.2),
                                       ("peak_memory_bytes", -1), ("ledger_bytes", -8), ("model_size_bytes", -1),
                                       ("time_ratio_vs_dense", 0.0), ("train_time_s", -1.0)])
def test_validate_refuses_physically_impossible_values(key, value):
    with pytest.raises(ValueError, match=f"'{key}' must be"):
        validate_result(make_doc(**{key: value}))


def test_validate_refuses_unknown_keys_and_an_env_without_machine():
    with pytest.raises(ValueError, match="unknown key 'acuracy'"):
        validate_result(make_doc(acuracy=0.5))
    env = make_doc()["env"]
    del env["machine_class"]
    with pytest.raises(ValueError, match="env.machine_class"):
        validate_result(make_doc(env=env))


def test_validate_checks_nested_totals_and_version():
    with pytest.raises(ValueError, match="ledger.total"):
        validate_result(make_doc(ledger={"dense_total": 8}))
    with pytest.raises(ValueError, match="sparsity.total.realised"):
        validate_result(make_doc(sparsity={"layers": {}}))
    with pytest.raises(ValueError, match="schema_version"):
        validate_result(make_doc(schema_version=99))


def test_non_ok_result_needs_only_identity():
    doc = {k: make_doc()[k] for k in results.IDENTITY_KEYS} | {"status": "skipped", "reason": "no CUDA"}
    validate_result(doc)
    skipped = Result.skipped(Cell.parse("cnn", "nm:2:4@semi"), "ci", "no CUDA")
    assert skipped.to_dict() == {"schema_version": results.SCHEMA_VERSION, "status": "skipped", "arch": "cnn",
                                 "scheme": "nm:2:4@semi", "slug": "nm2of4-semi", "budget": "ci", "reason": "no CUDA"}


def test_result_path():
    assert result_path("out", "cnn", "block4x4-0.5-bsr").as_posix() == "out/cnn/block4x4-0.5-bsr.json"


def test_load_results_recursive_skips_other_json(tmp_path):
    write_json_atomic(result_path(tmp_path, "cnn", "dense"), make_doc())
    write_json_atomic(tmp_path / "deep" / "er" / "r.json", make_doc(arch="transformer"))
    write_json_atomic(tmp_path / ".benchmarks" / "0001_run.json", {"machine_info": {}, "benchmarks": []})
    (tmp_path / "notes.txt").write_text("not json")
    docs = load_results(tmp_path)
    assert sorted(d.arch for d in docs) == ["cnn", "transformer"]


def test_a_json_list_in_a_results_dir_is_an_error_naming_it(tmp_path):
    write_json_atomic(result_path(tmp_path, "cnn", "dense"), make_doc())
    write_json_atomic(tmp_path / "list.json", [1, 2])
    with pytest.raises(ValueError, match="list.json: expected a JSON object, got a JSON list"):
        load_results(tmp_path)


def test_load_results_corrupt_names_file(tmp_path):
    write_json_atomic(result_path(tmp_path, "cnn", "dense"), make_doc())
    bad = tmp_path / "cnn" / "random-0.5-csr.json"
    bad.write_text('{"schema_version": 2, "arch": "cnn", "stat')
    with pytest.raises(ValueError, match="random-0.5-csr.json"):
        load_results(tmp_path)
    bad.write_text(json.dumps(make_doc(accuracy=None)))
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
