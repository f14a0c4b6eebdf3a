"""Rules across keys: the stages and their step counts, the seeds, the data sources, the eval task names."""

from omegaconf import ListConfig

from pivotmerge.errors import ConfigError
from pivotmerge.preflight.schema import PreflightError, fail


def check_integers(cfg) -> None:
    """seed, seeds and num_experts_merged, the most common typos: clear words, not a type name."""
    for key in ("seed", "seeds", "num_experts_merged"):
        value = cfg.get(key)
        if key == "seeds" and value is not None and isinstance(value, ListConfig):
            bad = [v for v in value if not (isinstance(v, int) and not isinstance(v, bool))]
            if bad:
                raise fail("seeds", value, f"holds non-integer seed(s) {bad}", "e.g. seeds=[0,1,2]")
        elif value is not None and key != "seeds" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise fail(key, value, "must be an integer", "e.g. seed=0" if key == "seed" else "")


def check_stages_and_steps(cfg) -> None:
    """Known stages, and the planned training stages get at least one step."""
    from pivotmerge.pipeline.stages import plan, stage_names

    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in stage_names()]
    if unknown or not stages:
        raise fail("stages", cfg.stages, f"names unknown stage(s) {unknown}" if unknown else "is empty",
                   f"stages are {', '.join(stage_names())}, in that order")
    if cfg.report.only:
        return
    planned = [stage.name for stage in plan(stages)]
    if "pivot" in planned and cfg.scenario.pivot.init == "warmup" and int(cfg.scenario.pivot.steps) < 1:
        raise fail("scenario.pivot.steps", cfg.scenario.pivot.steps, "must be >= 1 for a warm-up pivot",
                   "or scenario.pivot.init=seeded for the untrained seeded projector")
    pivot = cfg.scenario.pivot
    if "pivot" in planned and pivot.init == "warmup" and pivot.data == "general" and int(cfg.data.split.pool) < 1:
        raise fail("data.split.pool", cfg.data.split.pool, "must be >= 1 for scenario.pivot.data=general (the "
                   "general pivot trains on each source's pool: images no expert trains on)", "e.g. 400")
    if "experts" in planned and int(cfg.scenario.experts.steps) < 1:
        raise fail("scenario.experts.steps", cfg.scenario.experts.steps,
                   "must be >= 1: experts with no training would equal the pivot", "e.g. 60")


def check_seeds(cfg) -> None:
    """`seeds`, when given, is a non-empty list without repeats."""
    seeds = cfg.get("seeds")
    if seeds is not None:
        if len(seeds) == 0:
            raise fail("seeds", seeds, "is empty", "null for the single `seed`, or a list such as [0,1,2]")
        if len(set(seeds)) != len(seeds):
            raise fail("seeds", seeds, "repeats a seed")


def check_sources(cfg) -> list[str]:
    """scenario.sources names distinct sources of the data config whose adapters accept their options."""
    from pivotmerge.pipeline.data import build_source

    names = list(cfg.scenario.sources)
    if not names:
        raise fail("scenario.sources", cfg.scenario.sources, "is empty", "name at least one data source")
    unknown = [n for n in names if n not in cfg.data.sources]
    if unknown:
        raise fail("scenario.sources", cfg.scenario.sources, f"names {unknown}, which data={cfg.data.name} "
                   f"does not define", f"available: {sorted(cfg.data.sources)}")
    if len(set(names)) != len(names):
        raise fail("scenario.sources", cfg.scenario.sources, "repeats a source")
    subset = cfg.get("num_experts_merged")
    if subset is not None and int(subset) > len(names):
        raise fail("num_experts_merged", subset, f"exceeds the {len(names)} experts of scenario.sources",
                   f"use 1..{len(names)} or null for all")
    for name in names:
        try:
            build_source(cfg.data.sources[name])   # constructor checks only: no data is read
        except ConfigError as exc:
            raise PreflightError(f"config data.sources.{name}: {exc}") from exc
    return names


__all__ = ["check_integers", "check_seeds", "check_sources", "check_stages_and_steps"]
