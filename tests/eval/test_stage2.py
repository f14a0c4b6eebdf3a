"""The stage-2 analysis (eval/stage2.py) on known numbers, and the per-source VQA documents."""
import math

import numpy as np
import pytest

from eval.documents import SuiteSource, build_documents, planned_task_names
from eval.stage2 import analyse, kendall_tau, markdown, tau_interval


def test_kendall_tau_matches_scipy_on_known_numbers():
    from scipy.stats import kendalltau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    x, y = [1, 2, 2, 3, 5], [2, 1, 4, 4, 3]   # ties on both sides: tau-b
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_tau_interval_on_known_replicates():
    concordant = np.tile([[1.0, 2.0, 3.0, 4.0]], (50, 1))
    assert tau_interval(concordant, concordant * 10) == (1.0, 1.0)
    assert tau_interval(concordant, -concordant) == (-1.0, -1.0)
    # half the replicates reverse the last pair: tau is 1 or 2/3, the interval spans exactly those
    y = np.tile([[1.0, 2.0, 3.0, 4.0]], (100, 1))
    y[::2, 2:] = [4.0, 3.0]
    lo, hi = tau_interval(concordant.repeat(2, axis=0), y)
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(1.0)


def _rows(model, bench, correct, n=40):
    items = [1.0] * correct + [0.0] * (n - correct)
    return {"model": model, "benchmark": bench, "metric": "acc", "value": correct / n, "primary": True,
            "seed": 0, "items": items, "unit": "fraction"}


def test_analysis_of_a_store_where_the_ranking_survives():
    merges = {"merge:ties": (10, 12), "merge:tsv_m": (20, 22), "merge:wudi": (30, 32), "merge:pivotmerge": (39, 40)}
    rows = []
    for model, (stage1, post) in merges.items():
        rows += [_rows(model, "pm_cls_digits", stage1), _rows(model, "pm_easyvqa", 5), _rows(model, "pm_vqa_digits", 5),
                 _rows(f"sft:{model}", "pm_easyvqa", post), _rows(f"sft:{model}", "pm_vqa_digits", post)]
    result = analyse(rows)
    assert result.merges == list(merges)
    assert result.stage1["merge:ties"].mean == pytest.approx(25.0)
    assert result.post["merge:pivotmerge"].mean == pytest.approx(100.0)
    assert result.before["merge:ties"].mean == pytest.approx(12.5)
    assert result.tau == 1.0 and result.tau_lo > 0 and result.verdict.startswith("yes")
    assert [c.model for c in result.comparisons] == ["sft:merge:ties", "sft:merge:tsv_m", "sft:merge:wudi"]
    assert all(c.difference > 0 for c in result.comparisons)
    text = "\n".join(markdown(result))
    assert "Kendall tau-b between the 4 merges" in text and "| sft:merge:ties |" in text


def test_analysis_needs_tuned_rows():
    assert analyse([_rows("merge:ties", "pm_cls_digits", 10)]) is None


def _source(name, n=6):
    images = [{"bytes": f"{name}-test-{i}".encode(), "path": None} for i in range(n)]
    labels = [["zero", "one", "two"][i % 3] for i in range(n)]
    return SuiteSource(name, ["{label}"], images, labels)


def test_per_source_vqa_documents_ask_the_configured_questions_about_test_images_only():
    options = {"seed": 0, "items_per_task": 4, "kinds": ["vqa"],
               "vqa_questions": {"digits": ["What digit is this?", "Which digit?"]}}
    sources = [_source("digits"), _source("emoji")]
    docs = build_documents(sources, options)
    assert list(docs) == ["pm_vqa_digits"] == planned_task_names(options, ["digits", "emoji"])
    kind, rows = docs["pm_vqa_digits"]
    assert kind == "vqa" and len(rows) == 4
    test_images = {image["bytes"] for image in sources[0].images}
    for row in rows:
        assert row["image"]["bytes"] in test_images
        assert row["question"] in options["vqa_questions"]["digits"]
        assert row["choices"] == ["one", "two", "zero"] and row["choices"][row["answer"]] == row["label"]


def test_unset_vqa_questions_leave_the_suite_key_unchanged():
    from omegaconf import OmegaConf

    from eval.suite import make_pool
    from tests.helpers import CONF

    cfg = OmegaConf.load(CONF / "eval" / "embedded.yaml")
    assert "vqa_questions" not in make_pool(cfg).settings
    cfg.suite.vqa_questions = {"digits": ["What digit is this?"]}
    assert make_pool(cfg).settings["vqa_questions"] == {"digits": ["What digit is this?"]}
