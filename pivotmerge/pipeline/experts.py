"""Stage 4 (experts): one projector per source, each aligned on its own source only - from the pivot
(`scenario.experts.start=from_pivot`) or from a start of its own (`independent`: its own seeded init and its
own warm-up, the pivot recipe with the expert's seed; nothing shared but the recipe). With
`scenario.joint.enabled`, the joint projector trained from the pivot on the union with the experts' total
budget (the reference of what one projector can hold)."""
from __future__ import annotations

import time

from pivotmerge.pipeline.data import instructions, text_spec
from pivotmerge.pipeline.pivot import warmed_up
from pivotmerge.pipeline.train import caption_source, run_training_stage, train_spec, with_steps


def run(ctx) -> None:
    cfg = ctx.cfg
    pivot_state = ctx.projector(ctx.pivot)
    steps = int(cfg.scenario.experts.steps)
    logger_factory = ctx.logger_factory()
    independent = cfg.scenario.experts.start == "independent"
    for index, name in enumerate(ctx.features):
        started = time.perf_counter()
        seed = int(cfg.seed) * 1000 + index + 1
        start, start_state = ctx.pivot, pivot_state
        if independent:
            start = warmed_up(ctx, seed, f"start:{name}")
            start_state = ctx.projector(start)
        spec = {"pivot": start.key, "source": name, "features": ctx.feature_artifacts[name].key,
                "text": text_spec(ctx, [name]), "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
        artifact = run_training_stage(ctx.store, "expert", name, spec, mllm=ctx.mllm, init_state=start_state,
                                      train=[caption_source(ctx, name, "train")],
                                      val=[caption_source(ctx, name, "val")], train_cfg=with_steps(cfg.trainer, steps),
                                      seed=seed, instructions=instructions(cfg),
                                      logger_factory=logger_factory)
        ctx.experts[name] = artifact
        ctx.log.add("expert", name, artifact, time.perf_counter() - started, "own start" if independent else "")
    joint_cfg = cfg.scenario.joint
    if joint_cfg.enabled:
        joint_steps = int(joint_cfg.steps) if joint_cfg.steps is not None else steps * len(ctx.features)
        spec = {"pivot": ctx.pivot.key, "features": {n: a.key for n, a in ctx.feature_artifacts.items()},
                "text": text_spec(ctx, ctx.features), "steps": joint_steps, "train": train_spec(cfg),
                "seed": int(cfg.seed)}
        started = time.perf_counter()
        ctx.joint = run_training_stage(
            ctx.store, "joint", "joint", spec, mllm=ctx.mllm, init_state=pivot_state,
            train=[caption_source(ctx, n, "train") for n in ctx.features],
            val=[caption_source(ctx, n, "val") for n in ctx.features],
            train_cfg=with_steps(cfg.trainer, joint_steps), seed=int(cfg.seed) * 1000,
            instructions=instructions(cfg), logger_factory=logger_factory)
        ctx.log.add("joint", f"joint ({joint_steps} steps)", ctx.joint, time.perf_counter() - started)
