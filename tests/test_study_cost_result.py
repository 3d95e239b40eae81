"""The cost point's typed result: what it holds, the JSON it writes, what reading it refuses."""

import json

import pytest

from sparsebench.study.cost_result import CostResult, validate_cost_result


def ok_value(**changes) -> dict:
    """A measured cost point's value, keys in the order the documents hold them."""
    phases = {"forward": 0.01, "backward": 0.02, "optimizer": 0.005, "total": 0.035, "totals": [0.035, 0.036]}
    value = {
        "status": "ok", "batch_size": 32, "model": {"channels": 16},
        "time_s": {"dense": phases, "scheme": phases | {"total": 0.05}},
        "time_ratio": {"forward": 1.2, "backward": 1.5, "optimizer": 0.9, "total": 1.4}, "speedup": 1 / 1.4,
        "peak_memory_bytes": {"dense": 1000, "scheme": 900, "method": "memray.peak_heap"}, "peak_ratio": 0.9,
        "ledger": {"total": 400, "dense_total": 800}, "dense_ledger_total": 800,
        "model_size_bytes": {"dense": 2000, "scheme": 1200},
        "inference": {"rows": 64, "dense_samples_per_s": 100.0, "scheme_samples_per_s": 80.0, "ratio": 1.25},
        "realised_sparsity": 0.45, "representations": {"fc1": "csr"}, "seconds": 3.5, "env": {"machine_class": "x"},
    }
    return value | changes


def test_a_value_round_trips_to_the_same_json():
    value = ok_value()
    result = CostResult.from_dict(value)
    assert result.ok and result.speedup == value["speedup"] and result.time_ratio["total"] == 1.4
    assert json.dumps(result.to_dict()) == json.dumps(value)  # same keys, same order: documents do not change
    skipped = CostResult.skipped("layer 'fc1': bsr_cpp kernels unavailable here: no compiler")
    assert not skipped.ok
    assert skipped.to_dict() == {"status": "skipped", "reason": "layer 'fc1': bsr_cpp kernels unavailable here: "
                                                                "no compiler"}
    assert CostResult.from_dict(skipped.to_dict()) == skipped


@pytest.mark.parametrize("value, message", [
    (ok_value(speedup=-1), "key 'speedup' must be > 0, got -1"),
    (ok_value(speedup=float("nan")), "key 'speedup' must be a finite number"),
    (ok_value(batch_size=1.5), "key 'batch_size' must be a whole number"),
    (ok_value(realised_sparsity=1.5), "key 'realised_sparsity' must be in [0, 1]"),
    (ok_value(representations=None), "missing key 'representations'"),
    (ok_value(ledger={"total": 1}), "key 'ledger.dense_total' must be a number, got None"),
    (ok_value(time_ratio={"forward": 1, "backward": 1, "optimizer": 1, "total": 0}),
     "key 'time_ratio.total' must be > 0"),
    (ok_value(speed=2.0), "unknown key 'speed'"),
    (ok_value(status="error"), "key 'status' is 'error', not one of ok, skipped"),
    ({"status": "skipped"}, "needs a 'reason'"),
    ([], "expected a JSON object, got list"),
])
def test_reading_refuses_what_a_measurement_cannot_give(value, message):
    with pytest.raises(ValueError, match="^value: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        validate_cost_result(value, "value")


def test_an_impossible_result_cannot_be_made():
    with pytest.raises(ValueError, match="'peak_ratio' must be > 0"):
        CostResult(**ok_value(peak_ratio=0))
