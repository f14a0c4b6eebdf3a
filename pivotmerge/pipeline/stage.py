"""The stage protocol: what a stage declares, so that the runner can do the rest.

A stage is one module that defines `STAGE = Stage(...)`: its name, the stages whose outputs it reads
(`needs`), the outputs it puts on the `Context` (`produces`: name -> the empty value of each seed, e.g.
`dict`, or None for a single value), the config sections it reads with their preflight schemas (`config`), a
preflight hook for rules across keys (`preflight(cfg, sources)`), the cache entry kinds it writes with their
versions and libraries (`caches`) and its W&B lineage (`lineage(ctx, entries)`, given the entries it logged
under its own name). Its `run(ctx)` makes or reuses each output through `ctx.produce` (cache claim and commit,
timing, the stage-log row) and assigns it to a declared output.

The runner (pivotmerge/pipeline/runner.py) owns the rest: the plan, one Context per seed with every declared
output, the preflight hooks of the planned stages, W&B lineage after each stage, and stages.json.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pivotmerge.artifacts import CacheKind, register_kind
from pivotmerge.wandb_logging import log_stage_run


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable
    needs: tuple[str, ...] = ()
    produces: dict[str, Callable | None] = field(default_factory=dict)
    config: dict[str, type] = field(default_factory=dict)
    preflight: Callable | None = None
    caches: dict[str, CacheKind] = field(default_factory=dict)
    lineage: Callable | None = None
    per_seed: bool = True      # else once per run, after every seed (the report)
    all_ranks: bool = False    # also on the non-zero ranks of a ddp/fsdp run, which only join training

    def __post_init__(self):
        for kind, spec in self.caches.items():
            register_kind(kind, spec)


def entries_run(ctx, entries: list) -> None:
    """The lineage of a stage whose W&B run is the cache entries it made (`<stage>-seed<seed>`)."""
    log_stage_run(ctx.cfg, ctx.store, ctx.stage, f"{ctx.stage}-seed{ctx.cfg.seed}", entries)
