"""The stages, listed once, in the order they run. Each is a module with `run(ctx)`.

`needs`: the stages whose outputs a stage reads; asking for a stage runs (or reuses) everything it needs.
`per_seed`: run once per seed of `seeds` (else once per run, after every seed: the report).
`all_ranks`: also runs on the non-zero ranks of a multi-process (ddp/fsdp) training run, which only join
training.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    needs: tuple[str, ...] = ()
    per_seed: bool = True
    all_ranks: bool = False

    def run(self, ctx) -> None:
        importlib.import_module(self.module).run(ctx)


STAGES: tuple[Stage, ...] = (
    Stage("data", "pivotmerge.pipeline.data", all_ranks=True),
    Stage("features", "pivotmerge.pipeline.features", ("data",), all_ranks=True),
    Stage("pivot", "pivotmerge.pipeline.pivot", ("features",), all_ranks=True),
    Stage("experts", "pivotmerge.pipeline.experts", ("pivot",), all_ranks=True),
    Stage("merge", "pivotmerge.pipeline.merge", ("experts",)),
    Stage("sft", "pivotmerge.pipeline.sft", ("merge",)),   # LLaVA stage 2 after merging (experiment=stage2)
    Stage("eval", "eval.stage", ("experts",)),
    Stage("report", "eval.report", per_seed=False),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def plan(requested) -> list[Stage]:
    """The stages to run for `requested` names: those and everything they need, in stage order."""
    by_name = {stage.name: stage for stage in STAGES}
    wanted: set[str] = set()
    todo = [name for name in requested if name in by_name]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].needs)
    return [stage for stage in STAGES if stage.name in wanted]
