"""Task Arithmetic (Ilharco et al., 2023): theta = pivot + lam * sum_k tau_k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.checks import check_number, validate_inputs
from pivotmerge.merging.ops import (
    apply_update,
    finalize,
    float_keys,
    summed_task_vector,
)
from pivotmerge.merging.registry import contract


@contract(scale="lam", one_expert={}, identical="sum")
def task_arithmetic_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    lam: float,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """pivot + lam * sum_k (expert_k - pivot). ``lam`` = 1/K gives weight averaging (up to rounding)."""
    lam = check_number("task_arithmetic", "lam", lam)
    validate_inputs(pivot, experts, min_experts=1, method="task_arithmetic")
    merged = {key: apply_update(pivot[key], summed_task_vector(pivot, experts, key), lam) for key in float_keys(pivot)}
    if diagnostics is not None:
        diagnostics.update(method="task_arithmetic", options={"lam": lam})
    return finalize(pivot, merged)
