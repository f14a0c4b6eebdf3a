"""Runs the planned stages in order for every seed, reusing every cached output, and says what it reused and
what it ran (`stages.json`, `run_info.json`, `resolved_config.yaml` in the run folder). A file-system fault in
a stage ends the run with one line naming the stage, the entry and the cause (`stage_faults`).

What a stage declares (pipeline/stage.py) the runner does for it: the preflight of the planned stages, one
Context per seed holding every declared output, and each stage's W&B lineage once it has run."""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from pivotmerge.artifacts import ArtifactStore, library_version
from pivotmerge.errors import StageIOError
from pivotmerge.pipeline.context import Context, StageLog
from pivotmerge.pipeline.stage import Stage
from pivotmerge.pipeline.stages import plan, registered
from pivotmerge.version import code_version

# Installed versions recorded in every run folder's run_info.json.
RESULT_SHAPING_PACKAGES = ("torch", "transformers", "lightning", "lmms-eval", "datasets", "numpy", "hydra-core",
                           "peft", "safetensors")


def run(cfg, mllm=None) -> Context:
    """Run the configured stages for every seed in `cfg.seeds` (or `cfg.seed`), then the report once; with
    `regimes`, once per regime (pivotmerge/pipeline/regimes.py). `mllm`: a loaded model to reuse."""
    if cfg.get("regimes"):
        from pivotmerge.pipeline.regimes import run_regimes

        return run_regimes(cfg, run)
    from pivotmerge import preflight
    from pivotmerge.logs import quiet_libraries
    from pivotmerge.wandb_logging import configure_wandb_env

    preflight.check(cfg)
    quiet_libraries()
    output_dir = Path(cfg.paths.output_dir)
    seeds = [int(s) for s in (cfg.seeds or [cfg.seed])]
    with stage_faults("setup"):
        output_dir.mkdir(parents=True, exist_ok=True)
        configure_wandb_env(cfg)
        write_run_info(cfg, output_dir, seeds)
    started = time.perf_counter()
    log = StageLog()
    stages = plan(cfg.stages)
    report_only = bool(cfg.report.only)
    ctx = None
    for seed in seeds:
        seed_cfg = cfg.copy()
        with open_dict(seed_cfg):
            seed_cfg.seed = seed
        ctx = Context.for_stages(registered(), cfg=seed_cfg, store=ArtifactStore(cfg.paths.cache_dir), log=log,
                                 output_dir=output_dir, _mllm=ctx._mllm if ctx is not None else mllm)
        if report_only:
            break
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) ====", flush=True)
        for stage in stages:
            if stage.per_seed and (stage.all_ranks or global_rank() == 0):
                run_stage(ctx, stage)
    if global_rank() != 0:
        return ctx   # under ddp/fsdp the other ranks only join training
    for stage in stages:
        if not stage.per_seed:
            run_stage(ctx, stage)
    with stage_faults("summary"):
        (output_dir / "stages.json").write_text(json.dumps(log.rows, indent=2))
    print(f"\n{log.summary()} in {time.perf_counter() - started:.0f}s. Outputs: {output_dir}", flush=True)
    return ctx


def run_stage(ctx: Context, stage: Stage) -> None:
    """One stage, then its W&B lineage (given the cache entries it logged under its own name)."""
    with stage_faults(stage.name):
        ctx.stage = stage.name
        stage.run(ctx)
        if stage.lineage is not None:
            stage.lineage(ctx, list(ctx.entries))


@contextmanager
def stage_faults(name: str) -> Iterator[None]:
    """An OSError in stage `name` (disk full, permission, read-only file system, a file removed by a concurrent
    `make clean-cache`) becomes one StageIOError line naming the stage; a cache claim already named the entry."""
    try:
        yield
    except StageIOError as exc:
        if exc.stage is not None:
            raise
        raise StageIOError(exc.cause, exc.entry, name) from exc.cause
    except OSError as exc:
        raise StageIOError(exc, stage=name) from exc


def write_run_info(cfg, output_dir: Path, seeds: list[int]) -> None:
    (output_dir / "run_info.json").write_text(json.dumps(
        {"experiment": cfg.experiment_name, "seeds": seeds, "code_version": code_version(Path(cfg.paths.root)),
         "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
         "packages": {name: library_version(name) for name in RESULT_SHAPING_PACKAGES}}, indent=2))
    OmegaConf.save(cfg, output_dir / "resolved_config.yaml", resolve=True)


def global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
