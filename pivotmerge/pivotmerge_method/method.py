"""PivotMerge: Shared-space Decomposition and Filtering (SDF) + Alignment-guided Layer-wise Merging (ALM).

Our reading of the abstract of Shao et al. (arXiv 2604.22823); every choice is an option, and
docs/method.md gives the equations. Per projector layer l (parameters sharing the prefix before the
last '.', e.g. ``0.weight`` + ``0.bias``), with the K task vectors of the layer flattened and stacked
into S_l (K x D_l; the bias is simply more coordinates of its layer, so 1-D tensors need no special case):

SDF (``sdf=true``)
  * Decomposition: thin SVD  S = P diag(sigma) Q^T  via the K x K Gram matrix G = S S^T (exact, costs
    O(K^2 D); no D x D or m x m factorisation). The shared subspace is span(q_1..q_r), r chosen by
    ``rank_mode='ratio'`` (r = ceil(rank_ratio * numerical rank)) or ``'energy'`` (smallest r whose
    sum sigma_i^2 reaches the fraction ``energy``). Expert k's shared coordinates are
    c_{k,i} = P_{k,i} sigma_i; its shared part is sum_i c_{k,i} q_i and its domain-specific remainder
    rho_k = tau_k - shared part.
  * Filtering (``filter``): ``none`` -> shared coordinate = mean_k c_{k,i}; ``sign`` -> per shared
    direction elect sign(sum_k c_{k,i}) and average only the agreeing coordinates (disjoint mean), a
    direction whose agreement |sum_k c_{k,i}| / sum_k |c_{k,i}| is below ``filter_threshold`` is
    suppressed; ``cosine`` -> drop the shared part of every expert whose coordinate vector c_k has cosine
    < ``filter_threshold`` with the mean coordinate vector, average the rest.
    So the shared alignment is counted once (a mean), not K times (a sum).
  * Remainders: each rho_k trimmed per tensor to its top ``remainder_density`` fraction by magnitude
    (small-magnitude noise), then summed (domain-specific parts add, they are not averaged away).
  * Delta_l = sum_i cbar_i q_i + sum_k trim(rho_k).
  Without SDF (``sdf=false``): Delta_l = sum_k tau_k (Task Arithmetic's update; filter and
  remainder_density are then ignored).

ALM (``alm``)
  * ``off``: w_l = 1.
  * ``proxy`` (data-free): score s_l = agreement ||sum_k tau_k||^2 / (K sum_k ||tau_k||^2) in [0, 1]
    (``alm_proxy='agreement'``) or the shared-energy ratio (``'shared_energy'``).
  * ``data``: ``calibration_loss(state_dict) -> float`` (lower = better alignment) is evaluated on the
    merged projector with layer l's update removed (``alm_probe='remove'``: gain_l = L(without l) - L(all))
    or on the pivot with only layer l's update applied (``'apply'``: gain_l = L(pivot) - L(pivot + l));
    s_l = gain_l / max_l |gain_l|.
  * weights: w_l = lo + (hi - lo) * softmax(s / temperature)_l / max_l softmax(s / temperature)_l
    = lo + (hi - lo) * exp((s_l - max s) / temperature), with [lo, hi] = ``weight_range``.
  * ``search``: w_l measured, not scored, on ``calibration_loss`` (the experts' TRAIN rows in the pipeline):
    the best common weight of the grid {0, hi/16, hi/8, hi/4, hi/2, hi, lo}, then coordinate descent per
    layer over it; every w_l = 0 (the pivot) when no merge beats the pivot's calibration loss - the merge
    never does worse than its pivot there.
  * ``consensus='select'`` (feature space, with ``search``): the update of each reading of SELECT_READINGS
    (``curvature``, ``joint``) gets its common-weight search; the reading with the lowest of those losses is
    kept and only its layers are searched one by one. The choice is made per merge on the same TRAIN rows the
    layer weights are measured on (docs/method.md, v5).
theta_l = pivot_l + lam * w_l * Delta_l.

Reductions (tested): sdf=false, alm=off is exactly ``task_arithmetic`` with the same lam; sdf=true,
rank_ratio=1, filter=none, alm=off, lam=1 is weight averaging (up to float rounding).

Where each part lives: this module checks the options and puts the parts together (one layer at a time);
SDF in the task-vector space is sdf.py, SDF in the feature space (``sdf_space=features``)
sdf_features.py, ALM alm.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.calibration import check_stats
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.errors import MergeConfigError
from pivotmerge.merging.ops import (
    FlatTaskVectors,
    apply_update,
    compute_dtype,
    diag_layer,
    finalize,
    float_keys,
    group_layers,
    mean_task_vector,
    summed_task_vector,
)
from pivotmerge.merging.spec import Options, choice, flag, fraction, merge_method, number, weight_interval
from pivotmerge.pivotmerge_method.alm import (
    ALM_MODES,
    ALM_PROBES,
    ALM_PROXIES,
    data_scores,
    layer_weights,
    searched_weights,
    selected_search,
)
from pivotmerge.pivotmerge_method.sdf import FILTERS, RANK_MODES, layer_spectrum, shared_space_update
from pivotmerge.pivotmerge_method.sdf_features import CONSENSUS, LAYER_INPUTS, feature_space_deltas

NAME = "pivotmerge"
SDF_SPACES = ("task_vectors", "features")
# consensus=select: the readings it chooses between, on the layer search's TRAIN loss (docs/method.md, v5);
# each wins in one regime of the map (curvature: shared images, a trained pivot; joint: disjoint domains)
SELECT_READINGS = ("curvature", "joint")
CONSENSUS_CHOICES = (*CONSENSUS, "select")


def _check_across_options(method: str, o: Options) -> None:
    """The ranges that depend on another option's value (each option alone is checked by the spec)."""
    if o.filter == "sign" and not 0.0 <= o.filter_threshold <= 1.0:
        raise MergeConfigError(f"{method}: filter_threshold={o.filter_threshold} must be in [0, 1] for filter=sign")
    if o.filter == "cosine" and not -1.0 <= o.filter_threshold <= 1.0:
        raise MergeConfigError(f"{method}: filter_threshold={o.filter_threshold} must be in [-1, 1] for filter=cosine")
    if o.sdf_space == "features" and o.consensus != "energy_mean" and o.filter == "sign":
        raise MergeConfigError(f"{method}: filter=sign is a per-expert vote, defined for consensus=energy_mean only; "
                               f"use filter=cosine or none with consensus={o.consensus}")
    if o.consensus == "select" and _needs_statistics(o) and o.alm != "search":
        raise MergeConfigError(f"{method}: consensus=select chooses its reading on the layer search's calibration "
                               f"loss; it needs alm=search (got alm={o.alm}) - or name one reading: "
                               f"{' | '.join(SELECT_READINGS)}")


def _needs_statistics(o: Options) -> bool:
    return o.sdf and o.sdf_space == "features"


def _needs_fisher(o: Options) -> bool:
    return _needs_statistics(o) and (o.consensus.startswith("curvature") or
                                     (o.consensus == "select" and any(r.startswith("curvature")
                                                                      for r in SELECT_READINGS)))


def _needs_calibration_loss(o: Options) -> bool:
    return o.alm in ("data", "search")


@merge_method(
    NAME,
    options={"sdf": flag(), "sdf_space": choice(SDF_SPACES), "shared_threshold": number(0.0),
             "consensus": choice(CONSENSUS_CHOICES), "alpha": fraction(), "layer_inputs": choice(LAYER_INPUTS),
             "rank_mode": choice(RANK_MODES), "rank_ratio": fraction(), "energy": fraction(),
             "filter": choice(FILTERS), "filter_threshold": number(), "remainder_density": fraction(),
             "alm": choice(ALM_MODES), "alm_proxy": choice(ALM_PROXIES), "alm_probe": choice(ALM_PROBES),
             "temperature": number(0.0, exclusive=True), "weight_range": weight_interval(), "lam": number()},
    scale="lam", one_expert={}, identical="mean", cli={"alm": "proxy", "consensus": "curvature"},
    statistics=_needs_statistics, fisher=_needs_fisher, calibration_loss=_needs_calibration_loss,
    check=_check_across_options)
def pivotmerge_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    calibration_loss: Callable[[dict[str, Tensor]], float] | None = None,
    calibration: Sequence | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """PivotMerge (see the module docstring and docs/method.md for the equations and each option)."""
    if _needs_calibration_loss(o) and calibration_loss is None:
        raise MergeConfigError(
            f"{NAME}: alm={o.alm} needs a calibration_loss (a function state_dict -> loss on a calibration "
            "batch, supplied by the pipeline); use alm=proxy for the data-free variant"
        )
    if calibration_loss is not None and not callable(calibration_loss):
        raise MergeConfigError(f"{NAME}: calibration_loss must be callable")
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = None
    if _needs_statistics(o):
        stats = check_stats(calibration, len(experts), f"{NAME} (sdf_space=features)",
                            inputs=o.layer_inputs == "merged", fisher=_needs_fisher(o))
    layers = group_layers(float_keys(pivot))
    if stats is not None and o.consensus == "select":
        delta, weights = _selected_reading(pivot, experts, layers, o, stats, calibration_loss, diagnostics)
        scores = dict(weights)
    else:
        delta, proxy_scores = _deltas(pivot, experts, layers, o, stats, diagnostics)
        weights, scores = _alm_weights(o, pivot, layers, delta, proxy_scores, calibration_loss, diagnostics)
    merged = {}
    for layer, keys in layers.items():
        diag_layer(diagnostics, layer).update(layer_weight=weights[layer], alm_score=scores.get(layer))
        for key in keys:
            merged[key] = apply_update(pivot[key], delta.pop(key), o.lam * weights[layer])
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o), layer_weights=dict(weights))
    return finalize(pivot, merged)


def _deltas(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], layers: dict[str, list[str]],
            o: Options, stats: list | None, diagnostics: dict | None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """SDF: the merged update Delta per key (compute dtype), and the data-free ALM score of each layer."""
    feature_deltas = feature_space_deltas(
        pivot, experts, stats, shared_threshold=o.shared_threshold, consensus=o.consensus, filter_mode=o.filter,
        filter_threshold=o.filter_threshold, alpha=o.alpha, layer_inputs=o.layer_inputs,
        diagnostics=diagnostics) if stats is not None else {}
    delta: dict[str, Tensor] = {}
    proxy_scores: dict[str, float] = {}
    for layer, keys in layers.items():
        rec = diag_layer(diagnostics, layer)
        views = [FlatTaskVectors(pivot, experts, key) for key in keys]
        spectrum = layer_spectrum(views, o.rank_mode, o.rank_ratio, o.energy)
        proxy_scores[layer] = spectrum.agreement if o.alm_proxy == "agreement" else spectrum.shared_energy
        rec.update(spectrum.record())
        if not o.sdf:   # Task Arithmetic's update
            for key in keys:
                delta[key] = summed_task_vector(pivot, experts, key)
        elif stats is not None:   # feature space: the Linear layers' updates; the rest averaged
            for key in keys:
                delta[key] = feature_deltas.pop(key).to(compute_dtype(pivot[key].dtype)) if key in feature_deltas \
                    else mean_task_vector(pivot, experts, key)
        else:
            delta.update(shared_space_update(views, spectrum, o.filter, o.filter_threshold, o.remainder_density,
                                             rec))
    return delta, proxy_scores


def _selected_reading(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]],
                      layers: dict[str, list[str]], o: Options, stats: list, calibration_loss: Callable,
                      diagnostics: dict | None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """consensus=select: the update of every reading of SELECT_READINGS, one layer search over them (each
    reading's common weights, then the layers of the one with the lowest loss): its update and layer weights."""
    updates = {reading: _deltas(pivot, experts, layers, Options({**o, "consensus": reading}), stats,
                                diagnostics)[0] for reading in SELECT_READINGS}
    lo, hi = o.weight_range
    chosen, weights = selected_search(pivot, layers, updates, o.lam, lo, hi, calibration_loss, diagnostics, NAME)
    if diagnostics is not None:
        diagnostics["consensus_selected"] = chosen
    return updates[chosen], weights


def _alm_weights(o: Options, pivot: Mapping[str, Tensor], layers: dict[str, list[str]], delta: dict[str, Tensor],
                 proxy_scores: dict[str, float], calibration_loss: Callable | None,
                 diagnostics: dict | None) -> tuple[dict[str, float], dict[str, float]]:
    """ALM: the weight of each layer's update, and the scores they come from (none for alm=off)."""
    if o.alm == "off":
        return {layer: 1.0 for layer in layers}, {}
    lo, hi = o.weight_range
    if o.alm == "search":
        weights = searched_weights(pivot, layers, delta, o.lam, lo, hi, calibration_loss, diagnostics, NAME)
        return weights, dict(weights)
    if o.alm == "proxy":
        scores = proxy_scores
    else:
        scores = data_scores(pivot, layers, delta, o.lam, o.alm_probe, calibration_loss, diagnostics, NAME)
    return layer_weights(scores, o.temperature, lo, hi), scores


__all__ = ["pivotmerge_merge"]
