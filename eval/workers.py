"""The worker fan-out: pending projectors evaluated in `eval.workers` spawned processes.

On a CPU the frozen LLM's matmuls scale poorly across threads at these sizes: two processes with one thread
each score ~1.25x the items/s of one process with two threads (bench/bench_cpu_paths.py). Each worker builds
its own MLLM and adapter once (pre-filled feature cache, one TaskManager) and then evaluates one projector per
job; the main process commits the results as they arrive.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import OmegaConf

from eval.evaluate import Outcome, evaluate_model, llm_adapter, prefill_features, prefill_sources, task_manager
from eval.plan import EvalPlan, Job

_WORKER: dict = {}   # this worker process's adapter, TaskManager and what every job shares


def _start(model_cfg, models_dir, seed, threads, adapter_args, sources, manager_args, with_vision, shared) -> None:
    import torch

    from eval.lmms_model import PivotMergeLMM
    from pivotmerge.logs import quiet_libraries
    from pivotmerge.models.mllm import build_mllm

    torch.set_num_threads(threads)
    quiet_libraries()
    mllm = build_mllm(OmegaConf.create(model_cfg), models_dir, seed=seed, with_vision=with_vision)
    adapter = PivotMergeLMM(mllm=mllm, progress=False, **adapter_args)
    prefill_features(adapter, sources)
    _WORKER.update(adapter=adapter, manager=task_manager(manager_args), **shared)


def _evaluate(job: tuple) -> tuple:
    """(model, key, results or None, seconds, skip reason or None) for one (model, key, tasks, projector state,
    LLM adapter or None)."""
    from pivotmerge.models.mllm import projector_mismatch

    model, key, tasks, state, adapter_weights = job
    started = time.perf_counter()
    adapter = _WORKER["adapter"]
    problem = projector_mismatch(adapter.mllm.projector, state)
    if problem:
        return model, key, None, time.perf_counter() - started, problem
    with adapter.using_projector(state, model, adapter_weights):
        results = evaluate_model(adapter, tasks, _WORKER["manager"], _WORKER["settings"],
                                 _WORKER["batch_size"], _WORKER["task_meta"])
    return model, key, results, time.perf_counter() - started, None


@contextmanager
def _no_progress_bars():
    """Worker progress bars would interleave on one terminal: the main process reports each finished model."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous


def evaluate_in_workers(ctx, plan: EvalPlan, jobs: list[Job],
                        workers: int) -> Iterator[tuple[Job, tuple | None, Outcome]]:
    """(job, results or None, outcome) for each of `jobs`, in the order they finish, from `workers` spawned
    processes sharing the CPU threads."""
    import multiprocessing

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    shared = {"settings": plan.settings, "batch_size": plan.batch_size,
              "task_meta": plan.tasks.meta}
    args = (OmegaConf.to_container(ctx.cfg.model, resolve=True), str(ctx.cfg.paths.models_dir), int(ctx.cfg.seed),
            threads, plan.adapter_args, prefill_sources(ctx), plan.tasks.manager_args, plan.needs_vision, shared)
    print(f"[    eval] {len(jobs)} projectors in {workers} worker processes x {threads} thread(s)", flush=True)
    by_key = {job.key: job for job in jobs}
    payloads = [(job.model, job.key, job.tasks, ctx.projector(job.projector), llm_adapter(job)) for job in jobs]
    with _no_progress_bars(), multiprocessing.get_context("spawn").Pool(workers, initializer=_start,
                                                                        initargs=args) as pool:
        for position, (model, key, results, seconds, skipped) in enumerate(
                pool.imap_unordered(_evaluate, payloads), start=1):
            print(f"[    eval] ({position}/{len(jobs)}) {model}: {'skipped' if skipped else 'done'} in "
                  f"{seconds:.0f}s", flush=True)
            yield by_key[key], results, Outcome(seconds, skipped)
