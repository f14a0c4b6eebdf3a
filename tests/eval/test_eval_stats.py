"""Intervals, retention and paired tests of the results table: known answers and invariants."""
from __future__ import annotations

import numpy as np
import pytest

from eval import stats
from eval.table import build_table


def test_mcnemar_exact_matches_the_binomial_test():
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.7).astype(float)
    b = np.where(rng.random(200) < 0.2, 1 - a, a)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    expected = binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_exact(a, a) == 1.0


def test_paired_comparison_known_answer_and_symmetry():
    a = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1] * 10, dtype=float)
    b = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1, 1] * 10, dtype=float)
    result = stats.paired_comparison(a, b)
    assert result.difference == pytest.approx(0.2) and result.lo <= 0.2 <= result.hi
    assert result.test == "McNemar exact" and result.p_value < 1e-5       # 20 discordant pairs, all one way
    flipped = stats.paired_comparison(b, a)
    assert flipped.difference == pytest.approx(-0.2) and flipped.p_value == pytest.approx(result.p_value)
    continuous = stats.paired_comparison(a + 0.5, a)                       # non-binary: permutation test
    assert continuous.test == "sign-flip" and continuous.p_value < 0.001


def test_retention_known_answers():
    assert stats.retention(0.6, 0.2, 1.0) == pytest.approx(0.5)
    assert stats.retention(1.0, 0.2, 1.0) == pytest.approx(1.0)
    assert stats.retention(0.2, 0.2, 1.0) == pytest.approx(0.0)
    assert np.isnan(stats.retention(0.5, 0.4, 0.4))                        # the expert gained nothing


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        items = (rng.random(n) < 0.6).astype(float)
        reps = stats.Resampler([0]).replicates("b", {0: items})
        lo, hi = stats.interval(reps)
        assert lo <= items.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2.5                                      # ~ 1/sqrt(n)
    again = stats.Resampler([0]).replicates("b", {0: items})
    assert np.array_equal(again, reps)                                      # deterministic


def _rows(model, source, acc_items, seed=0):
    return {"run": "r", "experiment": "t", "seed": seed, "model": model, "benchmark": f"pm_cls_{source}",
            "metric": "acc", "value": float(np.mean(acc_items)), "stderr": None, "primary": True,
            "items": list(map(float, acc_items))}


def test_table_retention_and_comparisons_from_items():
    n = 100
    base = np.zeros(n)

    def acc(k):   # the first k items right
        out = base.copy()
        out[:k] = 1
        return out

    rows = []
    for source, (p, e, m) in {"a": (20, 80, 50), "b": (10, 60, 35)}.items():
        rows += [_rows("pivot", source, acc(p)), _rows(f"expert:{source}", source, acc(e)),
                 _rows("merge:pivotmerge", source, acc(m)), _rows("merge:ties", source, acc(p))]
    rows += [_rows("expert:a", "b", acc(10)), _rows("expert:b", "a", acc(20))]
    table = build_table(rows)
    assert table.benchmarks == ["pm_cls_a", "pm_cls_b"]
    assert table.retention_by_source[("merge:pivotmerge", "a")].mean == pytest.approx(50.0)
    assert table.retention_by_source[("merge:pivotmerge", "b")].mean == pytest.approx(50.0)
    assert table.retention["merge:pivotmerge"].mean == pytest.approx(50.0)
    assert table.retention["merge:ties"].mean == pytest.approx(0.0)
    assert table.retention["expert:a"].mean == pytest.approx(50.0)          # 100 on a, 0 on b
    cell = table.retention["merge:pivotmerge"]
    assert cell.lo < 50.0 < cell.hi
    versus_ties = next(c for c in table.comparisons if c.model == "merge:ties")
    assert versus_ties.difference == pytest.approx(27.5) and versus_ties.n_items == 2 * n
    assert versus_ties.verdict == "reference better" and versus_ties.p_value < 1e-6
    assert table.best["Retention"] == {"merge:pivotmerge"}
    # experts evaluated on their own source only (eval.experts_on: own_source): own cell 100, no mean
    own_only = build_table([r for r in rows if not (r["model"].startswith("expert:")
                                                    and r["benchmark"] != f"pm_cls_{r['model'][7:]}")])
    assert own_only.retention_by_source[("expert:b", "b")].mean == pytest.approx(100.0)
    assert "expert:b" not in own_only.retention
    assert own_only.retention["merge:pivotmerge"].mean == pytest.approx(50.0)


def test_lower_is_better_columns_bold_the_minimum():
    rows = []
    for model, nll in (("pivot", 3.0), ("merge:a", 2.0), ("merge:b", 2.5)):
        rows.append({"run": "r", "experiment": "t", "seed": 0, "model": model, "benchmark": "pm_nll_x",
                     "metric": "nll", "value": nll, "stderr": None, "primary": True, "items": [nll] * 10})
        rows.append({"run": "r", "experiment": "t", "seed": 0, "model": model, "benchmark": "pm_cls_x",
                     "metric": "acc", "value": 0.5, "stderr": None, "primary": True})
    table = build_table(rows)
    assert "pm_nll_x" not in table.benchmarks and table.nll_benchmarks == {"x": "pm_nll_x"}
    assert table.cell("merge:a", "NLL").mean == pytest.approx(2.0)
    assert table.best["NLL"] == {"merge:a"}
