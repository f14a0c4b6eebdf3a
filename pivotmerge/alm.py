"""PivotMerge's Alignment-guided Layer-wise Merging (ALM): one weight per layer for its merged update.

A score s_l per layer - data-free proxies (computed with the decomposition, pivotmerge/sdf.py) or the
calibration loss gain of the layer's update (:func:`data_scores`) - becomes the weight
w_l = lo + (hi - lo) * exp((s_l - max s) / temperature) (:func:`layer_weights`). Or the weights are measured
directly (``alm='search'``, :func:`searched_weights`): per layer, the weight among {0, lo, (lo+hi)/2, hi} with
the lowest calibration loss, layer by layer from the full merge, and the pivot itself (every weight 0) when
no merge beats it - so the merge is never worse than its pivot on the calibration rows.
pivotmerge/method.py's docstring and docs/method.md give the equations.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from pivotmerge.merging.errors import MergeInputError
from pivotmerge.merging.ops import apply_update, diag_layer, finalize

ALM_MODES = ("off", "data", "proxy", "search")
SEARCH_SWEEPS = 2   # passes over the layers; a second pass catches layers whose best weight moved with others
ALM_PROXIES = ("agreement", "shared_energy")
ALM_PROBES = ("remove", "apply")


def layer_weights(scores: dict[str, float], temperature: float, lo: float, hi: float) -> dict[str, float]:
    """w_l = lo + (hi - lo) * softmax(s / temperature)_l / max_l softmax(s / temperature)_l."""
    if not scores:
        return {}
    s = torch.tensor(list(scores.values()), dtype=torch.float64)
    p = torch.softmax(s / temperature, 0)
    w = lo + (hi - lo) * p / p.max()
    return dict(zip(scores, w.tolist()))


def data_scores(
    pivot: Mapping[str, Tensor],
    layers: dict[str, list[str]],
    delta: dict[str, Tensor],
    lam: float,
    probe: str,
    calibration_loss: Callable,
    diagnostics: dict | None,
    method: str,
) -> dict[str, float]:
    """Per-layer loss gains of the merged update, normalised to [-1, 1] by the largest |gain|.

    ``probe='remove'``: gain_l = L(merged without layer l's update) - L(merged);
    ``'apply'``: gain_l = L(pivot) - L(pivot + layer l's update)."""
    # clones: apply_update works in place, and delta is applied again with the layer weights afterwards
    full = finalize(pivot, {k: apply_update(pivot[k], d.clone(), lam) for k, d in delta.items()})
    gains: dict[str, float] = {}
    if probe == "remove":
        base = _call_loss(calibration_loss, full, "the merged projector", method)
        for layer, keys in layers.items():
            sd = dict(full)
            for k in keys:
                sd[k] = pivot[k]
            loss = _call_loss(calibration_loss, sd, f"the merged projector without layer {layer!r}", method)
            gains[layer] = loss - base
            diag_layer(diagnostics, layer).update(alm_loss_probe=loss, alm_loss_reference=base)
    else:
        base = _call_loss(calibration_loss, dict(pivot), "the pivot", method)
        for layer, keys in layers.items():
            sd = dict(pivot)
            for k in keys:
                sd[k] = full[k]
            loss = _call_loss(calibration_loss, sd, f"the pivot with layer {layer!r} merged", method)
            gains[layer] = base - loss
            diag_layer(diagnostics, layer).update(alm_loss_probe=loss, alm_loss_reference=base)
    scale = max((abs(x) for x in gains.values()), default=0.0)
    for layer, gain in gains.items():
        diag_layer(diagnostics, layer)["alm_loss_gain"] = gain
    return {layer: (gain / scale if scale > 0 else 0.0) for layer, gain in gains.items()}


def _call_loss(calibration_loss: Callable, sd: dict[str, Tensor], what: str, method: str) -> float:
    value = calibration_loss(sd)
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise MergeInputError(f"{method}: calibration_loss returned {value!r} for {what}, expected a float") from e
    if not math.isfinite(value):
        raise MergeInputError(f"{method}: calibration_loss returned {value} for {what}")
    return value


def searched_weights(pivot: Mapping[str, Tensor], layers: dict[str, list[str]], delta: dict[str, Tensor], lam: float,
                     lo: float, hi: float, calibration_loss: Callable, diagnostics: dict | None,
                     method: str) -> dict[str, float]:
    """Layer weights by coordinate descent on the calibration loss over {0, lo, (lo+hi)/2, hi}, from hi for
    every layer; every weight 0 (the pivot) when the best merge does not beat the pivot."""
    grid = sorted({0.0, lo, (lo + hi) / 2, hi})

    def loss_of(weights: dict[str, float], what: str) -> float:
        state = finalize(pivot, {k: apply_update(pivot[k], delta[k].clone(), lam * weights[layer])
                                 for layer, keys in layers.items() for k in keys})
        return _call_loss(calibration_loss, state, what, method)

    weights = {layer: hi for layer in layers}
    best = loss_of(weights, "the merged projector")
    trail = [{"weights": dict(weights), "loss": best}]
    for _ in range(SEARCH_SWEEPS):
        improved = False
        for layer in layers:
            for value in grid:
                if value == weights[layer]:
                    continue
                trial = {**weights, layer: value}
                loss = loss_of(trial, f"the merge with layer {layer!r} at weight {value}")
                if loss < best - 1e-9:
                    best, weights, improved = loss, trial, True
                    trail.append({"weights": dict(weights), "loss": best})
        if not improved:
            break
    pivot_loss = _call_loss(calibration_loss, dict(pivot), "the pivot", method)
    kept_pivot = best > pivot_loss
    if kept_pivot:
        weights = {layer: 0.0 for layer in layers}
    if diagnostics is not None:
        diagnostics["alm_search"] = {"grid": grid, "trail": trail, "pivot_loss": pivot_loss,
                                     "merged_loss": min(best, pivot_loss), "fell_back_to_pivot": kept_pivot}
    return weights


__all__ = ["ALM_MODES", "ALM_PROBES", "ALM_PROXIES", "data_scores", "layer_weights", "searched_weights"]
