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


TRANSFORMER = {"layers": 2, "heads": 4, "d_model": 64, "d_ff": 256, "seq_len": 256, "vocab_size": 8192,
               "parameters": 1}


def _acc_doc(arch, pattern, seed, accuracy, curve=None, budget="converge"):
    """An accuracy point's document as the driver writes it, with the fields the analysis reads."""
    result = {"accuracy": accuracy, "budget": budget, "steps": 100, "train_time_s": 10.0 + seed,
              "model": TRANSFORMER, "budget_settings": {"arch_training": {"epochs": 3, "batch_size": 64}}}
    if curve is not None:
        result["curve"] = {"slice_rows": 10, "slice_seed": 1,
                           "points": [{"step": 10 * i, "seconds": s, "loss": None, "accuracy": a}
                                      for i, (s, a) in enumerate(curve)]}
    return {"point": {"kind": "accuracy", "arch": arch, "pattern": pattern, "seed": seed}, "status": "ok",
            "value": {"result": result}}


def test_time_to_accuracy_pairs_each_seed_with_its_dense_and_says_not_reached():
    dense0 = [(0, 0.5), (10, 0.70), (20, 0.78), (30, 0.80)]  # final 0.80: targets 0.79 and 0.77
    dense1 = [(0, 0.5), (10, 0.72), (20, 0.82)]  # final 0.82: targets 0.81 and 0.79
    docs = dict(enumerate([
        _acc_doc("transformer", "dense", 0, 0.80, dense0), _acc_doc("transformer", "dense", 1, 0.82, dense1),
        _acc_doc("transformer", "random:0.9", 0, 0.79, [(0, 0.5), (5, 0.77), (15, 0.79)]),
        _acc_doc("transformer", "random:0.9", 1, 0.80, [(0, 0.5), (5, 0.80), (8, 0.80)]),
        _acc_doc("transformer", "block:16x16:0.9", 0, 0.6, [(0, 0.5), (4, 0.6)]),
    ]))
    table = analysis.time_to_accuracy_table(docs)
    dense = table[("transformer", P("dense"))][1.0]
    assert dense["reached"] == dense["n"] == 2 and dense["multiple"] == (1.0, 0.0)
    one = table[("transformer", P("random:0.9"))][1.0]  # seed 0: 0.79 at 15 s (dense 30 s); seed 1: never 0.81
    assert one["n"] == 2 and one["reached"] == 1 and one["seconds"] == (15, None)
    assert one["multiple"] == (0.5, None) and math.isclose(one["target"], 0.80)
    three = table[("transformer", P("random:0.9"))][3.0]  # 0.77 at 5 s (dense 20 s); 0.79 at 5 s (dense 20 s)
    assert three["reached"] == 2 and three["seconds"] == (5, 0.0) and three["multiple"] == (0.25, 0.0)
    never = table[("transformer", P("block:16x16:0.9"))]
    assert never[1.0]["reached"] == never[3.0]["reached"] == 0 and never[1.0]["seconds"] is None
    assert never[1.0]["n"] == 1  # its seed 0 only
    assert analysis.time_to_accuracy_text(never).startswith("never reaches dense's final accuracy minus 1 point")
    assert "not reached in 1 seed" in analysis.time_to_accuracy_text(never)
    assert analysis.time_to_accuracy_text(table[("transformer", P("random:0.9"))]) == (
        "reaches dense's final accuracy minus 1 point (0.800 on the curve slice) in 15 s of training, 0.50x "
        "dense's time (1 of 2 seeds reach it)")
    from sparsebench.study.report import time_to_accuracy_md
    md = time_to_accuracy_md(table, analysis.accuracy_summary(docs))
    assert "not reached" in md and "2 x d64 transformer, 256 tokens, converge" in md


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


SMALL, BIG = "2 x d64 transformer, 256 tokens", "6 x d512 transformer, 256 tokens"


def _row(rep="bsr_cpp", speedup=2.4, peak=0.71, pattern="block:16x16:0.9", size="reference", model=BIG):
    return {"arch": "transformer", "pattern": P(pattern), "size": size, "rep": rep, "speedup": speedup,
            "peak_ratio": peak, "model": model, "batch_size": 16, "speedup_interval": (2.2, 2.5, 3)}


def _accuracy(model=SMALL, budget="ci", training="batch 32, 400 steps"):
    return {"delta": -1.3, "delta_std": 0.4, "n": 3, "model": model, "budget": budget, "training": training}


def test_a_sentence_names_the_model_of_every_number_and_says_when_they_differ():
    text = analysis.sentence(_row(), _accuracy())
    assert text == ("block 16x16 at 90% (bsr_cpp) trains 2.40x faster than dense per step at the reference size "
                    "(6 x d512 transformer, 256 tokens, batch 16; median of 3 interleaved steps, speed-up 95% CI "
                    "2.20x to 2.50x) "
                    "and uses 0.71x dense's peak memory; the reference size has no accuracy (it needs the `full` "
                    "budget, on a GPU), but on a smaller model, the ci budget (2 x d64 transformer, 256 tokens, "
                    "batch 32, 400 steps), it costs 1.3 ± 0.4 points of final test accuracy (n=3 seeds).")
    same = analysis.sentence(_row(size="converge", model=SMALL), _accuracy(budget="converge"),
                             {1.0: {"n": 1, "reached": 1, "target": 0.84, "seconds": (300.0, None),
                                    "multiple": (0.8, None)}})
    assert same.endswith("and uses 0.71x dense's peak memory; trained under the converge budget (2 x d64 transformer, "
                         "256 tokens, batch 32, 400 steps) it reaches dense's final accuracy minus 1 point (0.840 on "
                         "the curve slice) in 300 s of training, 0.80x dense's time, and costs 1.3 ± 0.4 points of "
                         "final test accuracy (n=3 seeds).")
    slow = analysis.sentence(_row(speedup=0.5), None)
    assert "trains 2.00x slower than dense" in slow and slow.endswith("; no accuracy was measured for it.")


def test_describe_pattern():
    assert analysis.describe_pattern(P("block:16x16:0.9")) == "block 16x16 at 90%"
    assert analysis.describe_pattern(P("random:0.5")) == "random at 50%"
    assert analysis.describe_pattern(P("nm:2:4")) == "2:4 N:M"
    assert analysis.describe_pattern(P("dense")) == "dense"


def test_the_representations_costed_come_from_the_registry():
    assert REPRESENTATIONS == ("masked", "csr", "bsr", "bsr_cpp", "sparseprop", "auto")  # in STORES' order
    assert set(NOT_COSTED) == {"semi", "fastest"} and set(REPRESENTATIONS) | set(NOT_COSTED) == set(STORES)
    assert Sweep().representations == REPRESENTATIONS


def test_points_hold_typed_values_and_describe_themselves_in_canonical_strings():
    acc = AccuracyPoint("cnn", P("block:4x4:0.9"), 1, "ci")
    assert acc.training_scheme == parse_scheme("block:4x4:0.9@auto")
    assert acc.key == "accuracy/ci/cnn/block4x4-0.9-seed1"
    assert acc.describe() == {"kind": "accuracy", "arch": "cnn", "pattern": "block:4x4:0.9", "seed": 1, "budget": "ci",
                              "training_scheme": "block:4x4:0.9@auto"}
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
    assert representations_for(P("random:0.5"), REPRESENTATIONS) == ["masked", "csr", "sparseprop", "auto"]
    assert representations_for(P("block:4x4:0.5"), ("bsr", "semi")) == ["bsr"]
    assert representations_for(P("nm:2:4"), STORES) == ["masked", "csr", "semi", "sparseprop", "auto", "fastest"]
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
    assert costs == {"block:4x4:0.5@csr", "block:4x4:0.5@bsr", "block:4x4:0.5@bsr_cpp", "block:4x4:0.5@sparseprop",
                     "block:4x4:0.5@auto", "block:4x4:0.9", "block:4x4:0.9@csr", "block:4x4:0.9@bsr",
                     "block:4x4:0.9@bsr_cpp", "block:4x4:0.9@sparseprop", "block:4x4:0.9@auto"}
    from dataclasses import replace
    assert len(cost_points(replace(sweep, all_costs=True))) == 12  # masked at 0.5 too


def test_sentences_speak_for_auto_where_it_was_measured():
    from sparsebench.study.analysis import as_chosen, sentences

    rows = [_row("masked", 1.3, 1.1), _row("bsr_cpp", 2.6, 0.82), _row("auto", 2.5, 0.82),
            _row("masked", 1.2, 1.1, pattern="random:0.9"), _row("csr", 0.9, 0.8, pattern="random:0.9")]
    chosen = as_chosen(rows)
    assert chosen[("transformer", "reference", P("block:16x16:0.9"))]["rep"] == "auto"  # not the faster bsr_cpp
    assert chosen[("transformer", "reference", P("random:0.9"))]["rep"] == "masked"  # no auto: the fastest
    acc = {("transformer", P("block:16x16:0.9")): _accuracy()}
    (text, _) = sentences(rows, acc, "reference")
    assert text.startswith("transformer: on this machine, block 16x16 at 90% (auto) trains 2.50x faster than dense "
                           "per step at the reference size")
    assert "the reference size has no accuracy" in text


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
        "batch_size": 32, "model": "cnn", "speedup_interval": (1.0, 1.0, 2)}  # the same per-step totals
    # the point's per-step totals are equal, so its interval sits at a ratio of 1 (break-even), its median not
    at_one = {"kind": "at_or_below", "sparsity": 0.9}
    assert analysis.break_even_table([row]) == {("cnn", "ci", "block:4x4", "auto"): {
        "kind": "never", "sparsity": 0.9, "levels": 1, "interval": (at_one, at_one)}}
    with pytest.raises(ValueError, match="cost/ci/cnn/block4x4-0.9-auto: value: key 'speedup' must be > 0"):
        analysis.cost_rows({doc["key"]: doc | {"value": ok_value(speedup=0)}})


def test_break_even_carries_the_interval_of_its_levels():
    """The break-even of the interval's ends brackets the point's: faster ends cross earlier, slower later."""
    def row(level, ratio, speedup_lo, speedup_hi):
        return {"arch": "cnn", "size": "ci", "family": "random", "rep": "csr", "pattern": P(f"random:{level}"),
                "level": level, "time_ratio": {"total": ratio}, "speedup_interval": (speedup_lo, speedup_hi, 9)}

    (entry,) = analysis.break_even_table([row(0.5, 1.2, 0.7, 0.9), row(0.9, 0.8, 1.1, 1.4)]).values()
    early, late = entry["interval"]
    assert entry["kind"] == early["kind"] == late["kind"] == "interpolated"
    assert early["sparsity"] < entry["sparsity"] < late["sparsity"]
    assert math.isclose(entry["sparsity"], 0.7)
