"""Stage 4 (experts): one projector per source, each aligned from the pivot on its own source only; and, with
`scenario.joint.enabled`, the joint projector trained on the union with the experts' total budget (the
reference of what one projector can hold)."""
from __future__ import annotations

import time

from pivotmerge.pipeline.data import instructions, text_spec
from pivotmerge.pipeline.train import caption_source, run_training_stage, train_spec, with_steps


def run(ctx) -> None:
    cfg = ctx.cfg
    pivot_state = ctx.projector(ctx.pivot)
    steps = int(cfg.scenario.experts.steps)
    logger_factory = ctx.logger_factory()
    for index, name in enumerate(ctx.features):
        spec = {"pivot": ctx.pivot.key, "source": name, "features": ctx.feature_artifacts[name].key,
                "text": text_spec(ctx, [name]), "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
        started = time.perf_counter()
        artifact = run_training_stage(ctx.store, "expert", name, spec, mllm=ctx.mllm, init_state=pivot_state,
                                      train=[caption_source(ctx, name, "train")],
                                      val=[caption_source(ctx, name, "val")], train_cfg=with_steps(cfg.trainer, steps),
                                      seed=int(cfg.seed) * 1000 + index + 1, instructions=instructions(cfg),
                                      logger_factory=logger_factory)
        ctx.experts[name] = artifact
        ctx.log.add("expert", name, artifact, time.perf_counter() - started)
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
