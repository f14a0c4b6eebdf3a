"""PivotMerge's Alignment-guided Layer-wise Merging (ALM): one weight per layer for its merged update.

A score s_l per layer - data-free proxies (computed with the decomposition, pivotmerge/sdf.py) or the
calibration loss gain of the layer's update (:func:`data_scores`) - becomes the weight
w_l = lo + (hi - lo) * exp((s_l - max s) / temperature) (:func:`layer_weights`). pivotmerge/method.py's
docstring and docs/method.md give the equations.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from pivotmerge.merging.errors import MergeInputError
from pivotmerge.merging.ops import apply_update, diag_layer, finalize

ALM_MODES = ("off", "data", "proxy")
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


__all__ = ["ALM_MODES", "ALM_PROBES", "ALM_PROXIES", "data_scores", "layer_weights"]
