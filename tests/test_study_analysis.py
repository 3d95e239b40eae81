"""The study's arithmetic and sweep rules, on literal numbers (no training)."""

import math

import pytest

from sparsebench.study import analysis
from sparsebench.study.points import (
    AccuracyPoint,
    CostPoint,
    Sweep,
    accuracy_points,
    cost_points,
    in_default_subset,
    representations_for,
)


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
    sparse = s[("cnn", "random:0.9")]
    assert sparse["n"] == 2 and math.isclose(sparse["mean"], 0.585)
    assert math.isclose(sparse["std"], math.sqrt(2) * 0.035)  # sample std (n - 1)
    assert math.isclose(sparse["delta"], -6.5)  # paired: -5 and -8 points
    assert math.isclose(sparse["delta_std"], math.sqrt(4.5))
    one = analysis.accuracy_summary({0: _acc_doc("cnn", "dense", 0, 0.6)})[("cnn", "dense")]
    assert one["std"] is None and one["delta"] == 0


def test_sentence_says_faster_or_slower_and_the_accuracy_cost():
    row = {"pattern": "block:16x16:0.9", "size": "reference", "rep": "bsr_cpp", "speedup": 2.4, "peak_ratio": 0.71}
    text = analysis.sentence(row, {"delta": -1.3, "delta_std": 0.4, "n": 3})
    assert text == ("on this machine, block 16x16 at 90% trains 2.40x faster than dense at the reference size "
                    "(bsr_cpp), costs 1.3 ± 0.4 points of accuracy (n=3), and uses 0.71x the peak memory.")
    slow = analysis.sentence(row | {"speedup": 0.5}, None)
    assert "trains 2.00x slower than dense" in slow and "accuracy" not in slow


def test_points_and_the_default_cost_subset():
    assert representations_for("random:0.5", ("masked", "csr", "bsr", "bsr_cpp", "auto")) == ["masked", "csr", "auto"]
    assert representations_for("block:4x4:0.5", ("bsr", "semi")) == ["bsr"]
    assert in_default_subset("random:0.75", "auto", "reference")
    assert not in_default_subset("random:0.75", "csr", "reference")  # csr only at 0.5 and 0.9
    assert in_default_subset("random:0.9", "csr", "reference")
    assert not in_default_subset("random:0.5", "masked", "ci") and in_default_subset("random:0.9", "masked", "ci")
    assert in_default_subset("nm:2:4", "csr", "reference")
    assert not in_default_subset("magnitude:0.9", "auto", "reference")
    assert in_default_subset("magnitude:0.9", "csr", "ci")
    sweep = Sweep(archs=("cnn",), families=("block:4x4",), levels=(0.5, 0.9), fixed=(), seeds=2, sizes=("ci",))
    assert accuracy_points(sweep) == [AccuracyPoint("cnn", p, s, "ci") for p in ("dense", "block:4x4:0.5",
                                                                                 "block:4x4:0.9") for s in (0, 1)]
    costs = {p.scheme for p in cost_points(sweep)}
    assert costs == {"block:4x4:0.5@csr", "block:4x4:0.5@bsr", "block:4x4:0.5@bsr_cpp", "block:4x4:0.5@auto",
                     "block:4x4:0.9", "block:4x4:0.9@csr", "block:4x4:0.9@bsr", "block:4x4:0.9@bsr_cpp",
                     "block:4x4:0.9@auto"}
    from dataclasses import replace
    assert len(cost_points(replace(sweep, all_costs=True))) == 10  # masked at 0.5 too
    assert CostPoint("cnn", "reference", "block:4x4:0.9@bsr_cpp").key == "cost/reference/cnn/block4x4-0.9-bsr_cpp"
    assert AccuracyPoint("cnn", "block:4x4:0.9", 1, "ci").training_scheme == "block:4x4:0.9@fastest"
    assert AccuracyPoint("cnn", "dense", 0, "ci").training_scheme == "dense"


def test_sentences_speak_for_auto_where_it_was_measured():
    from sparsebench.study.analysis import as_chosen, sentences

    def row(rep, speedup, peak, pattern="block:16x16:0.9", size="reference"):
        return {"arch": "transformer", "size": size, "pattern": pattern, "rep": rep, "speedup": speedup,
                "peak_ratio": peak}

    rows = [row("masked", 1.3, 1.1), row("bsr_cpp", 2.6, 0.82), row("auto", 2.5, 0.82),
            row("masked", 1.2, 1.1, pattern="random:0.9"), row("csr", 0.9, 0.8, pattern="random:0.9")]
    chosen = as_chosen(rows)
    assert chosen[("transformer", "reference", "block:16x16:0.9")]["rep"] == "auto"  # not the faster bsr_cpp
    assert chosen[("transformer", "reference", "random:0.9")]["rep"] == "masked"  # no auto: the fastest
    acc = {("transformer", "block:16x16:0.9"): {"delta": -1.3, "delta_std": 0.4, "n": 3}}
    (text, _) = sentences(rows, acc, "reference")
    assert text == ("transformer: on this machine, block 16x16 at 90% trains 2.50x faster than dense at the reference "
                    "size (auto), costs 1.3 ± 0.4 points of accuracy (n=3), and uses 0.82x the peak memory.")
