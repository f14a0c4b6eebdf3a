"""The one way to run a merge: :func:`merge`. The pipeline's merge stage, the preflight's dry run, the
``pivotmerge merge`` command, the tests and the benchmarks all call it, so a method sees the same inputs
whoever asks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pivotmerge.merging.calibration import ExpertStats
from pivotmerge.merging.registry import get_method, resolve_options
from pivotmerge.merging.spec import spec_of


def merge(method: str | Callable, pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]],
          options: Mapping[str, Any] | None = None, *, statistics: Sequence[ExpertStats] | None = None,
          calibration_loss: Callable[[dict[str, Tensor]], float] | None = None, align: str = "none",
          align_cache: dict | None = None, diagnostics: dict | None = None) -> dict[str, Tensor]:
    """Merge (pivot, experts) with ``method``.

    * ``method``: a name from conf/merge/ (``options`` then update its YAML's values), or a merge method
      (``options`` then are all of its options: a pipeline config, a merge_variants entry).
    * ``statistics``: each expert's calibration statistics, handed to a method that takes them (one that takes
      none refuses them, unless they are there for ``align='activations'``).
    * ``calibration_loss``: state dict -> loss, handed to a method that takes one (others refuse it).
    * ``align``: the experts are first mapped into the pivot's frame (none | weights | activations: the
      statistics' input samples); ``align_cache`` (mode -> aligned experts) lets a caller that merges many
      methods align once.
    * ``diagnostics``: a dict the method fills.
    """
    if isinstance(method, str):
        options = resolve_options(method, options or {})
        method = get_method(method)
    experts = aligned_experts(pivot, experts, align, statistics, align_cache)
    takes = spec_of(method).takes
    extras: dict[str, Any] = {"diagnostics": diagnostics}
    if statistics is not None and ("calibration" in takes or align != "activations"):
        extras["calibration"] = statistics
    if calibration_loss is not None:
        extras["calibration_loss"] = calibration_loss
    return method(pivot, experts, **dict(options or {}), **extras)


def aligned_experts(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], mode: str,
                    statistics: Sequence[ExpertStats] | None = None, cache: dict | None = None) -> list:
    """The experts in the pivot's frame (pivotmerge/merging/align.py), taken from ``cache`` when there."""
    from pivotmerge.merging.align import align_experts

    if mode == "none":   # the very experts given: their own checks (a list of state dicts) come next
        return experts
    if cache is not None and mode in cache:
        return cache[mode]
    inputs = None
    if mode == "activations" and statistics is not None:
        inputs = torch.cat([s.inputs for s in statistics])
    aligned = align_experts(pivot, experts, mode, inputs=inputs)
    if cache is not None:
        cache[mode] = aligned
    return aligned


__all__ = ["aligned_experts", "merge"]
