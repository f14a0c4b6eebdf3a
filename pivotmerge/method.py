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
theta_l = pivot_l + lam * w_l * Delta_l.

Reductions (tested): sdf=false, alm=off is exactly ``task_arithmetic`` with the same lam; sdf=true,
rank_ratio=1, filter=none, alm=off, lam=1 is weight averaging (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pivotmerge.merging.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_number,
    validate_inputs,
)
from pivotmerge.merging.errors import MergeConfigError, MergeInputError
from pivotmerge.merging.ops import (
    FlatTaskVectors,
    apply_update,
    chunks,
    compute_dtype,
    diag_layer,
    finalize,
    float_keys,
    group_layers,
    kth_largest_1d,
    mean_task_vector,
    summed_task_vector,
)
from pivotmerge.merging.registry import contract

NAME = "pivotmerge"
SDF_SPACES = ("task_vectors", "features")
LAYER_INPUTS = ("merged", "own")
RANK_MODES = ("ratio", "energy")
FILTERS = ("none", "sign", "cosine")
ALM_MODES = ("off", "data", "proxy")
ALM_PROXIES = ("agreement", "shared_energy")
ALM_PROBES = ("remove", "apply")
_CHUNK = 1 << 20  # columns per float64 Gram chunk
_RANK_TOL = 1e-6  # relative singular-value tolerance of the numerical rank


def _gram(views: Sequence[FlatTaskVectors]) -> Tensor:
    """G = S S^T (K x K) of the layer's stacked task vectors: per-chunk GEMMs in the compute dtype,
    accumulated in float64 (the task vectors are themselves rounded to the compute dtype, so a float64
    GEMM would not add information)."""
    k = views[0].k
    g = torch.zeros(k, k, dtype=torch.float64)
    for v in views:
        for c0, c1 in chunks(v.numel):
            c = v.chunk(c0, c1)
            g += (c @ c.T).double()
    return g


def _layer_update(view: FlatTaskVectors, coef: Tensor, m: Tensor | None, density: float) -> Tensor:
    """coef^T tau (+ sum_k trim(rho_k) with rho = m tau, trimmed per row to ``density``) for one tensor."""
    dt = view.dtype
    coef = coef.to(dt).unsqueeze(0)
    upd = torch.empty(view.numel, dtype=dt)
    rho = None if m is None else torch.empty(view.k, view.numel, dtype=dt)
    m_dt = None if m is None else m.to(dt)
    for c0, c1 in chunks(view.numel):
        tau = view.chunk(c0, c1)
        torch.matmul(coef, tau, out=upd[c0:c1].unsqueeze(0))
        if rho is not None:
            torch.matmul(m_dt, tau, out=rho[:, c0:c1])
    if rho is not None:
        kk = int(density * view.numel)
        # one expert row at a time (threads would save little on 2 cores and cost a row of memory each)
        thr = torch.stack([kth_largest_1d(rho[i].abs(), kk) for i in range(view.k)]).reshape(-1, 1)
        for c0, c1 in chunks(view.numel):
            r = rho[:, c0:c1]
            r.mul_(r.abs() >= thr)
            upd[c0:c1] += r.sum(0)
        del rho
    return upd.reshape(view.shape)


def _spectrum(g: Tensor) -> tuple[Tensor, Tensor, int]:
    """(P, sigma, numerical rank) of S from its Gram matrix, singular values in descending order."""
    evals, evecs = torch.linalg.eigh(g)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma = evals.clamp(min=0).sqrt()
    rank = int((sigma > sigma[0] * _RANK_TOL).sum()) if sigma[0] > 0 else 0
    return evecs, sigma, rank


def _shared_rank(sigma: Tensor, rank: int, rank_mode: str, rank_ratio: float, energy: float) -> int:
    if rank == 0:
        return 0
    if rank_mode == "ratio":
        return min(rank, math.ceil(rank_ratio * rank - 1e-9))
    e = (sigma[:rank] ** 2).cumsum(0)
    e = e / e[-1]
    if energy <= 0:
        return 0
    return min(rank, int((e < energy - 1e-12).sum()) + 1)


def _filter_shared(c: Tensor, mode: str, threshold: float, rec: dict) -> Tensor:
    """Merged shared coordinates cbar (r,) from the experts' coordinates c (K x r)."""
    if c.shape[1] == 0:
        return c.new_zeros(0)
    if mode == "none":
        return c.mean(0)
    if mode == "sign":
        vote = c.sum(0)
        agree = torch.where(vote >= 0, c > 0, c < 0)
        cbar = (c * agree).sum(0) / agree.sum(0).clamp(min=1)
        agreement = vote.abs() / c.abs().sum(0).clamp(min=torch.finfo(c.dtype).tiny)
        suppressed = agreement < threshold
        cbar = torch.where(suppressed, torch.zeros_like(cbar), cbar)
        rec["shared_direction_agreement"] = agreement.tolist()
        rec["shared_directions_suppressed"] = int(suppressed.sum())
        rec["shared_coords_dropped_fraction"] = float(1 - agree.double().mean())
        return cbar
    # cosine: expert-level agreement with the consensus coordinate vector
    m = c.mean(0)
    cos = (c @ m) / (c.norm(dim=1) * m.norm()).clamp(min=torch.finfo(c.dtype).tiny)
    keep = cos >= threshold
    rec["expert_cosine_to_consensus"] = cos.tolist()
    rec["experts_kept_in_shared"] = int(keep.sum())
    return c[keep].mean(0) if bool(keep.any()) else torch.zeros_like(m)


def _layer_weights(scores: dict[str, float], temperature: float, lo: float, hi: float) -> dict[str, float]:
    if not scores:
        return {}
    s = torch.tensor(list(scores.values()), dtype=torch.float64)
    p = torch.softmax(s / temperature, 0)
    w = lo + (hi - lo) * p / p.max()
    return dict(zip(scores, w.tolist()))


def _call_loss(calibration_loss: Callable, sd: dict[str, Tensor], what: str) -> float:
    value = calibration_loss(sd)
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise MergeInputError(f"{NAME}: calibration_loss returned {value!r} for {what}, expected a float") from e
    if not math.isfinite(value):
        raise MergeInputError(f"{NAME}: calibration_loss returned {value} for {what}")
    return value


@contract(scale="lam", one_expert={}, identical="mean")
def pivotmerge_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    sdf: bool,
    sdf_space: str,
    shared_threshold: float,
    alpha: float,
    layer_inputs: str,
    rank_mode: str,
    rank_ratio: float,
    energy: float,
    filter: str,  # noqa: A002 - option name of the config
    filter_threshold: float,
    remainder_density: float,
    alm: str,
    alm_proxy: str,
    alm_probe: str,
    temperature: float,
    weight_range: Sequence[float],
    lam: float,
    calibration_loss: Callable[[dict[str, Tensor]], float] | None = None,
    calibration: Sequence | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """PivotMerge (see the module docstring and docs/method.md for the equations and each option)."""
    sdf = check_bool(NAME, "sdf", sdf)
    sdf_space = check_choice(NAME, "sdf_space", sdf_space, SDF_SPACES)
    shared_threshold = check_number(NAME, "shared_threshold", shared_threshold, minimum=0.0)
    alpha = check_fraction(NAME, "alpha", alpha)
    layer_inputs = check_choice(NAME, "layer_inputs", layer_inputs, LAYER_INPUTS)
    rank_mode = check_choice(NAME, "rank_mode", rank_mode, RANK_MODES)
    rank_ratio = check_fraction(NAME, "rank_ratio", rank_ratio)
    energy = check_fraction(NAME, "energy", energy)
    filter_mode = check_choice(NAME, "filter", filter, FILTERS)
    filter_threshold = check_number(NAME, "filter_threshold", filter_threshold)
    if filter_mode == "sign" and not 0.0 <= filter_threshold <= 1.0:
        raise MergeConfigError(f"{NAME}: filter_threshold={filter_threshold} must be in [0, 1] for filter=sign")
    if filter_mode == "cosine" and not -1.0 <= filter_threshold <= 1.0:
        raise MergeConfigError(f"{NAME}: filter_threshold={filter_threshold} must be in [-1, 1] for filter=cosine")
    remainder_density = check_fraction(NAME, "remainder_density", remainder_density)
    alm = check_choice(NAME, "alm", alm, ALM_MODES)
    alm_proxy = check_choice(NAME, "alm_proxy", alm_proxy, ALM_PROXIES)
    alm_probe = check_choice(NAME, "alm_probe", alm_probe, ALM_PROBES)
    temperature = check_number(NAME, "temperature", temperature, minimum=0.0, exclusive_minimum=True)
    try:
        lo, hi = (float(x) for x in weight_range)
    except (TypeError, ValueError) as e:
        raise MergeConfigError(f"{NAME}: weight_range must be two numbers [lo, hi], got {weight_range!r}") from e
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
        raise MergeConfigError(f"{NAME}: weight_range={[lo, hi]} must satisfy 0 <= lo <= hi")
    lam = check_number(NAME, "lam", lam)
    if alm == "data" and calibration_loss is None:
        raise MergeConfigError(
            f"{NAME}: alm=data needs a calibration_loss (a function state_dict -> loss on a calibration "
            "batch, supplied by the pipeline); use alm=proxy for the data-free variant"
        )
    if calibration_loss is not None and not callable(calibration_loss):
        raise MergeConfigError(f"{NAME}: calibration_loss must be callable")
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = None
    if sdf and sdf_space == "features":
        from pivotmerge.merging.calibration import check_stats

        stats = check_stats(calibration, len(experts), f"{NAME} (sdf_space=features)",
                            inputs=layer_inputs == "merged")

    n_exp = len(experts)
    feature_deltas = _feature_space_deltas(
        pivot, experts, stats, shared_threshold=shared_threshold, filter_mode=filter_mode,
        filter_threshold=filter_threshold, alpha=alpha, layer_inputs=layer_inputs,
        diagnostics=diagnostics) if stats is not None else {}
    layers = group_layers(float_keys(pivot))
    delta: dict[str, Tensor] = {}
    proxy_scores: dict[str, float] = {}
    for layer, keys in layers.items():
        rec = diag_layer(diagnostics, layer)
        views = [FlatTaskVectors(pivot, experts, key) for key in keys]
        g = _gram(views)
        p_mat, sigma, rank = _spectrum(g)
        r = _shared_rank(sigma, rank, rank_mode, rank_ratio, energy)
        energy_total = float((sigma**2).sum())
        shared_energy = float((sigma[:r] ** 2).sum()) / energy_total if energy_total > 0 else 0.0
        agreement = float(g.sum() / (n_exp * g.trace())) if float(g.trace()) > 0 else 0.0
        proxy_scores[layer] = agreement if alm_proxy == "agreement" else shared_energy
        rec.update(
            stack_singular_values=sigma.tolist(),
            numerical_rank=rank,
            shared_rank=r,
            shared_energy_ratio=shared_energy,
            agreement=agreement,
        )
        if not sdf:
            for key in keys:
                delta[key] = summed_task_vector(pivot, experts, key)
            continue
        if stats is not None:
            for key in keys:
                delta[key] = feature_deltas.pop(key).to(compute_dtype(pivot[key].dtype)) if key in feature_deltas \
                    else mean_task_vector(pivot, experts, key)
            continue
        # coefficient vectors over experts: shared update = a^T S, remainders rho = M S
        p_r, s_r = p_mat[:, :r], sigma[:r]
        cbar = _filter_shared(p_r * s_r, filter_mode, filter_threshold, rec)
        a = p_r @ (cbar / s_r) if r > 0 else torch.zeros(n_exp, dtype=torch.float64)
        has_remainder = r < rank
        m = torch.eye(n_exp, dtype=torch.float64) - p_r @ p_r.T
        trim = has_remainder and remainder_density < 1.0
        v_coef = a + (m.sum(0) if has_remainder and not trim else 0.0)
        for view in views:
            delta[view.key] = _layer_update(view, v_coef, m if trim else None, remainder_density)

    # ---- ALM
    if alm == "off":
        weights = {layer: 1.0 for layer in layers}
        scores: dict[str, float] = {}
    else:
        if alm == "proxy":
            scores = proxy_scores
        else:
            scores = _data_scores(pivot, layers, delta, lam, alm_probe, calibration_loss, diagnostics)
        weights = _layer_weights(scores, temperature, lo, hi)
    merged = {}
    for layer, keys in layers.items():
        diag_layer(diagnostics, layer).update(layer_weight=weights[layer], alm_score=scores.get(layer))
        for key in keys:
            merged[key] = apply_update(pivot[key], delta.pop(key), lam * weights[layer])
    if diagnostics is not None:
        diagnostics.update(
            method=NAME,
            options=dict(
                sdf=sdf, sdf_space=sdf_space, shared_threshold=shared_threshold, alpha=alpha,
                layer_inputs=layer_inputs, rank_mode=rank_mode, rank_ratio=rank_ratio, energy=energy,
                filter=filter_mode,
                filter_threshold=filter_threshold, remainder_density=remainder_density, alm=alm,
                alm_proxy=alm_proxy, alm_probe=alm_probe, temperature=temperature, weight_range=[lo, hi], lam=lam,
            ),
            layer_weights=dict(weights),
        )
    return finalize(pivot, merged)


# ---- SDF in the feature space: where each domain's inputs live ------------------------------------------
def _feature_space_deltas(pivot, experts, stats, *, shared_threshold: float, filter_mode: str,
                          filter_threshold: float, alpha: float, layer_inputs: str,
                          diagnostics: dict | None) -> dict[str, Tensor]:
    """Per-key merged updates from the experts' own-domain input statistics (see docs/method.md):

    per Linear layer, with each domain's input Gram G_k and Ghat_k = G_k / tr G_k, the eigenvectors u_i of
    sum_k Ghat_k and each domain's energy e_ki = u_i^T Ghat_k u_i along them, direction i is SHARED when its
    normalised participation (sum_k e_ki)^2 / (K sum_k e_ki^2), rescaled from [1/K, 1] to [0, 1], reaches
    `shared_threshold`. Each task matrix splits into its action on the shared subspace and the rest:
    tau_k = tau_k P_S + rho_k. On a shared direction the experts' output changes v_ki = tau_k u_i are merged
    into one consensus (energy-weighted mean; `filter` suppresses conflicts: `sign` - per output coordinate only
    the experts agreeing with the elected sign; `cosine` - the direction is dropped when the agreement
    ||sum_k e_ki v_ki|| / sum_k e_ki ||v_ki|| is below `filter_threshold`). The domain-specific remainders are
    merged by least squares on the domains' inputs (RegMean, Grams shrunk by `alpha`):
        Delta = sum_{i in S} vbar_i u_i^T + (sum_k rho_k G_k') (sum_k G_k')^+.
    No shared direction (threshold > 1) is RegMean; one expert gives its own task matrix.
    `layer_inputs='merged'`: a later layer's Grams come from the domains' inputs pushed through the merged
    earlier layers (as RegMean++), `'own'`: through each expert's own layers (as RegMean)."""
    from pivotmerge.merging.calibration import (
        apply_layer,
        augmented_gram,
        augmented_task_matrix,
        layer_gram,
        layer_keys,
        linear_layers,
        regmean_solve,
        shrink,
        split_update,
    )

    k = len(experts)
    deltas: dict[str, Tensor] = {}
    activations = [s.inputs.double() for s in stats] if layer_inputs == "merged" else None
    layers = linear_layers(pivot)
    for index, layer in enumerate(layers):
        has_bias = layer_keys(layer)[1] in pivot
        if index > 0 and layer_inputs == "merged":
            grams = [augmented_gram(x) if has_bias else augmented_gram(x)[:-1, :-1] for x in activations]
        else:
            grams = [layer_gram(s, pivot, layer) for s in stats]
        taus = [augmented_task_matrix(pivot, e, layer) for e in experts]
        normalised = [g / torch.trace(g).clamp_min(1e-300) for g in grams]
        evals, evecs = torch.linalg.eigh(sum(normalised))
        energies = torch.stack([torch.einsum("di,de,ei->i", evecs, g, evecs) for g in normalised])   # [K, D]
        total = energies.sum(0)
        if k == 1:
            sharedness = torch.ones_like(total)
        else:
            participation = total ** 2 / (k * (energies ** 2).sum(0)).clamp_min(1e-300)
            sharedness = ((participation - 1 / k) / (1 - 1 / k)).clamp(0, 1)
        shared = sharedness >= shared_threshold - 1e-12
        u = evecs[:, shared]                                           # [D, r]
        weights = energies[:, shared].clamp_min(0)                     # [K, r]
        v = torch.stack([tau @ u for tau in taus])                     # [K, out, r]
        consensus, suppressed = _filter_features(v, weights, filter_mode, filter_threshold)
        shared_update = consensus @ u.T
        remainders = [tau - (tau @ u) @ u.T for tau in taus]
        specific = regmean_solve(remainders, [shrink(g, alpha) for g in grams]) if int(shared.sum()) < len(total) \
            else torch.zeros_like(shared_update)
        delta = shared_update + specific
        deltas.update(split_update(pivot, layer, delta))
        rec = diag_layer(diagnostics, layer or "linear")
        rec.update(shared_directions=int(shared.sum()), input_dims=int(len(total)),
                   shared_energy_fraction=float(total[shared].sum() / total.sum().clamp_min(1e-300)),
                   shared_directions_suppressed=suppressed,
                   mean_sharedness=float((sharedness * total).sum() / total.sum().clamp_min(1e-300)))
        if activations is not None and index + 1 < len(layers):
            current = {key: pivot[key].double() + deltas[key] for key in layer_keys(layer) if key in deltas}
            activations = [torch.nn.functional.gelu(apply_layer(current, layer, x)) for x in activations]
    return deltas


def _filter_features(v: Tensor, weights: Tensor, mode: str, threshold: float) -> tuple[Tensor, int]:
    """Consensus output change per shared direction [out, r] from the experts' [K, out, r] and their domain
    energies [K, r]; and how many directions were suppressed."""
    w = weights.unsqueeze(1)                                           # [K, 1, r]
    weighted = (w * v).sum(0)
    mean = weighted / weights.sum(0).clamp_min(1e-300)
    if mode == "none":
        return mean, 0
    if mode == "sign":
        elected = torch.where(weighted >= 0, 1.0, -1.0).to(v.dtype)
        agree = (v * elected > 0).to(v.dtype) * w
        return (agree * v).sum(0) / agree.sum(0).clamp_min(1e-300), 0
    agreement = weighted.norm(dim=0) / (w * v).norm(dim=1).sum(0).clamp_min(1e-300)   # cosine mode
    keep = agreement >= threshold
    return mean * keep.to(v.dtype), int((~keep).sum())


def _data_scores(
    pivot: Mapping[str, Tensor],
    layers: dict[str, list[str]],
    delta: dict[str, Tensor],
    lam: float,
    probe: str,
    calibration_loss: Callable,
    diagnostics: dict | None,
) -> dict[str, float]:
    """Per-layer loss gains of the merged update, normalised to [-1, 1] by the largest |gain|."""
    full = finalize(pivot, {k: apply_update(pivot[k], d, lam) for k, d in delta.items()})
    gains: dict[str, float] = {}
    if probe == "remove":
        base = _call_loss(calibration_loss, full, "the merged projector")
        for layer, keys in layers.items():
            sd = dict(full)
            for k in keys:
                sd[k] = pivot[k]
            loss = _call_loss(calibration_loss, sd, f"the merged projector without layer {layer!r}")
            gains[layer] = loss - base
            diag_layer(diagnostics, layer).update(alm_loss_probe=loss, alm_loss_reference=base)
    else:
        base = _call_loss(calibration_loss, dict(pivot), "the pivot")
        for layer, keys in layers.items():
            sd = dict(pivot)
            for k in keys:
                sd[k] = full[k]
            loss = _call_loss(calibration_loss, sd, f"the pivot with layer {layer!r} merged")
            gains[layer] = base - loss
            diag_layer(diagnostics, layer).update(alm_loss_probe=loss, alm_loss_reference=base)
    scale = max((abs(x) for x in gains.values()), default=0.0)
    for layer, gain in gains.items():
        diag_layer(diagnostics, layer)["alm_loss_gain"] = gain
    return {layer: (gain / scale if scale > 0 else 0.0) for layer, gain in gains.items()}


__all__: list[Any] = ["pivotmerge_merge"]
