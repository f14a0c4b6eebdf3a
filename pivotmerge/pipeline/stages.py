"""The stages, registered once as objects, in the order they run (each declares itself: pipeline/stage.py).

This module sits above every stage (the eval stages included): it imports them, none imports it, so the
import graph sees every stage (tests/test_import_graph.py). A stage added from outside this package (an
experiment's own module, a test) calls `register(STAGE)` and runs after the stages it needs.
"""
from __future__ import annotations

from dataclasses import replace

from eval import report as report_stage
from eval import stage as eval_stage
from pivotmerge.pipeline import data, experts, features, merge, pivot, sft
from pivotmerge.pipeline.stage import Stage
from pivotmerge.preflight.merges import check_merges
from pivotmerge.preflight.schema import PreflightError


def check_merge_methods(cfg, sources: list[str]) -> None:
    """The merge stage's preflight: each selected method runs once on a tiny synthetic problem. Wired here, not
    in pipeline/merge.py, because preflight/merges.py reads that module (it would be an import cycle)."""
    calibration = cfg.calibration
    if float(calibration.guard_se) > 0 and str(calibration.loss_kind) != "kway_guarded":
        raise PreflightError(f"calibration.guard_se={calibration.guard_se} is the noise margin of the guarded "
                             f"loss; with calibration.loss_kind={calibration.loss_kind} it would do nothing: set "
                             "calibration.guard_se=0, or loss_kind=kway_guarded")
    subset = cfg.get("num_experts_merged")
    check_merges(cfg, len(sources) if subset is None else int(subset))


_STAGES: list[Stage] = [data.STAGE, features.STAGE, pivot.STAGE, experts.STAGE,
                        replace(merge.STAGE, preflight=check_merge_methods), sft.STAGE, eval_stage.STAGE,
                        report_stage.STAGE]


def register(stage: Stage) -> Stage:
    """Add a stage (after the ones registered so far; those it needs must be among them)."""
    names = stage_names()
    if stage.name in names:
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    missing = [n for n in stage.needs if n not in names]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs unregistered stage(s) {missing}")
    _STAGES.append(stage)
    return stage


def unregister(name: str) -> None:
    _STAGES[:] = [stage for stage in _STAGES if stage.name != name]


def registered() -> tuple[Stage, ...]:
    return tuple(_STAGES)


def stage_names() -> tuple[str, ...]:
    return tuple(stage.name for stage in _STAGES)


def plan(requested) -> list[Stage]:
    """The stages to run for `requested` names: those and everything they need, in stage order."""
    by_name = {stage.name: stage for stage in _STAGES}
    wanted: set[str] = set()
    todo = [name for name in requested if name in by_name]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].needs)
    return [stage for stage in _STAGES if stage.name in wanted]
