"""RegMean (Jin et al., ICLR 2023): the merge that best reproduces every expert on its own domain's inputs.

Per Linear layer with weight W (out x in) and bias b, written W~ = [W, b] acting on inputs [x, 1], and each
expert's input Gram matrix G_k = sum over its domain's tokens of [x, 1]^T [x, 1] (calibration statistics,
pivotmerge/merging/calibration.py), RegMean minimises sum_k ||[X_k, 1] W~^T - [X_k, 1] W~_k^T||^2:

    W~ = (sum_k W~_k G_k') (sum_k G_k')^-1,   G_k' = alpha G_k + (1 - alpha) diag(G_k)

(`alpha` < 1 shrinks the off-diagonal entries: the paper's regulariser). On task vectors this is
theta = pivot + lam * (sum_k tau~_k G_k') (sum_k G_k')^-1, and lam = 1 gives exactly the paper's weights.
Layer 0's Grams come from the visual features; a later layer's from each expert's OWN activations before it
(the paper; RegMean++ uses the merged earlier layers instead). Tensors outside the Linear layers (none in a
LLaVA projector) are averaged, as in the paper. Solved in float64 with the pseudo-inverse of the Gram sum
(directions no domain's inputs use get no update).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.calibration import (
    ExpertStats,
    augmented_task_matrix,
    check_stats,
    layer_gram,
    linear_layers,
    regmean_solve,
    shrink,
    split_update,
)
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import apply_update, diag_layer, finalize, float_keys, mean_task_vector
from pivotmerge.merging.spec import Options, fraction, merge_method, number

NAME = "regmean"


@merge_method(NAME, options={"alpha": fraction(), "lam": number()}, scale="lam", one_expert={}, identical="mean",
              statistics=True)
def regmean_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    calibration: Sequence[ExpertStats] | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """RegMean on each Linear layer from the experts' own-domain input Grams (see the module docstring)."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = check_stats(calibration, len(experts), NAME)
    merged: dict[str, Tensor] = {}
    for layer in linear_layers(pivot):
        grams = [shrink(layer_gram(s, pivot, layer), o.alpha) for s in stats]
        delta = regmean_solve([augmented_task_matrix(pivot, e, layer) for e in experts], grams)
        for key, update in split_update(pivot, layer, delta).items():
            merged[key] = apply_update(pivot[key].double(), update.clone(), o.lam)
    for key in float_keys(pivot):
        if key not in merged:   # outside the Linear layers: averaged, as in the paper
            merged[key] = apply_update(pivot[key].double(), mean_task_vector(pivot, experts, key).double(), o.lam)
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o))
        for layer in linear_layers(pivot):
            diag_layer(diagnostics, layer or "linear")["calibration_tokens"] = [s.counts.get(layer) for s in stats]
    return finalize(pivot, merged)
