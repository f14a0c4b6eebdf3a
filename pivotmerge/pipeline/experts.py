"""Stage 4 (experts): one projector per source, each aligned on its own source only - from the pivot
(`scenario.experts.start=from_pivot`) or from a start of its own (`independent`: its own seeded init and its
own warm-up, the pivot recipe with the expert's seed; nothing shared but the recipe). With
`scenario.joint.enabled`, the joint projector trained from the pivot on the union with the experts' total
budget (the reference of what one projector can hold)."""
from __future__ import annotations

from pivotmerge.pipeline.data import instructions, text_spec
from pivotmerge.pipeline.pivot import warmed_up
from pivotmerge.pipeline.stage import Stage
from pivotmerge.pipeline.train import caption_source, run_training_stage, train_spec, with_steps


def trained_expert(ctx, index: int, name: str, pivot_state, logger_factory):
    """The expert of source `name` (the `index`-th), from the pivot or from its own warmed-up start."""
    cfg = ctx.cfg
    steps = int(cfg.scenario.experts.steps)
    seed = int(cfg.seed) * 1000 + index + 1
    start, start_state = ctx.pivot, pivot_state
    if cfg.scenario.experts.start == "independent":
        start = warmed_up(ctx, seed, f"start:{name}")
        start_state = ctx.projector(start)
    spec = {"pivot": start.key, "source": name, "features": ctx.feature_artifacts[name].key,
            "text": text_spec(ctx, [name]), "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
    return run_training_stage(ctx.store, "expert", name, spec, mllm=ctx.mllm, init_state=start_state,
                              train=[caption_source(ctx, name, "train")], val=[caption_source(ctx, name, "val")],
                              train_cfg=with_steps(cfg.trainer, steps), seed=seed, instructions=instructions(cfg),
                              logger_factory=logger_factory)


def trained_joint(ctx, steps: int, pivot_state, logger_factory):
    """The joint reference: from the pivot, on the union of the sources."""
    cfg = ctx.cfg
    spec = {"pivot": ctx.pivot.key, "features": {n: a.key for n, a in ctx.feature_artifacts.items()},
            "text": text_spec(ctx, ctx.features), "steps": steps, "train": train_spec(cfg), "seed": int(cfg.seed)}
    return run_training_stage(
        ctx.store, "joint", "joint", spec, mllm=ctx.mllm, init_state=pivot_state,
        train=[caption_source(ctx, n, "train") for n in ctx.features],
        val=[caption_source(ctx, n, "val") for n in ctx.features],
        train_cfg=with_steps(cfg.trainer, steps), seed=int(cfg.seed) * 1000,
        instructions=instructions(cfg), logger_factory=logger_factory)


def run(ctx) -> None:
    cfg = ctx.cfg
    pivot_state = ctx.projector(ctx.pivot)
    logger_factory = ctx.logger_factory()
    note = "own start" if cfg.scenario.experts.start == "independent" else ""
    for index, name in enumerate(ctx.features):
        ctx.experts[name] = ctx.produce("expert", name, trained_expert, ctx, index, name, pivot_state,
                                        logger_factory, note=note)
    joint_cfg = cfg.scenario.joint
    if joint_cfg.enabled:
        steps = int(cfg.scenario.experts.steps)
        joint_steps = int(joint_cfg.steps) if joint_cfg.steps is not None else steps * len(ctx.features)
        ctx.joint = ctx.produce("joint", f"joint ({joint_steps} steps)", trained_joint, ctx, joint_steps,
                                pivot_state, logger_factory)


STAGE = Stage("experts", run, needs=("pivot",), produces={"experts": dict, "joint": None}, all_ranks=True)
