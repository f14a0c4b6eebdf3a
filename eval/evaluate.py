"""Evaluating the planned jobs that have no cache entry yet, each through `lmms_eval.evaluator.simple_evaluate`.

In this process the jobs share the pipeline's MLLM: one adapter (`PivotMergeLMM`) with one feature cache,
pre-filled from the cached test features, and each projector swapped in for its evaluation only. With
`eval.workers > 1` they go to worker processes instead (eval/workers.py). The eval stage (eval/stage.py)
commits every finished evaluation to the cache at once (`eval/<key>`: lmms-eval's results JSON and the per-item
values), so an interrupted run keeps what it evaluated.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from eval.plan import EvalPlan, Job
from eval.store import item_values, json_default

RESULTS_FILE = "results.json"
ITEMS_FILE = "items.json"     # per-item values of each task's primary metric (confidence intervals, paired tests)


@dataclass
class Outcome:
    seconds: float
    skipped: str | None = None    # why the projector could not be evaluated (it does not fit the model)


def task_manager(manager_args: dict):
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="WARNING", **manager_args)


def prefill_sources(ctx) -> list[tuple[str, object]]:
    """(dataset folder, cached test features) per source: row i of one is image i of the other."""
    return [(str(artifact.path), ctx.features[name].features["test"])
            for name, artifact in ctx.data.items() if name in ctx.features]


def prefill_features(adapter, sources) -> int:
    """Pre-fill the adapter's feature cache from the cached test features."""
    from pivotmerge.pipeline.data import load_dataset_dict

    total = 0
    for path, features in sources:
        total += adapter.features.prefill(list(load_dataset_dict(path)["test"]["image"]), features)
    return total


def evaluate_model(adapter, tasks: list[str], manager, settings: dict, batch_size: int,
                   task_meta: dict) -> tuple[dict, dict]:
    """(lmms-eval's aggregated results, per-item values of each task's primary metric) of the adapter's
    current projector."""
    from lmms_eval.evaluator import simple_evaluate

    results = simple_evaluate(model=adapter, tasks=list(tasks), task_manager=manager, batch_size=batch_size,
                              limit=settings["limit"], bootstrap_iters=settings["bootstrap_iters"],
                              log_samples=True, verbosity="WARNING")
    if results is None:
        raise RuntimeError("lmms-eval returned no results (non-zero rank?)")
    items = item_values(results.get("samples"), task_meta)
    aggregated = json.loads(json.dumps({k: v for k, v in results.items() if k != "samples"}, default=json_default))
    return aggregated, items


def llm_adapter(job: Job):
    """The LoRA adapters (recipe, weights) a job's model carries on its LLM (`sft.llm=lora`), else None."""
    from pivotmerge.pipeline.sft_lora import saved_adapter

    return saved_adapter(job.projector.path)


def _adapter(ctx, plan: EvalPlan):
    """The adapter around the pipeline's MLLM (vision tower attached when the tasks need it), pre-filled."""
    from eval.lmms_model import PivotMergeLMM

    mllm = ctx.mllm
    if plan.needs_vision and mllm.vision is None:
        from pivotmerge.models.vision import build_vision_tower

        mllm.vision = build_vision_tower(ctx.cfg.model.vision)
    adapter = PivotMergeLMM(mllm=mllm, **plan.adapter_args)
    prefilled = prefill_features(adapter, prefill_sources(ctx))
    print(f"[    eval] feature cache pre-filled with {prefilled} test images", flush=True)
    return adapter


def evaluate_here(ctx, plan: EvalPlan, pending: list[Job]) -> Iterator[tuple[Job, tuple | None, Outcome]]:
    """(job, results or None, outcome) for each pending job, evaluated in this process."""
    from pivotmerge.models.mllm import projector_mismatch

    if not pending:
        return
    adapter = _adapter(ctx, plan)
    manager = task_manager(plan.tasks.manager_args)
    for job in pending:
        started = time.perf_counter()
        state = ctx.projector(job.projector)
        problem = projector_mismatch(adapter.mllm.projector, state)
        if problem:
            yield job, None, Outcome(time.perf_counter() - started, problem)
            continue
        position = plan.jobs.index(job) + 1
        print(f"[    eval] ({position}/{len(plan.jobs)}) {job.model}: {len(job.tasks)} tasks", flush=True)
        with adapter.using_projector(state, job.model, llm_adapter(job)):
            results = evaluate_model(adapter, job.tasks, manager, plan.settings, plan.batch_size,
                                     plan.tasks.meta)
        yield job, results, Outcome(time.perf_counter() - started)
