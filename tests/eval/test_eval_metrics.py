"""Yes/no, MME and open-answer metrics on hand-made predictions (eval/tasks/utils.py)."""
import importlib.util

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("pm_task_utils", REPO / "eval" / "tasks" / "utils.py")
U = importlib.util.module_from_spec(spec)
spec.loader.exec_module(U)


def loss_results(pred_index, n=2):
    """lmms-eval delivers (loss, is_greedy) per choice; the predicted choice has the lowest loss."""
    return [(0.5 if i == pred_index else 3.0, False) for i in range(n)]


def yn_doc(gold_yes, category="digits", image_id="digits:0"):
    return {"choices": ["yes", "no"], "answer": 0 if gold_yes else 1, "category": category, "image_id": image_id}


def test_mc_takes_argmin_of_losses():
    doc = {"choices": ["a", "b", "c", "d"], "answer": 2}
    assert U.process_mc(doc, loss_results(2, 4)) == {"acc": 1.0}
    assert U.process_mc(doc, loss_results(0, 4)) == {"acc": 0.0}
    assert U.process_mc(doc, [[(1.0, False)], [(0.2, True)], [(3.0, False)], [(2.0, False)]]) == {"acc": 0.0}


def test_pope_metrics_by_hand():
    # gold:  Y Y Y Y N N N N ; pred: Y Y Y N Y N N N  -> tp 3, fn 1, fp 1, tn 3
    golds = [1, 1, 1, 1, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0, 0]
    pairs = [U.process_pope(yn_doc(g), loss_results(0 if p else 1))["f1"] for g, p in zip(golds, preds)]
    assert U.agg_accuracy(pairs) == pytest.approx(6 / 8)
    assert U.agg_precision(pairs) == pytest.approx(3 / 4)
    assert U.agg_recall(pairs) == pytest.approx(3 / 4)
    assert U.agg_f1(pairs) == pytest.approx(0.75)
    assert U.agg_yes_ratio(pairs) == pytest.approx(4 / 8)
    always_yes = [(1, g) for g in golds]
    assert U.agg_yes_ratio(always_yes) == 1.0 and U.agg_f1(always_yes) == pytest.approx(2 / 3)
    always_no = [(0, g) for g in golds]
    assert U.agg_f1(always_no) == 0.0 and U.agg_accuracy(always_no) == 0.5


def test_mme_accuracy_plus_and_score():
    # two categories, two images each, two questions (yes, no) per image
    cases = [("digits", "d0", True, True), ("digits", "d0", False, False),   # both right
             ("digits", "d1", True, True), ("digits", "d1", False, True),    # one wrong
             ("words", "w0", True, False), ("words", "w0", False, True),     # both wrong
             ("words", "w1", True, True), ("words", "w1", False, False)]     # both right
    results = [U.process_mme(yn_doc(gold, cat, img), loss_results(0 if pred else 1))
               for cat, img, gold, pred in cases]
    digits = [r["acc_plus_digits"] for r in results if "acc_plus_digits" in r]
    assert sum(r["acc_digits"] for r in results if "acc_digits" in r) / 4 == pytest.approx(0.75)
    assert U.agg_acc_plus(digits) == pytest.approx(0.5)
    words = [r["acc_plus_words"] for r in results if "acc_plus_words" in r]
    assert U.agg_acc_plus(words) == pytest.approx(0.5)
    assert U.agg_mme_score(digits) == pytest.approx(100 * (0.75 + 0.5))
    total = U.agg_mme_score([r["mme_score"] for r in results])
    assert total == pytest.approx(100 * (0.75 + 0.5) + 100 * (0.5 + 0.5))
    assert U.agg_acc_plus([r["acc_plus"] for r in results]) == pytest.approx(2 / 4)


def test_open_answer_exact_match():
    doc = {"answer_text": "seven"}
    assert U.process_open(doc, ["Seven."]) == {"exact_match": 1.0, "contains": 1.0}
    assert U.process_open(doc, ["a handwritten digit seven"]) == {"exact_match": 0.0, "contains": 1.0}
    assert U.process_open(doc, ["seventeen"]) == {"exact_match": 0.0, "contains": 0.0}
    assert U.process_open(doc, [""]) == {"exact_match": 0.0, "contains": 0.0}
