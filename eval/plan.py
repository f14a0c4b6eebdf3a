"""Planning an evaluation: which tasks (the pool of `eval.suite`), which models, under which cache keys.

An evaluation's cache key hashes the weights it reads (`weights_digest`: the projector file's SHA-256, and the
LLM adapters' where a model has them), the suite's key, the selected tasks, the eval settings that change
numbers (`settings`) and the model parts the projector feeds. Keyed by weights, not by how they were made: a
sweep re-evaluates only new projectors, and two models with identical weights (a merge that keeps its pivot,
two readings of a method that coincide) share one evaluation. Nothing is evaluated here.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from eval.suite import TaskSet, make_pool
from pivotmerge.artifacts import MANIFEST, Artifact, content_key
from pivotmerge.errors import CacheError, ConfigError
from pivotmerge.model_id import kind_of, name_of

EXPERTS_ON = ("own_source", "all")


@dataclass
class Job:
    """One model's evaluation."""

    model: str            # str(ModelId)
    tasks: list[str]      # the plan's tasks, or an expert's own-source ones (`eval.experts_on`)
    projector: Artifact
    key: str              # its `eval` cache entry
    spec: dict


@dataclass
class EvalPlan:
    tasks: TaskSet
    settings: dict        # name, tasks, limit, max_new_tokens, bootstrap_iters: part of every key
    batch_size: int
    adapter_args: dict    # PivotMergeLMM's arguments besides the MLLM
    workers: int          # processes evaluating pending jobs side by side (1: this process)
    needs_vision: bool    # the pool's tasks read raw images the feature cache does not hold
    jobs: list[Job]       # every model, in ctx.models() order


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def eval_settings(cfg) -> dict:
    ecfg = cfg.eval
    return {"name": str(ecfg.name), "tasks": _plain(ecfg.tasks), "limit": _plain(ecfg.limit),
            "max_new_tokens": int(ecfg.max_new_tokens), "bootstrap_iters": int(ecfg.bootstrap_iters)}


def worker_count(cfg) -> int:
    workers = int(cfg.eval.workers)
    if workers < 1:
        raise ConfigError(f"eval.workers must be >= 1, got {workers}")
    if workers > 1 and _cuda_available():
        print(f"[    eval] eval.workers={workers} splits CPU threads; a GPU is present, so one process evaluates",
              flush=True)
        return 1
    return workers


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def job_tasks(cfg, model: str, tasks: TaskSet) -> list[str]:
    """The tasks `model` is evaluated on: all of them, except an expert's under `eval.experts_on: own_source`,
    which are the tasks on its own source only (gain retention reads nothing else of an expert)."""
    experts_on = str(cfg.eval.experts_on)
    if experts_on not in EXPERTS_ON:
        raise ConfigError(f"eval.experts_on must be one of {list(EXPERTS_ON)}, got {experts_on!r}")
    if experts_on == "all" or kind_of(model) != "expert":
        return list(tasks.names)
    own = [t for t in tasks.names if tasks.meta.get(t, {}).get("sources") == [name_of(model)]]
    return own or list(tasks.names)   # a pool without per-source tasks (lmms-eval's own): everything


def weights_digest(artifact: Artifact) -> str:
    """SHA-256 over what an evaluation reads of a model's entry - its projector and, for a model tuned with
    `sft.llm=lora`, its LoRA adapters - taken from the entry's manifest (written when it was committed)."""
    from pivotmerge.pipeline.sft_lora import LORA_FILE
    from pivotmerge.pipeline.train import PROJECTOR_FILE

    files = json.loads((Path(artifact.path) / MANIFEST).read_text())["files"]
    if PROJECTOR_FILE not in files:
        raise CacheError(f"{artifact.stage} entry {artifact.path} has no {PROJECTOR_FILE} in its manifest: "
                         "delete the folder and run again")
    read = {name: files[name]["sha256"] for name in (PROJECTOR_FILE, LORA_FILE) if name in files}
    return hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()[:32]


def plan(ctx) -> EvalPlan:
    """Every model of `ctx.models()` on the pool's selected tasks (the embedded suite is built or reused here)."""
    cfg = ctx.cfg
    models = ctx.models()
    if not models:
        raise ConfigError("the eval stage has no models: run the pivot/experts/merge stages first")
    settings = eval_settings(cfg)
    workers = worker_count(cfg)
    started = time.perf_counter()
    pool = make_pool(cfg.eval)
    tasks = pool.prepare(ctx, settings["tasks"])
    if tasks.include_path:
        print(f"[    eval] benchmark suite (lmms-eval --include_path): {tasks.include_path}", flush=True)
    ctx.log.add("eval", f"suite ({len(tasks.names)} tasks)", None, time.perf_counter() - started,
                ", ".join(tasks.names))
    model_parts = {"llm": cfg.model.llm, "vision": cfg.model.vision, "projector": cfg.model.projector,
                   "system_prompt": cfg.model.get("system_prompt")}
    jobs = []
    for model, artifact in models.items():
        names = job_tasks(cfg, model, tasks)
        spec = {"weights": weights_digest(artifact), "suite": tasks.key, "tasks": names, "eval": settings,
                "model": model_parts}
        jobs.append(Job(model, names, artifact, content_key("eval", spec), spec))
    batch_size = int(cfg.eval.batch_size)
    adapter_args = {"batch_size": batch_size, "max_new_tokens": settings["max_new_tokens"],
                    "gen_batch_size": int(cfg.eval.gen_batch_size)}
    return EvalPlan(tasks, settings, batch_size, adapter_args, workers, pool.needs_vision, jobs)
