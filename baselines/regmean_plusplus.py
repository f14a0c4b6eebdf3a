"""RegMean++ (Nguyen et al., 2025): RegMean whose later layers see what the MERGED model feeds them.

RegMean gives each layer the Gram of each expert's own activations, although the merged model will feed that
layer the merged earlier layers' outputs. RegMean++ merges layer by layer, front to back: layer 0 exactly as
RegMean (Grams of the visual features); for every later layer, each expert's domain inputs are pushed through
the already-merged earlier layers (GELU between Linear layers, as in LLaVA's mlp{N}x_gelu) and the Grams are
taken of those activations. Those later Grams come from each expert's sample of visual tokens
(`ExpertStats.inputs`: the same number of tokens per domain, so the domains keep equal say).
The layers are merged at full strength; theta = pivot + lam * delta is applied at the end (so lam scales
the whole update, and lam = 1 is the paper's merge); `alpha` is RegMean's off-diagonal shrinkage.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.calibration import (
    ExpertStats,
    apply_layer,
    augmented_gram,
    augmented_task_matrix,
    check_stats,
    layer_gram,
    layer_keys,
    linear_layers,
    regmean_solve,
    shrink,
    split_update,
)
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import apply_update, finalize, float_keys, mean_task_vector
from pivotmerge.merging.spec import Options, fraction, merge_method, number

NAME = "regmean_plusplus"


@merge_method(NAME, options={"alpha": fraction(), "lam": number()}, scale="lam", one_expert={}, identical="mean",
              statistics=True)
def regmean_plusplus_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    calibration: Sequence[ExpertStats] | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """RegMean layer by layer, later Grams from the merged earlier layers (see the module docstring)."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = check_stats(calibration, len(experts), NAME, inputs=True)
    deltas: dict[str, Tensor] = {}
    activations = [s.inputs.double() for s in stats]   # each domain's inputs to the current layer
    layers = linear_layers(pivot)
    for index, layer in enumerate(layers):
        if index == 0:
            grams = [layer_gram(s, pivot, layer) for s in stats]
        else:
            has_bias = layer_keys(layer)[1] in pivot
            grams = [augmented_gram(x) if has_bias else augmented_gram(x)[:-1, :-1] for x in activations]
        delta = regmean_solve([augmented_task_matrix(pivot, e, layer) for e in experts],
                              [shrink(g, o.alpha) for g in grams])
        deltas.update(split_update(pivot, layer, delta))
        if index + 1 < len(layers):
            current = {k: pivot[k].double() + deltas[k] for k in layer_keys(layer) if k in deltas}
            activations = [torch.nn.functional.gelu(apply_layer(current, layer, x)) for x in activations]
    merged = {key: apply_update(pivot[key].double(), update.clone(), o.lam) for key, update in deltas.items()}
    for key in float_keys(pivot):
        if key not in merged:
            merged[key] = apply_update(pivot[key].double(), mean_task_vector(pivot, experts, key).double(), o.lam)
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o))
    return finalize(pivot, merged)
