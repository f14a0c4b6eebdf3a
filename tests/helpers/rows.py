"""Rows of a results store (known answers for the report tests) and sweep job folders written by hand."""
import json

import yaml


def result_row(model, bench, value, seed=0, metric=None, primary=True, run="r1"):
    """One row of a results store (results.jsonl)."""
    metric = metric or {"pm_mme": "mme_score", "pm_pope": "accuracy"}.get(bench, "acc")
    return {"run": run, "experiment": "t", "seed": seed, "model": model, "benchmark": bench, "metric": metric,
            "value": value, "stderr": None, "primary": primary}


def known_rows():
    """Two seeds of five models on four benchmarks, with a missing cell and a re-evaluated row."""
    rows = []
    scores = {  # model -> (mc_digits, mc_words, pope, mme)
        "pivot": (0.25, 0.30, 0.50, 100.0),
        "expert:digits": (0.90, 0.30, 0.60, 150.0),
        "expert:words": (0.20, 0.80, 0.55, 140.0),
        "merge:average": (0.45, 0.40, 0.52, 120.0),
        "merge:pivotmerge": (0.70, 0.60, 0.58, 130.0),
    }
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for model, (d, w, p, m) in scores.items():
            rows += [result_row(model, "pm_mc_digits", d + shift, seed),
                     result_row(model, "pm_mc_words", w + shift, seed),
                     result_row(model, "pm_pope", p, seed), result_row(model, "pm_mme", m + 10 * seed, seed),
                     result_row(model, "pm_pope", 0.9, seed, metric="f1", primary=False)]
    # a missing cell: merge:average never got pm_pope for seed 0 or 1 -> drop them
    rows = [r for r in rows if not (r["model"] == "merge:average" and r["benchmark"] == "pm_pope")]
    # a second run re-evaluated pivot seed 0 on digits: the later row wins
    rows.append(result_row("pivot", "pm_mc_digits", 0.27, 0, run="r2"))
    return rows


def sweep_job(folder, overrides, rows):
    """One job folder of a Hydra multirun: its overrides and its results store."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "results").mkdir()
    (folder / "results" / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def sweep_row(model, value, benchmark="pm_mc_digits"):
    """A primary accuracy row of a sweep job."""
    return {"run": "r", "experiment": "ablation", "seed": 0, "model": model, "benchmark": benchmark,
            "metric": "accuracy", "value": value, "stderr": None, "primary": True, "kind": "mc", "sources": []}
