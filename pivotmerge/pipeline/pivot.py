"""Stage 3 (pivot): the shared starting projector - a short alignment warm-up on a mixture of every source,
or the seeded initialisation (`scenario.pivot.init`). The mixture is the experts' TRAIN rows
(`scenario.pivot.data=experts`) or each source's POOL rows (`general`: images no expert trains on, a pivot
with general alignment). Independent experts (`scenario.experts.start=independent`) get a warm-up of their
own from this same recipe with their own seed (`warmed_up`)."""
from __future__ import annotations

from pivotmerge.pipeline.data import instructions, text_spec
from pivotmerge.pipeline.stage import Stage
from pivotmerge.pipeline.train import (
    caption_source,
    model_spec,
    run_training_stage,
    seeded_projector,
    train_spec,
    with_steps,
)


def warmed_up(ctx, seed: int, name: str):
    """The pivot recipe from the seeded init of `seed`: the shared pivot (the run seed), or an independent
    expert's own start (its own seed)."""
    cfg = ctx.cfg
    pivot_cfg = cfg.scenario.pivot
    steps = int(pivot_cfg.steps) if pivot_cfg.init == "warmup" else 0
    names = list(ctx.features)
    split = "pool" if pivot_cfg.data == "general" else "train"
    spec = {"model": model_spec(cfg), "features": {n: ctx.feature_artifacts[n].key for n in names},
            "text": text_spec(ctx, names), "pivot": pivot_cfg, "steps": steps, "train": train_spec(cfg),
            "seed": seed}
    mllm = ctx.mllm
    train = [caption_source(ctx, n, split, int(pivot_cfg.samples_per_source)) for n in names]
    val = [caption_source(ctx, n, "val") for n in names]
    return run_training_stage(ctx.store, "pivot", name, spec, mllm=mllm, init_state=seeded_projector(mllm, seed),
                              train=train, val=val, train_cfg=with_steps(cfg.trainer, steps), seed=seed,
                              instructions=instructions(cfg), logger_factory=ctx.logger_factory())


def run(ctx) -> None:
    pivot_cfg = ctx.cfg.scenario.pivot
    steps = int(pivot_cfg.steps) if pivot_cfg.init == "warmup" else 0
    ctx.pivot = ctx.produce("pivot", f"pivot ({pivot_cfg.init}, {pivot_cfg.data}, {steps} steps)", warmed_up, ctx,
                            int(ctx.cfg.seed), "pivot")


STAGE = Stage("pivot", run, needs=("features",), produces={"pivot": None}, all_ranks=True)
