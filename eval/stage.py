"""Stage 6 (eval): every model (pivot, experts, joint, merges) on every benchmark, through lmms-eval.

For each model the projector is loaded into the one shared MLLM and `lmms_eval.evaluator.simple_evaluate`
runs with our adapter instance and a TaskManager on the suite folder. Each model's lmms-eval results JSON
is cached as the artifact `eval/<key>` (key = projector artifact key + suite key + eval settings), so a
sweep re-evaluates only new merges. Every evaluation writes, under `<output_dir>/results/`:
  results.jsonl   one row per (run, model, benchmark, metric, seed): value, unit ('fraction' for accuracy-type
                  metrics, 0-1; 'score' for MME-style sums), stderr, primary flag, ...
  lmms/<model>.json   lmms-eval's own results JSON
The report stage (eval/report.py) reads only this store.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from eval.report import metric_unit
from pivotmerge.errors import ConfigError
from pivotmerge.pipeline.artifacts import content_key

RESULTS_DIR = "results"
ROWS_FILE = "results.jsonl"
RESULTS_FILE = "results.json"
ITEMS_FILE = "items.json"     # per-item values of each task's primary metric (confidence intervals, paired tests)


def eval_settings(cfg) -> dict:
    ecfg = cfg.eval
    return {"name": str(ecfg.get("name", "embedded")), "tasks": _plain(ecfg.get("tasks")),
            "limit": _plain(ecfg.get("limit")), "max_new_tokens": int(ecfg.get("max_new_tokens", 16)),
            "bootstrap_iters": int(ecfg.get("bootstrap_iters", 100))}


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


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
            if not isinstance(value, (int, float)) or isinstance(value, bool):
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
            if "," not in key or "_stderr" in key or key.startswith("alias"):
                continue
            metric, filter_name = key.split(",", 1)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
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
            handle.write(json.dumps(row, default=_json_default) + "\n")
    return path


def _suite_and_tasks(ctx):
    """(task names, TaskManager arguments, task metadata, suite key)."""
    from lmms_eval.tasks import TaskManager

    ecfg = ctx.cfg.eval
    if str(ecfg.get("name", "embedded")) == "lmms_standard":
        tasks = list(_plain(ecfg.tasks) or [])
        if not tasks:
            raise ConfigError("eval=lmms_standard needs eval.tasks (lmms-eval built-in task names)")
        manager = TaskManager(verbosity="WARNING")
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"eval.tasks names {unknown}, which lmms-eval does not know")
        primary = dict(_plain(ecfg.get("primary_metrics")) or {})
        meta = {t: {"kind": "standard", "primary": primary.get(t), "sources": []} for t in tasks}
        return tasks, {}, meta, "lmms_standard"
    from eval.suite import build_or_reuse_suite

    suite = build_or_reuse_suite(ctx)
    tasks = suite.select(_plain(ecfg.get("tasks")))
    return tasks, {"include_path": str(suite.folder), "include_defaults": False}, suite.tasks, suite.key


def task_manager(manager_args: dict):
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="WARNING", **manager_args)


def prefill_sources(ctx) -> list[tuple[str, "torch.Tensor"]]:
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


# ---- evaluation in worker processes --------------------------------------------------------------------
# On a CPU the frozen LLM's matmuls scale poorly across threads at these sizes: two processes with one
# thread each score ~1.25x the items/s of one process with two threads (bench/bench_cpu_paths.py).
_WORKER: dict = {}


def _worker_start(model_cfg, models_dir, seed, threads, adapter_args, sources, manager_args, with_vision, task_meta):
    import torch

    from eval.lmms_model import PivotMergeLMM
    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.logs import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    mllm = build_mllm(OmegaConf.create(model_cfg), models_dir, seed=seed, with_vision=with_vision)
    adapter = PivotMergeLMM(mllm=mllm, progress=False, **adapter_args)
    prefill_features(adapter, sources)
    _WORKER.update(adapter=adapter, manager=task_manager(manager_args), task_meta=task_meta)


def _worker_evaluate(job):
    """(model name, key, results or None, seconds, skip reason or None) for one projector."""
    name, key, state, tasks, settings, batch_size = job
    started = time.perf_counter()
    adapter = _WORKER["adapter"]
    try:
        adapter.load_projector(state, name=name)
    except ConfigError as exc:
        return name, key, None, time.perf_counter() - started, str(exc)
    results = evaluate_model(adapter, tasks, _WORKER["manager"], settings, batch_size, _WORKER["task_meta"])
    return name, key, results, time.perf_counter() - started, None


def evaluate_in_workers(ctx, jobs: list, workers: int, adapter_args: dict, manager_args: dict,
                        with_vision: bool, task_meta: dict) -> dict:
    """Evaluate `jobs` ((name, key, projector state, tasks, settings, batch size)) in `workers` spawned
    processes sharing the CPU threads; returns {key: (results or None, seconds, skip reason)}."""
    import multiprocessing
    import os

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    models_dir = OmegaConf.select(ctx.cfg, "paths.models_dir") or os.environ.get("PIVOTMERGE_MODELS", ".cache/models")
    model_cfg = OmegaConf.to_container(ctx.cfg.model, resolve=True)
    args = (model_cfg, models_dir, int(ctx.cfg.seed), threads, adapter_args, prefill_sources(ctx), manager_args,
            with_vision, task_meta)
    print(f"[    eval] {len(jobs)} projectors in {workers} worker processes x {threads} thread(s)", flush=True)
    done: dict = {}
    # Worker progress bars would interleave on one terminal: the main process reports each finished model.
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_start, initargs=args) as pool:
            for position, (name, key, results, seconds, skipped) in enumerate(
                    pool.imap_unordered(_worker_evaluate, jobs), start=1):
                done[key] = (results, seconds, skipped)
                print(f"[    eval] ({position}/{len(jobs)}) {name}: {'skipped' if skipped else 'done'} in "
                      f"{seconds:.0f}s", flush=True)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    return done


def evaluate_model(adapter, tasks, manager, settings: dict, batch_size: int, task_meta: dict) -> tuple[dict, dict]:
    """(lmms-eval's aggregated results, per-item values of each task's primary metric)."""
    from lmms_eval.evaluator import simple_evaluate

    results = simple_evaluate(model=adapter, tasks=list(tasks), task_manager=manager, batch_size=batch_size,
                              limit=settings["limit"], bootstrap_iters=settings["bootstrap_iters"],
                              log_samples=True, verbosity="WARNING")
    if results is None:
        raise RuntimeError("lmms-eval returned no results (non-zero rank?)")
    items = item_values(results.get("samples"), task_meta)
    aggregated = json.loads(json.dumps({k: v for k, v in results.items() if k != "samples"}, default=_json_default))
    return aggregated, items


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run(ctx) -> None:
    from eval.lmms_model import PivotMergeLMM
    from pivotmerge.pipeline.artifacts import Artifact
    from pivotmerge.wandb_logging import log_eval_run

    cfg = ctx.cfg
    models = ctx.models()
    if not models:
        raise ConfigError("the eval stage has no models: run the pivot/experts/merge stages first")
    settings = eval_settings(cfg)
    workers = cfg.eval.get("workers")
    workers = 1 if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"eval.workers must be >= 1, got {workers}")
    if workers > 1 and _cuda_available():
        print(f"[    eval] eval.workers={workers} splits CPU threads; a GPU is present, so one process evaluates",
              flush=True)
        workers = 1
    started = time.perf_counter()
    tasks, manager_args, task_meta, suite_key = _suite_and_tasks(ctx)
    if "include_path" in manager_args:
        print(f"[    eval] benchmark suite (lmms-eval --include_path): {manager_args['include_path']}", flush=True)
    ctx.log.add("eval", f"suite ({len(tasks)} tasks)", None, time.perf_counter() - started, ", ".join(tasks))
    with_vision = settings["name"] == "lmms_standard"
    batch_size = int(cfg.eval.get("batch_size", 16))
    adapter_args = {"batch_size": batch_size, "max_new_tokens": settings["max_new_tokens"],
                    "gen_batch_size": int(cfg.eval.get("gen_batch_size", 64))}
    store = ctx.store
    keys, specs = {}, {}
    for model_name, artifact in models.items():
        specs[model_name] = {"projector": artifact.key, "suite": suite_key, "tasks": tasks, "eval": settings,
                             "model": {"llm": cfg.model.llm, "vision": cfg.model.vision,
                                       "projector": cfg.model.projector,
                                       "system_prompt": cfg.model.get("system_prompt")}}
        keys[model_name] = content_key("eval", specs[model_name])
    pending = [name for name in models if not store.exists("eval", keys[name])]
    in_workers: dict = {}
    if workers > 1 and len(pending) > 1:
        jobs = [(name, keys[name], ctx.projector(models[name]), tasks, settings, batch_size) for name in pending]
        in_workers = evaluate_in_workers(ctx, jobs, min(workers, len(pending)), adapter_args, manager_args,
                                         with_vision, task_meta)
    adapter = manager = None
    results_dir = Path(ctx.output_dir) / RESULTS_DIR
    (results_dir / "lmms").mkdir(parents=True, exist_ok=True)
    run_id = Path(ctx.output_dir).name
    evaluated, scores = {}, {}    # model -> its evaluation's cache entry, its primary values (for W&B)
    mllm = None
    original = None
    try:
        for position, (model_name, artifact) in enumerate(models.items(), start=1):
            model_started = time.perf_counter()
            key, spec = keys[model_name], specs[model_name]
            reused = store.exists("eval", key)
            skipped = None
            if key in in_workers:
                results, seconds, skipped = in_workers[key]
            elif not reused:
                if adapter is None:
                    mllm = ctx.mllm
                    if with_vision and mllm.vision is None:
                        from pivotmerge.models.vision import build_vision_tower

                        mllm.vision = build_vision_tower(cfg.model.vision)
                    original = {k: v.clone() for k, v in mllm.projector.state_dict().items()}
                    adapter = PivotMergeLMM(mllm=mllm, **adapter_args)
                    manager = task_manager(manager_args)
                    prefilled = prefill_features(adapter, prefill_sources(ctx))
                    print(f"[    eval] feature cache pre-filled with {prefilled} test images", flush=True)
                try:
                    adapter.load_projector(ctx.projector(artifact), name=model_name)
                except ConfigError as exc:
                    skipped = str(exc)
                if not skipped:
                    print(f"[    eval] ({position}/{len(models)}) {model_name}: {len(tasks)} tasks", flush=True)
                    results = evaluate_model(adapter, tasks, manager, settings, batch_size, task_meta)
                seconds = time.perf_counter() - model_started
            if skipped:
                print(f"[    eval] {model_name}: SKIPPED, projector does not fit the model ({skipped}); "
                      "its cells stay empty in the report", flush=True)
                ctx.log.add("eval", model_name, None, seconds, f"skipped: {skipped}")
                continue
            if not reused:
                aggregated, items = results
                with store.claim("eval", key) as staging:
                    if staging is not None:   # else another process committed the same evaluation meanwhile
                        (staging / RESULTS_FILE).write_text(json.dumps(aggregated, indent=2, default=_json_default))
                        (staging / ITEMS_FILE).write_text(json.dumps(items))
                        store.commit("eval", key, spec)
            else:
                seconds = time.perf_counter() - model_started
            folder = store.verify("eval", key)
            results = json.loads((folder / RESULTS_FILE).read_text())
            items = json.loads((folder / ITEMS_FILE).read_text())
            safe = model_name.replace(":", "_").replace("/", "_")
            shutil.copy2(folder / RESULTS_FILE, results_dir / "lmms" / f"{safe}.json")
            rows = results_rows(results, model=model_name, run=run_id, seed=int(cfg.seed),
                                experiment=str(cfg.experiment_name), task_meta=task_meta, items=items)
            append_rows(results_dir, rows)
            scores[model_name] = {r["benchmark"]: r["value"] for r in rows if r["primary"]}
            evaluated[model_name] = Artifact("eval", key, folder, reused)
            ctx.log.add("eval", model_name, evaluated[model_name], seconds,
                        json.dumps({bench: round(value, 3) for bench, value in scores[model_name].items()}))
    finally:
        if original is not None:
            mllm.projector.load_state_dict(original)
    (results_dir / "suite.json").write_text(json.dumps({"suite": suite_key, "tasks": task_meta}, indent=2))
    log_eval_run(cfg, store, models, evaluated, scores, results_dir)
