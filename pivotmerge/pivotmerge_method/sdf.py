"""PivotMerge's Shared-space Decomposition and Filtering (SDF) in the task-vector space, one layer at a time.

The layer's K task vectors, flattened and stacked into S (K x D), are decomposed through the K x K Gram matrix
G = S S^T (the thin SVD S = P diag(sigma) Q^T without any D x D factorisation): the first r directions are the
shared subspace, the experts' coordinates there are merged once (``filter``), and the domain-specific
remainders are trimmed and summed. method.py's docstring and docs/method.md give the equations;
the feature-space reading of SDF is sdf_features.py.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pivotmerge.merging.ops import FlatTaskVectors, chunks, kth_largest_1d

RANK_MODES = ("ratio", "energy")
FILTERS = ("none", "sign", "cosine")
_RANK_TOL = 1e-6  # relative singular-value tolerance of the numerical rank


@dataclass(frozen=True)
class LayerSpectrum:
    """What the merge needs of one layer's stack S = P diag(sigma) Q^T (all of it from G = S S^T)."""

    p: Tensor              # K x K, columns in the order of sigma
    sigma: Tensor          # singular values, descending
    rank: int              # numerical rank
    shared_rank: int       # r, the size of the shared subspace
    shared_energy: float   # sum_{i < r} sigma_i^2 / sum_i sigma_i^2
    agreement: float       # ||sum_k tau_k||^2 / (K sum_k ||tau_k||^2)

    def record(self) -> dict:
        """The layer's diagnostics fields."""
        return dict(stack_singular_values=self.sigma.tolist(), numerical_rank=self.rank,
                    shared_rank=self.shared_rank, shared_energy_ratio=self.shared_energy, agreement=self.agreement)


def layer_spectrum(views: Sequence[FlatTaskVectors], rank_mode: str, rank_ratio: float,
                   energy: float) -> LayerSpectrum:
    """Decompose one layer (its tensors' ``views``) and choose its shared rank."""
    g = _gram(views)
    p_mat, sigma, rank = _spectrum(g)
    r = _shared_rank(sigma, rank, rank_mode, rank_ratio, energy)
    energy_total = float((sigma**2).sum())
    shared_energy = float((sigma[:r] ** 2).sum()) / energy_total if energy_total > 0 else 0.0
    agreement = float(g.sum() / (views[0].k * g.trace())) if float(g.trace()) > 0 else 0.0
    return LayerSpectrum(p_mat, sigma, rank, r, shared_energy, agreement)


def shared_space_update(views: Sequence[FlatTaskVectors], spectrum: LayerSpectrum, filter_mode: str,
                        filter_threshold: float, remainder_density: float, rec: dict) -> dict[str, Tensor]:
    """Delta of each tensor of the layer: the merged shared coordinates plus the trimmed, summed remainders."""
    n_exp, r = views[0].k, spectrum.shared_rank
    # coefficient vectors over experts: shared update = a^T S, remainders rho = M S
    p_r, s_r = spectrum.p[:, :r], spectrum.sigma[:r]
    cbar = filter_shared(p_r * s_r, filter_mode, filter_threshold, rec)
    a = p_r @ (cbar / s_r) if r > 0 else torch.zeros(n_exp, dtype=torch.float64)
    has_remainder = r < spectrum.rank
    m = torch.eye(n_exp, dtype=torch.float64) - p_r @ p_r.T
    trim = has_remainder and remainder_density < 1.0
    v_coef = a + (m.sum(0) if has_remainder and not trim else 0.0)
    return {view.key: _layer_update(view, v_coef, m if trim else None, remainder_density) for view in views}


def filter_shared(c: Tensor, mode: str, threshold: float, rec: dict) -> Tensor:
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


__all__ = ["FILTERS", "RANK_MODES", "LayerSpectrum", "filter_shared", "layer_spectrum", "shared_space_update"]
