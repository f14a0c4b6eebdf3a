"""Preflight: the whole resolved config is checked before the first stage runs.

A bad value found after an hour of training is an hour lost, so `check(cfg)` validates everything a run
will use and raises one `PreflightError` naming the key, the bad value and what would fix it. Nothing is
written to the cache. The checks, grouped by what they check:

* `schema`: types and ranges of every trainer / scenario / data / model / eval option (dataclass schemas: a
  field's type and its `rule(...)` are the whole check);
* `rules`: rules across keys - stages and step counts, seeds, the data-source adapters;
* each planned stage's own hook (`Stage.preflight`, pipeline/stage.py) and the schemas of the config
  sections each registered stage declares (`Stage.config`): e.g. the eval task names (eval/stage.py), the sft
  model kinds (pipeline/sft.py), the merge methods' options (`merges`: each method runs once on a tiny
  synthetic problem, so the method's own validation is the rule);
* `packages`: every package the run will import is importable;
* `paths`: every folder the run writes (cache, models, outputs, W&B) can be created and written, and its file
  system has room for what the planned stages write (a warning below the estimate, refused below a floor).

Defaults are not repeated here: they live in conf/ only.
"""
from dataclasses import make_dataclass

from omegaconf import OmegaConf

from pivotmerge.preflight.packages import check_packages, required_modules
from pivotmerge.preflight.paths import check_paths
from pivotmerge.preflight.rules import check_integers, check_seeds, check_sources, check_stages_and_steps
from pivotmerge.preflight.schema import PreflightError, RunSchema, check_schema, rule


def check(cfg, *, packages: bool = True) -> None:
    """Validate the resolved run config; raise PreflightError naming the first problem."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:   # missing mandatory value (???) or a broken interpolation
        raise PreflightError(f"config cannot be resolved: {str(exc).splitlines()[0]}") from exc
    # imported here: the stages import preflight.schema, whose package is this module
    from pivotmerge.pipeline.stages import plan, registered

    check_integers(cfg)
    check_schema(cfg, RunSchema, "")
    check_schema(cfg, stage_sections(registered()), "")
    check_stages_and_steps(cfg)
    check_seeds(cfg)
    sources = check_sources(cfg)
    check_paths(cfg)
    if cfg.report.only:
        return
    for stage in plan(cfg.stages):
        if stage.preflight is not None:
            stage.preflight(cfg, sources)
    if packages:
        # required_modules looked up here, at call time: tests replace pivotmerge.preflight.required_modules
        check_packages(cfg, sources, required_modules(cfg))


def stage_sections(stages) -> type:
    """One schema of the config sections the stages declare (`Stage.config`), each checked like RunSchema's."""
    return make_dataclass("StageSections", [(section, schema, rule()) for stage in stages
                                            for section, schema in stage.config.items()])

__all__ = ["PreflightError", "check", "check_schema", "required_modules", "rule"]
