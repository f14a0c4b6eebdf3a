"""Plain weight averaging: theta = (1/K) sum_k theta_k (the pivot only fixes keys, shapes and dtype)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import compute_dtype, finalize, float_keys
from pivotmerge.merging.spec import Options, merge_method


@merge_method("average", options={}, one_expert={}, identical="mean")
def average_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Uniform average of the experts' weights (== pivot + mean_k tau_k up to rounding)."""
    validate_inputs(pivot, experts, min_experts=1, method="average")
    merged = {}
    for key in float_keys(pivot):
        dt = compute_dtype(pivot[key].dtype)
        merged[key] = torch.stack([e[key].to(dt) for e in experts]).mean(0)
    if diagnostics is not None:
        diagnostics.update(method="average", options={})
    return finalize(pivot, merged)
