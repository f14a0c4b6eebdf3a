"""Runs the stages in order, reusing every cached output, and says what it reused and what it ran."""
from __future__ import annotations

import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pivotmerge.errors import ConfigError
from pivotmerge.pipeline.artifacts import Artifact, ArtifactStore, library_version
from pivotmerge.pipeline.data import build_source, run_data_stage, selected_sources
from pivotmerge.pipeline.features import SourceFeatures, load_source_features, run_features_stage
from pivotmerge.pipeline.train import load_projector, run_training_stage, seeded_projector
from pivotmerge.training import CaptionSource
from pivotmerge.version import code_version
from pivotmerge.wandb_logging import log_stage_run

# Installed versions recorded in every run folder's run_info.json.
RESULT_SHAPING_PACKAGES = ("torch", "transformers", "lightning", "lmms-eval", "datasets", "numpy", "hydra-core",
                           "peft", "safetensors")
TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "warmup_ratio", "accumulate_grad_batches", "precision")

# Later stages live in their own modules; the runner calls `run(ctx)` on each.
STAGE_MODULES = {"merge": "pivotmerge.pipeline.merge", "eval": "eval.stage", "report": "eval.report"}


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, name: str, artifact: Artifact | None, seconds: float, note: str = ""):
        status = "reused" if artifact is not None and artifact.reused else "ran"
        row = {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 1),
               "key": artifact.key if artifact else None, "path": str(artifact.path) if artifact else None,
               "note": note}
        self.rows.append(row)
        print(f"[{stage:>8}] {name:<28} {status:<6} {seconds:7.1f}s  {note}", flush=True)

    def summary(self) -> str:
        ran = sum(r["status"] == "ran" for r in self.rows)
        return f"{len(self.rows)} stage outputs: {ran} ran, {len(self.rows) - ran} reused"


@dataclass
class Context:
    """Everything a stage needs; later stages read what earlier ones put here."""

    cfg: object
    store: ArtifactStore
    log: StageLog
    output_dir: Path
    sources: dict[str, object] = field(default_factory=dict)         # name -> DataSource
    source_cfgs: dict[str, object] = field(default_factory=dict)
    data: dict[str, Artifact] = field(default_factory=dict)
    features: dict[str, SourceFeatures] = field(default_factory=dict)
    feature_artifacts: dict[str, Artifact] = field(default_factory=dict)
    pivot: Artifact | None = None
    experts: dict[str, Artifact] = field(default_factory=dict)
    joint: Artifact | None = None
    merged: dict[str, Artifact] = field(default_factory=dict)
    merge_experts: list[str] = field(default_factory=list)
    _mllm: object = None

    @property
    def mllm(self):
        if self._mllm is None:
            from pivotmerge.models.mllm import build_mllm

            started = time.perf_counter()
            self._mllm = build_mllm(self.cfg.model, self.cfg.paths.models_dir, seed=int(self.cfg.seed))
            print(f"[   model] loaded {self.cfg.model.name} in {time.perf_counter() - started:.1f}s", flush=True)
        return self._mllm

    def projector(self, artifact: Artifact) -> dict[str, torch.Tensor]:
        return load_projector(self.store, artifact)

    def models(self) -> dict[str, Artifact]:
        """Every projector to evaluate, merged ones first: an interrupted evaluation should already hold
        the comparison the experiment is about (the table orders rows itself)."""
        rows = {}
        if self.pivot is not None:
            rows["pivot"] = self.pivot
        rows.update({f"merge:{k}": v for k, v in self.merged.items()})
        if self.joint is not None:
            rows["joint"] = self.joint
        rows.update({f"expert:{k}": v for k, v in self.experts.items()})
        return rows


def with_steps(trainer_cfg, steps: int):
    return OmegaConf.create({**OmegaConf.to_container(trainer_cfg, resolve=True), "steps": steps})


def train_spec(cfg) -> dict:
    return {k: cfg.trainer[k] for k in TRAIN_KEYS}


def model_spec(cfg) -> dict:
    return {"llm": cfg.model.llm, "projector": cfg.model.projector, "system_prompt": cfg.model.get("system_prompt")}


def caption_source(ctx: Context, name: str, split: str, rows: int | None = None) -> CaptionSource:
    feats = ctx.features[name]
    n = feats.features[split].shape[0] if rows is None else min(rows, feats.features[split].shape[0])
    return CaptionSource(name, feats.features[split][:n], feats.labels[split][:n],
                         list(ctx.sources[name].caption_templates))


def stage_data_and_features(ctx: Context) -> None:
    cfg = ctx.cfg
    tower = {}

    def tower_factory():
        if "t" not in tower:
            from pivotmerge.models.vision import build_vision_tower

            tower["t"] = build_vision_tower(cfg.model.vision)
        return tower["t"]

    for name in selected_sources(cfg):
        source_cfg = cfg.data.sources[name]
        ctx.source_cfgs[name] = source_cfg
        ctx.sources[name] = build_source(source_cfg)
        started = time.perf_counter()
        ctx.data[name] = run_data_stage(ctx.store, name, source_cfg, cfg.data.split)
        ctx.log.add("data", name, ctx.data[name], time.perf_counter() - started)
        started = time.perf_counter()
        artifact = run_features_stage(ctx.store, name, ctx.data[name], cfg.model.vision, tower_factory)
        ctx.feature_artifacts[name] = artifact
        ctx.features[name] = load_source_features(ctx.store, name, artifact)
        shape = tuple(ctx.features[name].features["train"].shape)
        ctx.log.add("features", name, artifact, time.perf_counter() - started, f"train {shape}")
    log_stage_run(cfg, ctx.store, "features", f"features-seed{cfg.seed}", ctx.feature_artifacts.values())


def stage_pivot(ctx: Context, logger_factory) -> None:
    cfg = ctx.cfg
    pivot_cfg = cfg.scenario.pivot
    if pivot_cfg.init not in ("warmup", "seeded"):
        raise ConfigError(f"scenario.pivot.init must be 'warmup' or 'seeded', got {pivot_cfg.init!r}")
    steps = int(pivot_cfg.steps) if pivot_cfg.init == "warmup" else 0
    names = list(ctx.features)
    spec = {"model": model_spec(cfg), "features": {n: ctx.feature_artifacts[n].key for n in names},
            "pivot": pivot_cfg, "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
    started = time.perf_counter()
    mllm = ctx.mllm
    train = [caption_source(ctx, n, "train", int(pivot_cfg.samples_per_source)) for n in names]
    val = [caption_source(ctx, n, "val") for n in names]
    train_cfg = with_steps(cfg.trainer, steps)
    ctx.pivot = run_training_stage(ctx.store, "pivot", "pivot", spec, mllm=mllm,
                                   init_state=seeded_projector(mllm, int(cfg.seed)), train=train, val=val,
                                   train_cfg=train_cfg, seed=int(cfg.seed), logger_factory=logger_factory)
    ctx.log.add("pivot", f"pivot ({pivot_cfg.init}, {steps} steps)", ctx.pivot, time.perf_counter() - started)


def stage_experts(ctx: Context, logger_factory) -> None:
    cfg = ctx.cfg
    pivot_state = ctx.projector(ctx.pivot)
    steps = int(cfg.scenario.experts.steps)
    train_cfg = with_steps(cfg.trainer, steps)
    for index, name in enumerate(ctx.features):
        spec = {"pivot": ctx.pivot.key, "source": name, "features": ctx.feature_artifacts[name].key,
                "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
        started = time.perf_counter()
        seed = int(cfg.seed) * 1000 + index + 1
        artifact = run_training_stage(ctx.store, "expert", name, spec, mllm=ctx.mllm, init_state=pivot_state,
                                      train=[caption_source(ctx, name, "train")],
                                      val=[caption_source(ctx, name, "val")], train_cfg=train_cfg, seed=seed,
                                      logger_factory=logger_factory)
        ctx.experts[name] = artifact
        ctx.log.add("expert", name, artifact, time.perf_counter() - started)
    joint_cfg = cfg.scenario.joint
    if joint_cfg.enabled:
        joint_steps = int(joint_cfg.steps) if joint_cfg.steps is not None else steps * len(ctx.features)
        spec = {"pivot": ctx.pivot.key, "features": {n: a.key for n, a in ctx.feature_artifacts.items()},
                "steps": joint_steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
        started = time.perf_counter()
        ctx.joint = run_training_stage(
            ctx.store, "joint", "joint", spec, mllm=ctx.mllm, init_state=pivot_state,
            train=[caption_source(ctx, n, "train") for n in ctx.features],
            val=[caption_source(ctx, n, "val") for n in ctx.features],
            train_cfg=with_steps(cfg.trainer, joint_steps), seed=int(cfg.seed) * 1000,
            logger_factory=logger_factory)
        ctx.log.add("joint", f"joint ({joint_steps} steps)", ctx.joint, time.perf_counter() - started)


def _quiet_libraries() -> None:
    """Our own progress bars say what runs; silence the per-shard bars of datasets/transformers."""
    import logging

    import datasets
    import transformers

    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The frozen LLM and vision tower are in eval mode on purpose; the pytree notice is Lightning-internal.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def run(cfg) -> Context:
    """Run the configured stages for every seed in `cfg.seeds` (or `cfg.seed`), then the report once."""
    from omegaconf import open_dict

    from pivotmerge import preflight
    from pivotmerge.wandb_logging import configure_wandb_env

    preflight.check(cfg)
    _quiet_libraries()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    configure_wandb_env(cfg)
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in ("data", "features", "pivot", "experts", *STAGE_MODULES)]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: stages are data, features, pivot, experts, "
                          f"{', '.join(STAGE_MODULES)}")
    seeds = [int(s) for s in (cfg.get("seeds") or [cfg.seed])]
    (output_dir / "run_info.json").write_text(json.dumps(
        {"experiment": cfg.experiment_name, "seeds": seeds, "code_version": code_version(Path(cfg.paths.root)),
         "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
         "packages": {name: library_version(name) for name in RESULT_SHAPING_PACKAGES}}, indent=2))
    OmegaConf.save(cfg, output_dir / "resolved_config.yaml", resolve=True)
    started = time.perf_counter()
    log = StageLog()
    ctx = None
    report_only = bool(cfg.report.get("only", False))
    for seed in seeds:
        seed_cfg = cfg.copy()
        with open_dict(seed_cfg):
            seed_cfg.seed = seed
        ctx = Context(cfg=seed_cfg, store=ArtifactStore(cfg.paths.cache_dir), log=log, output_dir=output_dir,
                      _mllm=ctx._mllm if ctx is not None else None)
        if report_only:
            break
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) ====", flush=True)
        run_seed(ctx, stages)
    if "report" in stages and global_rank() == 0:
        _stage_module("report").run(ctx)
    if global_rank() != 0:
        return ctx
    (output_dir / "stages.json").write_text(json.dumps(log.rows, indent=2))
    print(f"\n{log.summary()} in {time.perf_counter() - started:.0f}s. Outputs: {output_dir}", flush=True)
    return ctx


def _stage_module(stage: str):
    return importlib.import_module(STAGE_MODULES[stage])


def run_seed(ctx: Context, stages: list[str]) -> None:
    from pivotmerge.wandb_logging import lightning_logger_factory

    logger_factory = lightning_logger_factory(ctx.cfg)
    stage_data_and_features(ctx)
    if any(s in stages for s in ("pivot", "experts", "merge", "eval")):
        stage_pivot(ctx, logger_factory)
    if any(s in stages for s in ("experts", "merge", "eval")):
        stage_experts(ctx, logger_factory)
    if global_rank() != 0:
        return  # under ddp/fsdp the other ranks only join training
    for stage in ("merge", "eval"):
        if stage in stages:
            _stage_module(stage).run(ctx)


def global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
