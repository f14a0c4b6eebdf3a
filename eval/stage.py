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

import functools
import json
import shutil
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from eval.evaluate import ITEMS_FILE, RESULTS_FILE, Outcome, evaluate_here
from eval.plan import EvalPlan, Job, plan
from eval.store import RESULTS_DIR, append_rows, json_default, results_rows
from eval.suite import make_pool
from eval.workers import evaluate_in_workers
from pivotmerge.artifacts import Artifact
from pivotmerge.errors import ConfigError
from pivotmerge.model_id import file_stem
from pivotmerge.pipeline.stage import Stage
from pivotmerge.preflight.schema import PreflightError, fail, rule
from pivotmerge.wandb_logging import log_eval_run


def run(ctx) -> None:
    planned = plan(ctx)
    record(ctx, planned, evaluate(ctx, planned))


def evaluate(ctx, planned: EvalPlan) -> dict[str, Outcome]:
    """Evaluate and cache every job without a cache entry; its outcome by job key (reused jobs have none)."""
    pending = [job for job in unique_keys(planned.jobs) if not ctx.store.exists("eval", job.key)]
    if planned.workers > 1 and len(pending) > 1:
        finished = evaluate_in_workers(ctx, planned, longest_first(pending), min(planned.workers, len(pending)))
    else:
        finished = evaluate_here(ctx, planned, pending)
    outcomes = {}
    for job, results, outcome in finished:
        if results is not None:
            ctx.store.entry("eval", job.spec, functools.partial(write_results, results))
        outcomes[job.key] = outcome
    return outcomes


def unique_keys(jobs: list[Job]) -> list[Job]:
    """The first job of each evaluation key: models with identical weights are evaluated once."""
    seen = set()
    return [job for job in jobs if not (job.key in seen or seen.add(job.key))]


def longest_first(jobs: list[Job]) -> list[Job]:
    """The jobs by their number of tasks, most first (stable): workers take jobs in this order, and a long job
    dealt last would run alone while the other workers idle (an expert evaluated on its own source only is a
    fraction of a merge's evaluation)."""
    return sorted(jobs, key=lambda job: -len(job.tasks))


def write_results(results: tuple[dict, dict], staging: Path) -> None:
    aggregated, items = results
    (staging / RESULTS_FILE).write_text(json.dumps(aggregated, indent=2, default=json_default))
    (staging / ITEMS_FILE).write_text(json.dumps(items))


def record(ctx, planned: EvalPlan, outcomes: dict[str, Outcome]) -> None:
    """Rows, lmms-eval JSON and a log line per model, in plan order; a projector that does not fit the model
    is a logged gap (its cells stay empty in the report), never a stop. What the W&B run needs becomes the
    stage's output `evaluations`."""
    cfg, store = ctx.cfg, ctx.store
    results_dir = Path(ctx.output_dir) / RESULTS_DIR
    (results_dir / "lmms").mkdir(parents=True, exist_ok=True)
    evaluated, scores = {}, {}    # model -> its evaluation's cache entry, its primary values (for W&B)
    first = {}                    # evaluation key -> the first model recorded with it
    for job in planned.jobs:
        started = time.perf_counter()
        outcome = outcomes.get(job.key)
        if outcome is not None and outcome.skipped:
            print(f"[    eval] {job.model}: SKIPPED, projector does not fit the model ({outcome.skipped}); "
                  "its cells stay empty in the report", flush=True)
            ctx.log.add("eval", job.model, None, outcome.seconds, f"skipped: {outcome.skipped}")
            continue
        twin = first.setdefault(job.key, job.model)
        if twin != job.model:
            outcome = None        # the same evaluation as `twin`'s: made (and timed) once
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
        note = json.dumps({bench: round(value, 3) for bench, value in scores[job.model].items()})
        ctx.log.add("eval", job.model, evaluated[job.model], seconds,
                    note if twin == job.model else f"same weights as {twin}: {note}")
    (results_dir / "suite.json").write_text(json.dumps({"suite": planned.tasks.key, "tasks": planned.tasks.meta},
                                                       indent=2))
    ctx.evaluations = {"models": {job.model: job.projector for job in planned.jobs}, "evaluated": evaluated,
                       "scores": scores, "results_dir": results_dir}


def log_lineage(ctx, entries) -> None:
    """The eval stage's W&B run: its evaluations (made or reused) with the projectors and suite they read."""
    log_eval_run(ctx.cfg, ctx.store, **ctx.evaluations)


@dataclass
class EvalSchema:
    name: str = rule()
    limit: int | None = rule(ge=1, fix="null (all items) or a positive count")
    batch_size: int = rule(ge=1)
    workers: int = rule(ge=1)
    gen_batch_size: int = rule(ge=1)
    max_new_tokens: int = rule(ge=1)
    bootstrap_iters: int = rule(ge=0)
    experts_on: str = rule(choices=("own_source", "all"))


def check_eval_tasks(cfg, sources: list[str]) -> None:
    """eval.suite builds its pool (the pool's constructor checks its options); eval.tasks names its tasks."""
    try:
        pool = make_pool(cfg.eval)
    except ConfigError as exc:
        raise PreflightError(f"config eval.suite: {exc}") from exc
    available = pool.task_names(sources)
    tasks = cfg.eval.tasks
    if available is None:   # known only to lmms-eval's registry, which the eval stage consults (indexing is slow)
        if not tasks:
            raise fail("eval.tasks", tasks, "is empty", f"{type(pool).__name__} runs the lmms-eval tasks named here")
        return
    if tasks is None:
        return
    for pattern in [tasks] if isinstance(tasks, str) else list(tasks):
        if not any(fnmatch(t, str(pattern)) for t in available):
            raise fail("eval.tasks", tasks, f"names {pattern!r}, which the embedded suite does not have",
                       f"available: {', '.join(available)}")


STAGE = Stage("eval", run, needs=("experts",), produces={"evaluations": None}, config={"eval": EvalSchema},
              preflight=check_eval_tasks, lineage=log_lineage)
