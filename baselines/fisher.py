"""Fisher merging (Matena & Raffel, NeurIPS 2022): each parameter averaged with weights from how much each
expert's caption loss depends on it.

theta = pivot + lam * sum_k (F_k + eps) tau_k / sum_k (F_k + eps), elementwise, with F_k the expert's diagonal
Fisher (mean squared gradient of its caption log-likelihood on calibration rows of its own domain; the
pipeline computes it, `ExpertStats.fisher`). eps = `fisher_floor` x the largest Fisher value of the tensor over
experts (the paper floors the Fisher with a small constant so that parameters no expert's loss touches are
averaged instead of divided by zero). lam = 1 is the paper's merge.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.calibration import ExpertStats, check_stats
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.errors import MergeInputError
from pivotmerge.merging.ops import TaskVectorsOf, apply_update, finalize, float_keys
from pivotmerge.merging.spec import Options, merge_method, number

NAME = "fisher"


@merge_method(NAME, options={"fisher_floor": number(0.0), "lam": number()}, scale="lam", one_expert={},
              identical="mean", statistics=True, fisher=True)
def fisher_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    calibration: Sequence[ExpertStats] | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Fisher-weighted average of the task vectors (see the module docstring)."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = check_stats(calibration, len(experts), NAME, fisher=True)
    merged = {}
    for key in float_keys(pivot):
        fishers = []
        for i, s in enumerate(stats):
            if key not in s.fisher or s.fisher[key].shape != pivot[key].shape:
                raise MergeInputError(f"{NAME}: the Fisher of expert {i} has no tensor {key!r} of shape "
                                      f"{tuple(pivot[key].shape)}")
            fishers.append(s.fisher[key].double())
        eps = o.fisher_floor * max(float(f.max()) for f in fishers) + 1e-30
        taus = TaskVectorsOf(pivot, experts, key)
        numerator = sum((f + eps) * taus[i].double() for i, f in enumerate(fishers))
        merged[key] = apply_update(pivot[key].double(), numerator / sum(f + eps for f in fishers), o.lam)
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o))
    return finalize(pivot, merged)
