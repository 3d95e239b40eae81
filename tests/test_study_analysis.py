"""The study's arithmetic and sweep rules, on literal numbers (no training)."""

import math

import pytest

from sparsebench.patterns import parse_pattern
from sparsebench.schemes import STORES, parse_scheme
from sparsebench.study import analysis
from sparsebench.study.points import (
    NOT_COSTED,
    REPRESENTATIONS,
    AccuracyPoint,
    CostPoint,
    Sweep,
    accuracy_points,
    cost_points,
    in_default_subset,
    representations_for,
)

P = parse_pattern


@pytest.mark.parametrize("series, kind, sparsity", [
    ([(0.5, 1.4), (0.75, 1.2), (0.9, 0.8), (0.95, 0.6)], "interpolated", 0.75 + 0.2 * 0.15 / 0.4),
    ([(0.9, 0.8), (0.5, 1.5), (0.75, 1.0)], "interpolated", 0.75 + 0.0),  # ratio 1.0 counts as break-even
    ([(0.5, 1.5), (0.9, 1.0)], "interpolated", 0.9),  # dense speed at the highest level is break-even
    ([(0.5, 0.9), (0.9, 0.5)], "at_or_below", 0.5),
    ([(0.5, 2.0), (0.9, 1.1)], "never", 0.9),
    ([(0.5, 0.9), (0.75, 1.2), (0.9, 0.95)], "interpolated", 0.75 + 0.2 * 0.15 / 0.25),  # must stay below
    ([], "none", None),
])
def test_break_even(series, kind, sparsity):
    b = analysis.break_even(series)
    assert b["kind"] == kind
    if sparsity is None:
        assert b["sparsity"] is None
    else:
        assert math.isclose(b["sparsity"], sparsity, rel_tol=1e-9)


def test_break_even_text():
    assert analysis.break_even_text({"kind": "interpolated", "sparsity": 0.8125}) == "0.81"
    assert analysis.break_even_text({"kind": "at_or_below", "sparsity": 0.5}) == "<= 0.50"
    assert analysis.break_even_text({"kind": "never", "sparsity": 0.95}) == "> 0.95"


def test_pareto_front():
    points = [(1.0, 0.80), (0.5, 0.70), (0.6, 0.75), (0.7, 0.74), (1.2, 0.81), (0.5, 0.60), (2.0, 0.79)]
    assert analysis.pareto_front(points) == [1, 2, 0, 4]  # by cost; (0.7, .74), (0.5, .60), (2.0, .79) dominated
    assert analysis.pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points do not beat each other


def _acc_doc(arch, pattern, seed, accuracy):
    return {"point": {"kind": "accuracy", "arch": arch, "pattern": pattern, "seed": seed}, "status": "ok",
            "value": {"result": {"accuracy": accuracy}}}


def test_accuracy_summary_pairs_seeds_with_dense():
    docs = {i: d for i, d in enumerate([
        _acc_doc("cnn", "dense", 0, 0.60), _acc_doc("cnn", "dense", 1, 0.70),
        _acc_doc("cnn", "random:0.9", 0, 0.55), _acc_doc("cnn", "random:0.9", 1, 0.62)])}
    s = analysis.accuracy_summary(docs)
    assert set(s) == {("cnn", P("dense")), ("cnn", P("random:0.9"))}  # keyed by pattern values
    sparse = s[("cnn", P("random:0.9"))]
    assert sparse["n"] == 2 and math.isclose(sparse["mean"], 0.585)
    assert math.isclose(sparse["std"], math.sqrt(2) * 0.035)  # sample std (n - 1)
    assert math.isclose(sparse["delta"], -6.5)  # paired: -5 and -8 points
    assert math.isclose(sparse["delta_std"], math.sqrt(4.5))
    one = analysis.accuracy_summary({0: _acc_doc("cnn", "dense", 0, 0.6)})[("cnn", P("dense"))]
    assert one["std"] is None and one["delta"] == 0


def test_sentence_says_faster_or_slower_and_the_accuracy_cost():
    row = {"pattern": P("block:16x16:0.9"), "size": "reference", "rep": "bsr_cpp", "speedup": 2.4, "peak_ratio": 0.71}
    text = analysis.sentence(row, {"delta": -1.3, "delta_std": 0.4, "n": 3})
    assert text == ("on this machine, block 16x16 at 90% trains 2.40x faster than dense at the reference size "
                    "(bsr_cpp), costs 1.3 ± 0.4 points of accuracy (n=3), and uses 0.71x the peak memory.")
    slow = analysis.sentence(row | {"speedup": 0.5}, None)
    assert "trains 2.00x slower than dense" in slow and "accuracy" not in slow


def test_describe_pattern():
    assert analysis.describe_pattern(P("block:16x16:0.9")) == "block 16x16 at 90%"
    assert analysis.describe_pattern(P("random:0.5")) == "random at 50%"
    assert analysis.describe_pattern(P("nm:2:4")) == "2:4 N:M"
    assert analysis.describe_pattern(P("dense")) == "dense"


def test_the_representations_costed_come_from_the_registry():
    assert REPRESENTATIONS == ("masked", "csr", "bsr", "bsr_cpp", "auto")  # today's default set, in STORES' order
    assert set(NOT_COSTED) == {"semi", "fastest"} and set(REPRESENTATIONS) | set(NOT_COSTED) == set(STORES)
    assert Sweep().representations == REPRESENTATIONS


def test_points_hold_typed_values_and_describe_themselves_in_canonical_strings():
    acc = AccuracyPoint("cnn", P("block:4x4:0.9"), 1, "ci")
    assert acc.training_scheme == parse_scheme("block:4x4:0.9@fastest")
    assert acc.key == "accuracy/ci/cnn/block4x4-0.9-seed1"
    assert acc.describe() == {"kind": "accuracy", "arch": "cnn", "pattern": "block:4x4:0.9", "seed": 1, "budget": "ci",
                              "training_scheme": "block:4x4:0.9@fastest"}
    dense = AccuracyPoint("transformer", P("dense"), 0, "smoke")
    assert dense.training_scheme == parse_scheme("dense") and dense.key == "accuracy/smoke/transformer/dense-seed0"
    assert dense.describe()["training_scheme"] == "dense"
    cost = CostPoint("cnn", "reference", parse_scheme("nm:2:4@csr"))
    assert cost.key == "cost/reference/cnn/nm2of4-csr"
    assert cost.describe() == {"kind": "cost", "arch": "cnn", "size": "reference", "scheme": "nm:2:4@csr", "seed": 0}
    assert CostPoint("cnn", "ci", parse_scheme("random:0.9")).describe()["scheme"] == "random:0.9"  # masked: implied
    with pytest.raises(TypeError, match="must be a Pattern value"):
        AccuracyPoint("cnn", "dense", 0, "ci")
    with pytest.raises(TypeError, match="Scheme value"):
        CostPoint("cnn", "ci", "random:0.9@csr")


def test_points_and_the_default_cost_subset():
    assert representations_for(P("random:0.5"), REPRESENTATIONS) == ["masked", "csr", "auto"]
    assert representations_for(P("block:4x4:0.5"), ("bsr", "semi")) == ["bsr"]
    assert representations_for(P("nm:2:4"), STORES) == ["masked", "csr", "semi", "auto", "fastest"]
    assert in_default_subset(P("random:0.75"), "auto", "reference")
    assert not in_default_subset(P("random:0.75"), "csr", "reference")  # csr only at 0.5 and 0.9
    assert in_default_subset(P("random:0.9"), "csr", "reference")
    assert not in_default_subset(P("random:0.5"), "masked", "ci") and in_default_subset(P("random:0.9"), "masked", "ci")
    assert in_default_subset(P("nm:2:4"), "csr", "reference")
    assert not in_default_subset(P("magnitude:0.9"), "auto", "reference")
    assert in_default_subset(P("magnitude:0.9"), "csr", "ci")
    sweep = Sweep(archs=("cnn",), families=("block:4x4",), levels=(0.5, 0.9), fixed=(), seeds=2, sizes=("ci",))
    assert accuracy_points(sweep) == [AccuracyPoint("cnn", P(p), s, "ci") for p in ("dense", "block:4x4:0.5",
                                                                                    "block:4x4:0.9") for s in (0, 1)]
    costs = {str(p.scheme) for p in cost_points(sweep)}
    assert costs == {"block:4x4:0.5@csr", "block:4x4:0.5@bsr", "block:4x4:0.5@bsr_cpp", "block:4x4:0.5@auto",
                     "block:4x4:0.9", "block:4x4:0.9@csr", "block:4x4:0.9@bsr", "block:4x4:0.9@bsr_cpp",
                     "block:4x4:0.9@auto"}
    from dataclasses import replace
    assert len(cost_points(replace(sweep, all_costs=True))) == 10  # masked at 0.5 too


def test_sentences_speak_for_auto_where_it_was_measured():
    from sparsebench.study.analysis import as_chosen, sentences

    def row(rep, speedup, peak, pattern="block:16x16:0.9", size="reference"):
        return {"arch": "transformer", "size": size, "pattern": P(pattern), "rep": rep, "speedup": speedup,
                "peak_ratio": peak}

    rows = [row("masked", 1.3, 1.1), row("bsr_cpp", 2.6, 0.82), row("auto", 2.5, 0.82),
            row("masked", 1.2, 1.1, pattern="random:0.9"), row("csr", 0.9, 0.8, pattern="random:0.9")]
    chosen = as_chosen(rows)
    assert chosen[("transformer", "reference", P("block:16x16:0.9"))]["rep"] == "auto"  # not the faster bsr_cpp
    assert chosen[("transformer", "reference", P("random:0.9"))]["rep"] == "masked"  # no auto: the fastest
    acc = {("transformer", P("block:16x16:0.9")): {"delta": -1.3, "delta_std": 0.4, "n": 3}}
    (text, _) = sentences(rows, acc, "reference")
    assert text == ("transformer: on this machine, block 16x16 at 90% trains 2.50x faster than dense at the reference "
                    "size (auto), costs 1.3 ± 0.4 points of accuracy (n=3), and uses 0.82x the peak memory.")


def test_cost_rows_read_the_typed_cost_result():
    from test_study_cost_result import ok_value

    doc = {"key": "cost/ci/cnn/block4x4-0.9-auto", "status": "ok", "value": ok_value(),
           "point": {"kind": "cost", "arch": "cnn", "size": "ci", "scheme": "block:4x4:0.9@auto", "seed": 0}}
    (row,) = analysis.cost_rows({doc["key"]: doc})
    assert row == {
        "arch": "cnn", "size": "ci", "scheme": "block:4x4:0.9@auto", "pattern": P("block:4x4:0.9"),
        "family": "block:4x4", "level": 0.9, "rep": "auto", "speedup": 1 / 1.4, "time_ratio": ok_value()["time_ratio"],
        "peak_ratio": 0.9, "peak": 900, "dense_peak": 1000, "ledger": 400, "dense_ledger": 800,
        "ledger_share": 100 / 400, "size_ratio": 0.6, "inference_speedup": 0.8, "chosen": {"fc1": "csr"},
        "batch_size": 32}
    assert analysis.break_even_table([row]) == {("cnn", "ci", "block:4x4", "auto"): {
        "kind": "never", "sparsity": 0.9, "levels": 1}}
    with pytest.raises(ValueError, match="cost/ci/cnn/block4x4-0.9-auto: value: key 'speedup' must be > 0"):
        analysis.cost_rows({doc["key"]: doc | {"value": ok_value(speedup=0)}})
