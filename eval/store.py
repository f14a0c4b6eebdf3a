"""The results store: `<run folder>/results/results.jsonl`, one JSON row per (run, model, benchmark, metric, seed).

The eval stage appends rows (`results_rows` from lmms-eval's results, `append_rows`); the report, the sweep
table and experiments/results_doc.py read them back (`read_rows`, `find_stores`) and never anything else.
A row: run, experiment, seed, model (`str(ModelId)`), benchmark, metric, value, unit ('fraction' for
accuracy-type metrics, 0-1; 'nats' for caption NLL; 'score' for MME-style sums), stderr, primary (the
benchmark's table metric), kind, sources, n, and on the primary row `items` (per-item values, for intervals
and paired tests).
"""
from __future__ import annotations

import json
from pathlib import Path

from eval.table import LOWER_IS_BETTER, is_percent
from pivotmerge.errors import ConfigError, DataError

RESULTS_DIR = "results"
ROWS_FILE = "results.jsonl"


def metric_unit(metric: str) -> str:
    """Unit of a metric's value in the results store: 'fraction' (accuracy-type, 0-1), 'nats' (caption NLL)
    or 'score' (MME-style sums)."""
    if metric in LOWER_IS_BETTER:
        return "nats"
    return "fraction" if is_percent(metric) else "score"


def json_default(obj):
    """JSON for what lmms-eval's results hold besides plain values (numpy scalars, sets, tuples)."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def item_values(samples: dict, task_meta: dict) -> dict[str, list[float]]:
    """task -> the primary metric's value of every item, in doc order, from lmms-eval's logged samples.

    Only metrics that are a per-item mean have item values: a scalar per item (acc, nll, exact_match), or a
    (predicted yes, gold yes) pair (POPE accuracy -> 1 if they agree). Aggregates over items (MME score,
    F1) have none: their columns get no item-level interval."""
    out = {}
    for task, rows in (samples or {}).items():
        metric = task_meta.get(task, {}).get("primary")
        values = []
        for sample in sorted(rows, key=lambda r: r["doc_id"]):
            value = sample.get(metric)
            if isinstance(value, (list, tuple)) and len(value) == 2 and metric == "accuracy":
                value = float(value[0] == value[1])
            if not _number(value):
                values = None
                break
            values.append(round(float(value), 6))
        if values:
            out[task] = values
    return out


def results_rows(results: dict, *, model: str, run: str, seed: int, experiment: str, task_meta: dict,
                 items: dict | None = None) -> list[dict]:
    """One row per (benchmark, metric) of an lmms-eval results dict; the primary metric's row carries the
    per-item values (`items`) when there are any."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        meta = task_meta.get(task, {})
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or key.startswith("alias") or not _number(value):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) else None
            row = {"run": run, "experiment": experiment, "seed": seed, "model": model, "benchmark": task,
                   "metric": metric, "value": float(value), "unit": metric_unit(metric), "stderr": stderr,
                   "primary": metric == meta.get("primary"), "kind": meta.get("kind"),
                   "sources": meta.get("sources", []), "n": n}
            if row["primary"] and items and task in items:
                row["items"] = items[task]
            rows.append(row)
    return rows


def append_rows(results_dir: Path, rows: list[dict]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / ROWS_FILE
    with open(path, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=json_default) + "\n")
    return path


def read_rows(stores: list[Path]) -> list[dict]:
    """Every row of these stores, oldest store first (later rows win in the table)."""
    rows = []
    for store in stores:
        path = Path(store) / ROWS_FILE
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not a JSON row ({exc})") from exc
    return rows


def find_stores(source: str, output_dir: Path) -> list[Path]:
    """The results stores a report.only run reads: `eval.report.from` = latest | all (the experiment's earlier
    run folders, oldest first) | the path of a results folder or of its run folder."""
    source = str(source)
    experiment_dir = Path(output_dir).parent
    if source in ("latest", "all"):
        stores = sorted((p.parent for p in experiment_dir.glob(f"*/{RESULTS_DIR}/{ROWS_FILE}")
                         if p.parent.parent != Path(output_dir)), key=lambda p: p.parent.name)
        if not stores:
            raise ConfigError(f"report.only=true found no results store under {experiment_dir}/*/{RESULTS_DIR}: run "
                              "the eval stage first, or set eval.report.from=<path of a results folder>")
        return stores[-1:] if source == "latest" else stores
    path = Path(source)
    if path.is_dir() and not (path / ROWS_FILE).is_file() and (path / RESULTS_DIR / ROWS_FILE).is_file():
        path = path / RESULTS_DIR
    if not (path / ROWS_FILE).is_file():
        raise ConfigError(f"eval.report.from={source!r}: no {ROWS_FILE} in {path}")
    return [path]
