"""Stage 3 (pivot): the shared starting projector - a short alignment warm-up on a mixture of every source,
or the seeded initialisation (`scenario.pivot.init`)."""
from __future__ import annotations

import time

from pivotmerge.pipeline.data import instructions, text_spec
from pivotmerge.pipeline.train import (
    caption_source,
    model_spec,
    run_training_stage,
    seeded_projector,
    train_spec,
    with_steps,
)


def run(ctx) -> None:
    cfg = ctx.cfg
    pivot_cfg = cfg.scenario.pivot
    steps = int(pivot_cfg.steps) if pivot_cfg.init == "warmup" else 0
    names = list(ctx.features)
    spec = {"model": model_spec(cfg), "features": {n: ctx.feature_artifacts[n].key for n in names},
            "text": text_spec(ctx, names), "pivot": pivot_cfg, "steps": steps, "train": train_spec(cfg),
            "seed": int(cfg.seed)}
    started = time.perf_counter()
    mllm = ctx.mllm
    train = [caption_source(ctx, n, "train", int(pivot_cfg.samples_per_source)) for n in names]
    val = [caption_source(ctx, n, "val") for n in names]
    ctx.pivot = run_training_stage(ctx.store, "pivot", "pivot", spec, mllm=mllm,
                                   init_state=seeded_projector(mllm, int(cfg.seed)), train=train, val=val,
                                   train_cfg=with_steps(cfg.trainer, steps), seed=int(cfg.seed),
                                   instructions=instructions(cfg),
                                   logger_factory=ctx.logger_factory())
    ctx.log.add("pivot", f"pivot ({pivot_cfg.init}, {steps} steps)", ctx.pivot, time.perf_counter() - started)
