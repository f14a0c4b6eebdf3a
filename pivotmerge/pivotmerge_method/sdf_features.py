"""PivotMerge's SDF in the feature space (``sdf_space=features``): shared directions are where the domains'
inputs live, read from each expert's own-domain input statistics (see docs/method.md).

Per Linear layer, with each domain's input Gram G_k and Ghat_k = G_k / tr G_k, the eigenvectors u_i of
sum_k Ghat_k and each domain's energy e_ki = u_i^T Ghat_k u_i along them, direction i is SHARED when its
normalised participation (sum_k e_ki)^2 / (K sum_k e_ki^2), rescaled from [1/K, 1] to [0, 1], reaches
``shared_threshold``. Each task matrix splits into its action on the shared subspace and the rest:
tau_k = tau_k P_S + rho_k. On the shared directions the experts' output changes V_k = tau_k U_S are merged
into one consensus Vbar, by ``consensus``: ``energy_mean`` - per direction, the mean of the v_ki weighted by the
domains' energies e_ki (a diagonal approximation); ``least_squares`` - the block least squares on the shared
subspace, Vbar = (sum_k V_k H_k)(sum_k H_k)^+ with H_k = U_S^T G_k' U_S (it accounts for how each domain's
inputs correlate across shared directions); ``joint`` - no separate consensus: one least squares over the
whole input space (RegMean) fits every domain to its expert, whose change along the shared directions the
filter drops is set to zero first (without a filter this is RegMean); ``curvature`` - the same least squares with
each expert's residual also weighted by how much its own caption loss depends on each OUTPUT unit: the merge
minimises the sum of the experts' local loss quadratics in the K-FAC form A_k (x) diag(s_k) (input factor
A_k = G_k / tr G_k; output factor s_ko = sum_j Phi_k[o, j], the expert's diagonal Fisher Phi_k of the layer summed
over the unit's weights, floored at ``OUTPUT_FLOOR`` x its largest value), one solve per output row:
    w_o = (sum_k s_ko A_k)^-1 sum_k s_ko A_k tau_ko   (a relative ridge of CURVATURE_RIDGE for unused directions).
Where the domains' inputs coincide (shared images, complementary captions) least squares over the inputs can
only average the experts; the output factor is what tells which expert owns which output unit. Output factors
equal across experts and rows give ``joint`` (RegMean) back when the Grams have equal traces; identical inputs
give a per-row Fisher-weighted mean; ``curvature_balanced`` - the same with each expert's output factor scaled
to mean 1 (every domain counts alike; only where in the layer its loss is sensitive matters). ``filter``
suppresses conflicts:
``sign`` (energy_mean only) - per output coordinate only the experts agreeing with the elected sign;
``cosine`` - a direction stays at the pivot when the agreement ||sum_k e_ki v_ki|| / sum_k e_ki ||v_ki|| is
below ``filter_threshold``. Except with ``joint``, the domain-specific remainders are merged by least squares
on the domains' inputs (RegMean, Grams shrunk by ``alpha``):
    Delta = Vbar U_S^T + (sum_k rho_k G_k') (sum_k G_k')^+.
No shared direction (threshold > 1) is RegMean, and so is ``least_squares`` with every direction shared
(threshold 0) and no filter; one expert gives its own task matrix.
``layer_inputs='merged'``: a later layer's Grams come from the domains' inputs pushed through the merged
earlier layers (as RegMean++), ``'own'``: through each expert's own layers (as RegMean).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pivotmerge.merging.calibration import (
    ExpertStats,
    apply_layer,
    augmented_gram,
    augmented_task_matrix,
    gram_solve,
    layer_gram,
    layer_keys,
    linear_layers,
    regmean_solve,
    shrink,
    split_update,
)
from pivotmerge.merging.errors import MergeInputError
from pivotmerge.merging.ops import diag_layer

LAYER_INPUTS = ("merged", "own")
CONSENSUS = ("energy_mean", "least_squares", "joint", "curvature", "curvature_balanced")
# curvature: an output unit no expert's loss touches still gets every expert's input fit (RegMean's), not 0/0
OUTPUT_FLOOR = 1e-3
CURVATURE_RIDGE = 1e-9


@dataclass(frozen=True)
class SharedDirections:
    """One layer's input directions (eigenvectors of sum_k Ghat_k) and which of them the domains share."""

    evecs: Tensor        # [D, D], one direction per column
    energies: Tensor     # [K, D], e_ki
    total: Tensor        # [D], sum_k e_ki
    sharedness: Tensor   # [D], in [0, 1]
    shared: Tensor       # [D], bool: sharedness >= shared_threshold

    def record(self, suppressed: int) -> dict:
        """The layer's diagnostics fields."""
        total, shared = self.total, self.shared
        return dict(shared_directions=int(shared.sum()), input_dims=int(len(total)),
                    shared_energy_fraction=float(total[shared].sum() / total.sum().clamp_min(1e-300)),
                    shared_directions_suppressed=suppressed,
                    mean_sharedness=float((self.sharedness * total).sum() / total.sum().clamp_min(1e-300)))


def feature_space_deltas(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]],
                         stats: Sequence[ExpertStats], *, shared_threshold: float, consensus: str,
                         filter_mode: str, filter_threshold: float, alpha: float, layer_inputs: str,
                         diagnostics: dict | None) -> dict[str, Tensor]:
    """Per-key merged updates of the Linear layers (float64), layer by layer (see the module docstring)."""
    deltas: dict[str, Tensor] = {}
    activations = [s.inputs.double() for s in stats] if layer_inputs == "merged" else None
    layers = linear_layers(pivot)
    for index, layer in enumerate(layers):
        grams = _layer_grams(pivot, stats, layer, activations if index > 0 else None)
        taus = [augmented_task_matrix(pivot, e, layer) for e in experts]
        directions = shared_directions(grams, shared_threshold)
        outputs = [output_factor(s, pivot, layer, OUTPUT_FLOOR, balanced=consensus == "curvature_balanced")
                   for s in stats] if consensus.startswith("curvature") else None
        delta, suppressed = _merge_layer(taus, grams, directions, consensus, filter_mode, filter_threshold, alpha,
                                         outputs)
        deltas.update(split_update(pivot, layer, delta))
        diag_layer(diagnostics, layer or "linear").update(directions.record(suppressed))
        if activations is not None and index + 1 < len(layers):
            current = {key: pivot[key].double() + deltas[key] for key in layer_keys(layer) if key in deltas}
            activations = [torch.nn.functional.gelu(apply_layer(current, layer, x)) for x in activations]
    return deltas


def shared_directions(grams: Sequence[Tensor], shared_threshold: float) -> SharedDirections:
    """The eigenvectors of the summed normalised Grams, each domain's energy along them, and the shared ones."""
    k = len(grams)
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
    return SharedDirections(evecs, energies, total, sharedness, shared)


def _layer_grams(pivot: Mapping[str, Tensor], stats: Sequence[ExpertStats], layer: str,
                 activations: list[Tensor] | None) -> list[Tensor]:
    """Each domain's input Gram of ``layer``: from ``activations`` (the inputs pushed through the merged
    earlier layers) when given, else from the statistics (the experts' own layers)."""
    if activations is not None:
        has_bias = layer_keys(layer)[1] in pivot
        return [augmented_gram(x) if has_bias else augmented_gram(x)[:-1, :-1] for x in activations]
    return [layer_gram(s, pivot, layer) for s in stats]


def output_factor(stats: ExpertStats, pivot: Mapping[str, Tensor], layer: str, floor: float,
                  balanced: bool = False) -> Tensor:
    """s_k [out]: the expert's caption-loss curvature per output unit of ``layer``: its diagonal Fisher summed over
    the unit's weights (and bias). Under K-FAC, Fisher[o, j] = s_o A[j, j] with A the trace-normalised input
    Gram, so the row sum is s_o. Floored at ``floor`` x its largest entry so no row is left without a weight.
    ``balanced``: scaled to mean 1 - every domain counts alike (as the decomposition's Ghat_k), the factor then
    only says which of the layer's units the expert's loss depends on, not how steep that loss is overall."""
    weight, bias = layer_keys(layer)
    if not stats.fisher or weight not in stats.fisher:
        raise MergeInputError(f"pivotmerge (consensus=curvature): the statistics hold no Fisher for {weight!r} "
                              "(the pipeline computes it; on the command line `pivotmerge stats --fisher`)")
    s = stats.fisher[weight].double().sum(1)
    if bias in pivot and bias in stats.fisher:
        s = s + stats.fisher[bias].double()
    s = s + floor * float(s.max().clamp_min(1e-300))
    return s / s.mean() if balanced else s


def curvature_solve(taus: Sequence[Tensor], grams: Sequence[Tensor], outputs: Sequence[Tensor],
                    chunk: int = 32) -> Tensor:
    """Per output row o: (sum_k s_ko A_k)^-1 (sum_k s_ko A_k tau_ko), A_k = G_k / tr G_k + eps I (the output
    factors carry each expert's scale; the ridge eps = CURVATURE_RIDGE / D plays the pseudo-inverse's part in
    ``gram_solve``: a direction no input uses gets no update). Two experts: one simultaneous diagonalisation of
    (A_1, A_2) serves every row; more: a Cholesky per row, ``chunk`` rows at a time."""
    d = grams[0].shape[-1]
    eye = torch.eye(d, dtype=grams[0].dtype, device=grams[0].device)
    means = torch.stack([g / torch.trace(g).clamp_min(1e-300) + CURVATURE_RIDGE / d * eye for g in grams])
    s = torch.stack(list(outputs))                                                       # [K, out]
    s = s / s.sum(0, keepdim=True).clamp_min(1e-300)     # per row only the experts' ratio matters
    t = torch.stack(list(taus))                                                          # [K, out, D]
    rhs = torch.einsum("ko,kod,kde->oe", s, t, means)                                    # [out, D]
    if len(grams) == 2:
        return _two_factor_solve(rhs, means, s[0])
    rows = []
    for start in range(0, t.shape[1], chunk):
        total = torch.einsum("kc,kde->cde", s[:, start:start + chunk], means)           # [c, D, D]
        factor = torch.linalg.cholesky(total)
        rows.append(torch.cholesky_solve(rhs[start:start + chunk].unsqueeze(-1), factor).squeeze(-1))
    return torch.cat(rows)


def _two_factor_solve(rhs: Tensor, means: Tensor, share: Tensor) -> Tensor:
    """rhs_o (a_o A_1 + (1 - a_o) A_2)^-1 for every row o at the cost of one eigendecomposition: with
    A_1 + A_2 = L L^T and L^-1 A_1 L^-T = Q diag(mu) Q^T, row o's matrix is
    L Q diag(a_o mu + (1 - a_o)(1 - mu)) Q^T L^T."""
    lower = torch.linalg.cholesky(means[0] + means[1])
    inner = torch.linalg.solve_triangular(lower, torch.linalg.solve_triangular(lower, means[0], upper=False).T,
                                          upper=False)                                   # L^-1 A_1 L^-T
    mu, q = torch.linalg.eigh((inner + inner.T) / 2)
    mu = mu.clamp(0, 1)
    y = torch.linalg.solve_triangular(lower, rhs.T, upper=False).T @ q                   # rhs L^-T Q
    y = y / (share[:, None] * mu + (1 - share[:, None]) * (1 - mu)).clamp_min(1e-300)
    return torch.linalg.solve_triangular(lower.T, (y @ q.T).T, upper=True).T            # ... Q^T L^-1


def _merge_layer(taus: list[Tensor], grams: list[Tensor], directions: SharedDirections, consensus: str,
                 filter_mode: str, filter_threshold: float, alpha: float,
                 outputs: list[Tensor] | None = None) -> tuple[Tensor, int]:
    """The layer's update by ``consensus`` (module docstring) and how many shared directions the filter dropped."""
    shared = directions.shared
    u = directions.evecs[:, shared]                                # [D, r]
    weights = directions.energies[:, shared].clamp_min(0)          # [K, r]
    v = torch.stack([tau @ u for tau in taus])                     # [K, out, r]
    shrunk = [shrink(g, alpha) for g in grams]
    if consensus in ("joint", "curvature", "curvature_balanced"):
        keep, suppressed = _agreeing_directions(v, weights, filter_mode, filter_threshold)
        dropped = u[:, ~keep]
        targets = [tau - (tau @ dropped) @ dropped.T for tau in taus]
        if outputs is not None:
            return curvature_solve(targets, shrunk, outputs), suppressed
        return regmean_solve(targets, shrunk), suppressed
    if consensus == "least_squares" and u.shape[1]:
        blocks = [u.T @ g @ u for g in shrunk]                     # H_k: each domain's Gram on the shared block
        vbar = gram_solve(sum(vk @ h for vk, h in zip(v, blocks)), sum(blocks))
        keep, suppressed = _agreeing_directions(v, weights, filter_mode, filter_threshold)
        vbar = vbar * keep.to(v.dtype)
    else:
        vbar, suppressed = _filter_features(v, weights, filter_mode, filter_threshold)
    shared_update = vbar @ u.T
    remainders = [tau - (tau @ u) @ u.T for tau in taus]
    specific = regmean_solve(remainders, shrunk) \
        if int(shared.sum()) < len(directions.total) else torch.zeros_like(shared_update)
    return shared_update + specific, suppressed


def _agreeing_directions(v: Tensor, weights: Tensor, mode: str, threshold: float) -> tuple[Tensor, int]:
    """Which shared directions the cosine filter keeps [r] (all of them for ``none``), and how many it drops."""
    if mode == "none":
        return torch.ones(v.shape[-1], dtype=torch.bool, device=v.device), 0
    w = weights.unsqueeze(1)
    agreement = (w * v).sum(0).norm(dim=0) / (w * v).norm(dim=1).sum(0).clamp_min(1e-300)
    keep = agreement >= threshold
    return keep, int((~keep).sum())


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
    keep, suppressed = _agreeing_directions(v, weights, mode, threshold)   # cosine mode
    return mean * keep.to(v.dtype), suppressed


__all__ = ["CONSENSUS", "LAYER_INPUTS", "SharedDirections", "curvature_solve", "feature_space_deltas", "output_factor",
           "shared_directions"]
