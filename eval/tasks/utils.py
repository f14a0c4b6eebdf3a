"""Scoring functions of the embedded lmms-eval tasks (copied next to the generated YAMLs of each suite).

Self-contained on purpose (numpy only): lmms-eval imports this file by path through `!function utils.x`.
Every metric of our tasks comes from `process_results` here, and every aggregation that is not a plain
mean is a function here, so lmms-eval never falls back to `evaluate.load` (network).

Conventions:
  * multiple choice / yes-no tasks use `output_type: multiple_choice`: each choice is a loglikelihood
    request whose result is a LOSS (lower is better, lmms-eval 0.7 convention), so the prediction is the
    argmin. Yes/no questions are two-way choices between the answers "yes" and "no".
  * open-answer tasks use `generate_until` and exact match after normalisation (lower case, punctuation
    and articles removed), TextVQA style; `contains` also credits an answer that holds the target word.
"""
from __future__ import annotations

import re
import string
from collections import defaultdict

import numpy as np

YES, NO = "yes", "no"


# ---- document -> model input ---------------------------------------------------------------------
def doc_to_visual(doc):
    # The decoded image as stored (no conversion): the adapter's feature cache is keyed by its pixels.
    return [doc["image"]]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return list(doc["choices"])


def doc_to_target(doc):
    return int(doc["answer"])


def doc_to_answer_text(doc):
    return doc["answer_text"]


# ---- helpers --------------------------------------------------------------------------------------
def _loss(result):
    """A loglikelihood result as delivered to process_results: (loss, is_greedy) or [(loss, is_greedy)]."""
    while isinstance(result, (list, tuple)) and len(result) and isinstance(result[0], (list, tuple)):
        result = result[0]
    if isinstance(result, (list, tuple)):
        return float(result[0])
    return float(result)


def predicted_index(results) -> int:
    return int(np.argmin([_loss(r) for r in results]))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = str(text).lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# ---- multiple choice ------------------------------------------------------------------------------
def process_mc(doc, results):
    correct = float(predicted_index(results) == int(doc["answer"]))
    return {"acc": correct}


# ---- held-out caption likelihood ----------------------------------------------------------------------
def process_nll(doc, results):
    """The caption's loss (nats, summed over its tokens) as the adapter returns it: -log p(caption | image)."""
    return {"nll": _loss(results)}


# ---- yes/no: POPE style ---------------------------------------------------------------------------
def _yes_no(doc, results) -> tuple[int, int]:
    """(predicted yes?, gold yes?) as 0/1."""
    choices = list(doc["choices"])
    pred = choices[predicted_index(results)]
    gold = choices[int(doc["answer"])]
    return int(pred == YES), int(gold == YES)


def process_pope(doc, results):
    pair = _yes_no(doc, results)
    return {"accuracy": pair, "precision": pair, "recall": pair, "f1": pair, "yes_ratio": pair}


def _counts(pairs):
    pairs = np.asarray(list(pairs), dtype=int).reshape(-1, 2)
    pred, gold = pairs[:, 0], pairs[:, 1]
    tp = int(((pred == 1) & (gold == 1)).sum())
    fp = int(((pred == 1) & (gold == 0)).sum())
    fn = int(((pred == 0) & (gold == 1)).sum())
    tn = int(((pred == 0) & (gold == 0)).sum())
    return tp, fp, fn, tn


def agg_accuracy(pairs):
    tp, fp, fn, tn = _counts(pairs)
    total = tp + fp + fn + tn
    return (tp + tn) / total if total else float("nan")


def agg_precision(pairs):
    tp, fp, _, _ = _counts(pairs)
    return tp / (tp + fp) if tp + fp else 0.0


def agg_recall(pairs):
    tp, _, fn, _ = _counts(pairs)
    return tp / (tp + fn) if tp + fn else 0.0


def agg_f1(pairs):
    precision, recall = agg_precision(pairs), agg_recall(pairs)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def agg_yes_ratio(pairs):
    tp, fp, fn, tn = _counts(pairs)
    total = tp + fp + fn + tn
    return (tp + fp) / total if total else float("nan")


# ---- yes/no by category: MME style ----------------------------------------------------------------
def process_mme(doc, results):
    """Per-category keys appear only on that category's documents; acc+ needs the image id."""
    pred_yes, gold_yes = _yes_no(doc, results)
    correct = int(pred_yes == gold_yes)
    category = doc["category"]
    payload = (category, doc["image_id"], correct)
    return {"acc": correct, "acc_plus": payload, "mme_score": payload,
            f"acc_{category}": correct, f"acc_plus_{category}": payload, f"score_{category}": payload}


def agg_acc_plus(payloads):
    """Fraction of images whose questions (one yes, one no) are all answered correctly."""
    by_image = defaultdict(list)
    for _, image_id, correct in payloads:
        by_image[image_id].append(correct)
    if not by_image:
        return float("nan")
    return sum(all(v) for v in by_image.values()) / len(by_image)


def agg_mme_score(payloads):
    """MME's score: sum over categories of 100 * (accuracy + accuracy+); a category's maximum is 200."""
    by_category = defaultdict(list)
    for payload in payloads:
        by_category[payload[0]].append(payload)
    total = 0.0
    for rows in by_category.values():
        accuracy = sum(c for _, _, c in rows) / len(rows)
        total += 100.0 * (accuracy + agg_acc_plus(rows))
    return total


# ---- open answers: TextVQA style ------------------------------------------------------------------
def process_open(doc, results):
    prediction = results[0] if isinstance(results, (list, tuple)) and results else results
    while isinstance(prediction, (list, tuple)) and prediction:
        prediction = prediction[0]
    pred = normalize_answer(prediction if isinstance(prediction, str) else "")
    gold = normalize_answer(doc["answer_text"])
    exact = float(pred == gold)
    contains = float(bool(gold) and re.search(rf"\b{re.escape(gold)}\b", pred) is not None)
    return {"exact_match": exact, "contains": contains}
