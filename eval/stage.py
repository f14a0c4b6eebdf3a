"""Stage 6 (eval): every model (pivot, experts, joint, merges) on every benchmark, through lmms-eval.

Three steps: `plan` (eval/plan.py: the task pool of `eval.suite`, the models and each evaluation's cache key),
`evaluate` (eval/evaluate.py, eval/workers.py: what the cache lacks, committed as `eval/<key>` one by one) and
`record` (below: every evaluation, made or reused, into this run's results store). Under
`<output_dir>/results/`:
  results.jsonl   one row per (run, model, benchmark, metric, seed) (eval/store.py)
  lmms/<model>.json   lmms-eval's own results JSON
  suite.json      the suite's key and its tasks' metadata
The report stage (eval/report.py) reads only this store.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from eval.evaluate import ITEMS_FILE, RESULTS_FILE, Outcome, evaluate
from eval.plan import EvalPlan, plan
from eval.store import RESULTS_DIR, append_rows, results_rows
from pivotmerge.artifacts import Artifact
from pivotmerge.model_id import file_stem


def run(ctx) -> None:
    planned = plan(ctx)
    record(ctx, planned, evaluate(ctx, planned))


def record(ctx, planned: EvalPlan, outcomes: dict[str, Outcome]) -> None:
    """Rows, lmms-eval JSON and a log line per model, in plan order; a projector that does not fit the model
    is a logged gap (its cells stay empty in the report), never a stop. Then the eval stage's W&B run."""
    from pivotmerge.wandb_logging import log_eval_run

    cfg, store = ctx.cfg, ctx.store
    results_dir = Path(ctx.output_dir) / RESULTS_DIR
    (results_dir / "lmms").mkdir(parents=True, exist_ok=True)
    evaluated, scores = {}, {}    # model -> its evaluation's cache entry, its primary values (for W&B)
    for job in planned.jobs:
        started = time.perf_counter()
        outcome = outcomes.get(job.key)
        if outcome is not None and outcome.skipped:
            print(f"[    eval] {job.model}: SKIPPED, projector does not fit the model ({outcome.skipped}); "
                  "its cells stay empty in the report", flush=True)
            ctx.log.add("eval", job.model, None, outcome.seconds, f"skipped: {outcome.skipped}")
            continue
        folder = store.verify("eval", job.key)
        results = json.loads((folder / RESULTS_FILE).read_text())
        items = json.loads((folder / ITEMS_FILE).read_text())
        shutil.copy2(folder / RESULTS_FILE, results_dir / "lmms" / f"{file_stem(job.model)}.json")
        rows = results_rows(results, model=job.model, run=Path(ctx.output_dir).name, seed=int(cfg.seed),
                            experiment=str(cfg.experiment_name), task_meta=planned.tasks.meta, items=items)
        append_rows(results_dir, rows)
        scores[job.model] = {r["benchmark"]: r["value"] for r in rows if r["primary"]}
        evaluated[job.model] = Artifact("eval", job.key, folder, reused=outcome is None)
        seconds = outcome.seconds if outcome is not None else time.perf_counter() - started
        ctx.log.add("eval", job.model, evaluated[job.model], seconds,
                    json.dumps({bench: round(value, 3) for bench, value in scores[job.model].items()}))
    (results_dir / "suite.json").write_text(json.dumps({"suite": planned.tasks.key, "tasks": planned.tasks.meta},
                                                       indent=2))
    log_eval_run(cfg, store, {job.model: job.projector for job in planned.jobs}, evaluated, scores, results_dir)
