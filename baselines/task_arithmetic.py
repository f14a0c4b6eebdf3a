"""Task Arithmetic (Ilharco et al., 2023): theta = pivot + lam * sum_k tau_k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging import (
    FlatTaskVectors,
    check_number,
    chunks,
    finalize,
    float_keys,
    register,
    validate_inputs,
)


def summed_task_vector(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """sum_k tau_k for one tensor, in compute dtype (shared with PivotMerge so reductions are exact).

    Computed in cache-sized chunks, so no K x n temporary is allocated."""
    v = FlatTaskVectors(pivot, experts, key)
    out = torch.empty(v.numel, dtype=v.dtype)
    for c0, c1 in chunks(v.numel):
        torch.sum(v.chunk(c0, c1), 0, out=out[c0:c1])
    return out.reshape(v.shape)


def apply_update(pivot_t: Tensor, update: Tensor, scale: float) -> Tensor:
    """pivot + scale * update in compute dtype (the one place the final addition happens).

    ``update`` must be a fresh tensor owned by the caller: it is scaled and shifted in place."""
    return update.mul_(scale).add_(pivot_t.reshape(update.shape))


@register("task_arithmetic")
def task_arithmetic_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    lam: float = 0.4,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """pivot + lam * sum_k (expert_k - pivot). ``lam`` = 1/K gives weight averaging (up to rounding)."""
    lam = check_number("task_arithmetic", "lam", lam)
    validate_inputs(pivot, experts, min_experts=1, method="task_arithmetic")
    merged = {key: apply_update(pivot[key], summed_task_vector(pivot, experts, key), lam) for key in float_keys(pivot)}
    if diagnostics is not None:
        diagnostics.update(method="task_arithmetic", options={"lam": lam})
    return finalize(pivot, merged)
