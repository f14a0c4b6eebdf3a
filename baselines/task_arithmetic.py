"""Task Arithmetic (Ilharco et al., 2023): theta = pivot + lam * sum_k tau_k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging import (
    check_number,
    compute_dtype,
    finalize,
    float_keys,
    register,
    stacked_task_vector,
    validate_inputs,
)


def summed_task_vector(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """sum_k tau_k for one tensor, in compute dtype (shared with PivotMerge so reductions are exact)."""
    return stacked_task_vector(pivot, experts, key).sum(0)


def apply_update(pivot_t: Tensor, update: Tensor, scale: float) -> Tensor:
    """pivot + scale * update in compute dtype (the one place the final addition happens)."""
    return pivot_t.to(compute_dtype(pivot_t.dtype)) + scale * update


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
