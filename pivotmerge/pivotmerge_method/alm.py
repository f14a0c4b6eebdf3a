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


class LayerSearch:
    """``alm='search'`` over one merged update: :meth:`common` tries the best common weight of the grid
    (`search_grid`), :meth:`descend` then moves layer by layer over the grid. The grid holds 0 (the pivot
    itself) and every step only lowers the loss, so the result is never worse than the pivot on the
    calibration rows. A loss with an ``accepts(state)`` test (`pipeline/merge.py: guarded_loss`) has the last
    word on the end point: refused, the search returns the pivot. ``pivot_loss``: the loss of the pivot when
    already known (it is the same state whatever the update), saving a pass."""

    def __init__(self, pivot: Mapping[str, Tensor], layers: dict[str, list[str]], delta: dict[str, Tensor],
                 lam: float, lo: float, hi: float, calibration_loss: Callable, method: str,
                 pivot_loss: float | None = None):
        self.pivot, self.layers, self.delta, self.lam = pivot, layers, delta, lam
        self.grid = search_grid(lo, hi)
        self.calibration_loss, self.method = calibration_loss, method
        # a later sweep revisits weightings; each costs a loss pass
        self.seen: dict[tuple[float, ...], float] = {}
        if pivot_loss is not None:
            self.seen[tuple(0.0 for _ in layers)] = pivot_loss
        self.common_losses: dict[float, float] = {}

    def state_of(self, weights: dict[str, float]) -> dict[str, Tensor]:
        return finalize(self.pivot, {k: apply_update(self.pivot[k], self.delta[k].clone(), self.lam * weights[layer])
                                     for layer, keys in self.layers.items() for k in keys})

    def loss_of(self, weights: dict[str, float], what: str) -> float:
        point = tuple(weights[layer] for layer in self.layers)
        if point not in self.seen:
            self.seen[point] = _call_loss(self.calibration_loss, self.state_of(weights), what, self.method)
        return self.seen[point]

    def common(self) -> float:
        """The loss at every common weight of the grid; returns the best of them."""
        self.common_losses = {value: self.loss_of({layer: value for layer in self.layers},
                                                  f"the merge at weight {value}") for value in self.grid}
        return min(self.common_losses.values())

    @property
    def pivot_loss(self) -> float:
        return self.seen[tuple(0.0 for _ in self.layers)]

    def descend(self) -> tuple[dict[str, float], dict]:
        """Coordinate descent from the best common weight: the layer weights and the search's record."""
        if not self.common_losses:
            self.common()
        start = min(self.common_losses, key=self.common_losses.get)
        weights, best = {layer: start for layer in self.layers}, self.common_losses[start]
        trail = [{"weights": dict(weights), "loss": best}]
        for _ in range(SEARCH_SWEEPS if len(self.layers) > 1 else 0):
            improved = False
            for layer in self.layers:
                for value in self.grid:
                    if value == weights[layer]:
                        continue
                    trial = {**weights, layer: value}
                    loss = self.loss_of(trial, f"the merge with layer {layer!r} at weight {value}")
                    if loss < best - 1e-9:
                        best, weights, improved = loss, trial, True
                        trail.append({"weights": dict(weights), "loss": best})
            if not improved:
                break
        record = {"grid": self.grid, "common": {str(k): v for k, v in self.common_losses.items()}, "trail": trail}
        accepts = getattr(self.calibration_loss, "accepts", None)
        if accepts is not None and any(w != 0.0 for w in weights.values()):
            # the loss's own test of the end point against the pivot (e.g. a gain beyond the rows' noise)
            if not accepts(self.state_of(weights)):
                record["refused"] = {"weights": dict(weights), "loss": best, **getattr(accepts, "last", {})}
                weights, best = {layer: 0.0 for layer in self.layers}, self.pivot_loss
        record.update({"pivot_loss": self.pivot_loss, "merged_loss": best,
                       "kept_pivot": all(w == 0.0 for w in weights.values())})
        return weights, record


def searched_weights(pivot: Mapping[str, Tensor], layers: dict[str, list[str]], delta: dict[str, Tensor], lam: float,
                     lo: float, hi: float, calibration_loss: Callable, diagnostics: dict | None,
                     method: str) -> dict[str, float]:
    """Layer weights measured on the calibration loss (:class:`LayerSearch`); never worse than the pivot there."""
    weights, record = LayerSearch(pivot, layers, delta, lam, lo, hi, calibration_loss, method).descend()
    if diagnostics is not None:
        diagnostics["alm_search"] = record
    return weights


def selected_search(pivot: Mapping[str, Tensor], layers: dict[str, list[str]], updates: Mapping[str, dict],
                    lam: float, lo: float, hi: float, calibration_loss: Callable, diagnostics: dict | None,
                    method: str) -> tuple[str, dict[str, float]]:
    """Several merged updates (name -> per-key update), one search: each update's common weights are tried
    (the pivot's loss, the same state for all, measured once), the update with the lowest of those losses is
    kept (the first one on a tie), and only its layers are then searched one by one. Returns its name and its
    layer weights."""
    searches: dict[str, LayerSearch] = {}
    pivot_loss = None
    for name, delta in updates.items():
        search = LayerSearch(pivot, layers, delta, lam, lo, hi, calibration_loss, method, pivot_loss)
        search.common()
        pivot_loss = search.pivot_loss
        searches[name] = search
    best_common = {name: min(search.common_losses.values()) for name, search in searches.items()}
    chosen = min(best_common, key=best_common.get)
    weights, record = searches[chosen].descend()
    if diagnostics is not None:
        diagnostics["alm_search"] = {**record, "selected": chosen, "best_common_loss": best_common}
    return chosen, weights


__all__ = ["ALM_MODES", "ALM_PROBES", "ALM_PROXIES", "LayerSearch", "data_scores", "layer_weights", "searched_weights",
           "selected_search"]
