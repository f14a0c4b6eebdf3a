"""Task Arithmetic (Ilharco et al., 2023): theta = pivot + lam * sum_k tau_k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import (
    apply_update,
    finalize,
    float_keys,
    summed_task_vector,
)
from pivotmerge.merging.spec import Options, merge_method, number


@merge_method("task_arithmetic", options={"lam": number()}, scale="lam", one_expert={}, identical="sum")
def task_arithmetic_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """pivot + lam * sum_k (expert_k - pivot). ``lam`` = 1/K gives weight averaging (up to rounding)."""
    validate_inputs(pivot, experts, min_experts=1, method="task_arithmetic")
    merged = {key: apply_update(pivot[key], summed_task_vector(pivot, experts, key), o.lam)
              for key in float_keys(pivot)}
    if diagnostics is not None:
        diagnostics.update(method="task_arithmetic", options=dict(o))
    return finalize(pivot, merged)
