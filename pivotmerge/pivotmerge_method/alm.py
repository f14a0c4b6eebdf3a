"""PivotMerge's Alignment-guided Layer-wise Merging (ALM): one weight per layer for its merged update.

A score s_l per layer - data-free proxies (computed with the decomposition, sdf.py) or the
calibration loss gain of the layer's update (:func:`data_scores`) - becomes the weight
w_l = lo + (hi - lo) * exp((s_l - max s) / temperature) (:func:`layer_weights`). Or the weights are measured
directly (``alm='search'``, :func:`searched_weights`): the best common weight among {0, hi/16, hi/8, hi/4,
hi/2, hi, lo}, then per layer by coordinate descent over the same grid, all by the calibration loss; the
pivot itself (every weight 0) when no merge beats it - never worse than its pivot on the calibration rows.
method.py's docstring and docs/method.md give the equations.
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


def search_grid(lo: float, hi: float) -> list[float]:
    """The candidate weights of ``alm='search'``: 0 (the pivot), halvings of hi down to hi/16 (a merge that
    helps only in small steps, as on shared inputs with a strong pivot), and lo."""
    return sorted({0.0, lo, *(hi / 2 ** j for j in range(5))})


def searched_weights(pivot: Mapping[str, Tensor], layers: dict[str, list[str]], delta: dict[str, Tensor], lam: float,
                     lo: float, hi: float, calibration_loss: Callable, diagnostics: dict | None,
                     method: str) -> dict[str, float]:
    """Layer weights from the calibration loss: the best common weight of the grid (`search_grid`), then
    coordinate descent layer by layer over the grid. The grid holds 0 (the pivot itself) and every step only
    lowers the loss, so the result is never worse than the pivot on the calibration rows."""
    grid = search_grid(lo, hi)
    seen: dict[tuple[float, ...], float] = {}   # a later sweep revisits weightings; each costs a loss pass

    def loss_of(weights: dict[str, float], what: str) -> float:
        point = tuple(weights[layer] for layer in layers)
        if point not in seen:
            state = finalize(pivot, {k: apply_update(pivot[k], delta[k].clone(), lam * weights[layer])
                                     for layer, keys in layers.items() for k in keys})
            seen[point] = _call_loss(calibration_loss, state, what, method)
        return seen[point]

    common = {value: loss_of({layer: value for layer in layers}, f"the merge at weight {value}") for value in grid}
    start = min(common, key=common.get)
    weights, best = {layer: start for layer in layers}, common[start]
    trail = [{"weights": dict(weights), "loss": best}]
    for _ in range(SEARCH_SWEEPS if len(layers) > 1 else 0):
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
    if diagnostics is not None:
        diagnostics["alm_search"] = {"grid": grid, "common": {str(k): v for k, v in common.items()}, "trail": trail,
                                     "pivot_loss": common[0.0], "merged_loss": best,
                                     "kept_pivot": all(w == 0.0 for w in weights.values())}
    return weights


__all__ = ["ALM_MODES", "ALM_PROBES", "ALM_PROXIES", "data_scores", "layer_weights", "searched_weights"]
