"""Iso-C and Iso-CTS, isotropic merging (Marczak et al., ICML 2025, "No Task Left Behind").

Per 2-D tensor (m x n, r = min(m, n)), with the summed task matrix Delta = sum_k tau_k = U S V^T:

* **Iso-C** (``iso_c``): flatten the spectrum of Delta: Delta_iso = sbar * U V^T with sbar = mean of
  Delta's r singular values (sum S / r), so that every direction of the common subspace is scaled alike.
* **Iso-CTS** (``iso_cts``): keep Delta's top k_c directions (the common subspace, k_c ~
  ``common_space_fraction`` * r) and fill the other r - k_c with task-specific ones: for each task, the
  top (r - k_c) / K singular triplets of its part orthogonal to the common subspace,
  (I - U_c U_c^T) tau_k. Concatenate common and task-specific vectors, orthogonalise U and V (polar
  factor, as TSV-M) and give every direction the mean of the concatenated singular values.
* theta = pivot + alpha * Delta_iso.

1-D (and other non-2-D) tensors: pivot + alpha * mean_k tau_k (the authors' code and FusionBench).
k_c as in the authors' code: k_c = int(r * fraction), then the task-specific total is rounded to a
multiple of K, n_t = round((r - k_c) / K), k_c = r - K n_t (n_t capped at r // K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import (
    TaskVectorsOf,
    apply_update,
    diag_layer,
    finalize,
    float_keys,
    is_matrix,
    layer_name,
    mean_task_vector,
    polar,
    summed_task_vector,
    thin_svd,
)
from pivotmerge.merging.spec import Options, fraction, merge_method, number


def iso_c_matrix(delta: Tensor) -> tuple[Tensor, float]:
    """(sbar U V^T, sbar) for the summed task matrix ``delta``."""
    u, s, v = thin_svd(delta)
    del delta
    sbar = float(s.sum()) / max(1, s.numel())
    out = u @ v.T
    return out.mul_(sbar), sbar


def split_ranks(r: int, n_experts: int, fraction: float) -> tuple[int, int]:
    """(k_c common directions, n_t task-specific directions per expert), k_c + K n_t = r."""
    k_c = int(r * fraction)
    n_t = min(round((r - k_c) / n_experts), r // n_experts)
    return r - n_experts * n_t, n_t


def iso_cts_matrix(delta: Tensor, taus: Sequence[Tensor], fraction: float) -> tuple[Tensor, float, int]:
    """(the Iso-CTS update, sbar, k_c) for one 2-D tensor; ``taus`` may build each tau_k on access."""
    m, n = delta.shape
    k_experts = len(taus)
    k_c, n_t = split_ranks(min(m, n), k_experts, fraction)
    if m <= n:
        # Delta's complete left basis [U_c, U_perp] of R^m: each task's residual
        # (I - U_c U_c^T) tau = U_perp (U_perp^T tau) lives in span(U_perp), so its SVD is that of the small
        # (m - k_c) x n matrix U_perp^T tau, and the polar factor of [U_perp A, U_c] is [U_perp polar(A), U_c].
        u, s, v = thin_svd(delta, complete=True)
        del delta
        coords, ss, vs = [], [], []
        for i in range(k_experts):
            a, s_i, v_i = thin_svd(u[:, k_c:].T @ taus[i], top=n_t)
            coords.append(a), ss.append(s_i), vs.append(v_i)
        u_orth = torch.cat([u[:, k_c:] @ polar(torch.cat(coords, 1)), u[:, :k_c]], 1)
        del u, coords
    else:
        u, s, v = thin_svd(delta)
        del delta
        u_c = u[:, :k_c]
        del u
        us, ss, vs = [], [], []
        for i in range(k_experts):
            tau = taus[i]
            tau -= u_c @ (u_c.T @ tau)
            u_i, s_i, v_i = thin_svd(tau, top=n_t)
            us.append(u_i), ss.append(s_i), vs.append(v_i)
            del tau
        u_orth = polar(torch.cat([*us, u_c], 1))
        del us, u_c
    s_all = torch.cat([*ss, s[:k_c]])
    v_cat = torch.cat([*vs, v[:, :k_c]], 1)
    del vs, v
    v_orth = polar(v_cat)
    del v_cat
    sbar = float(s_all.sum()) / max(1, s_all.numel())
    return (u_orth @ v_orth.T).mul_(sbar), sbar, k_c


@merge_method("iso_c", options={"alpha": number()}, scale="alpha", one_expert=None, identical=None)
def iso_c_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Iso-C (module docstring): the summed task matrix with a flat spectrum, scaled by ``alpha``."""
    validate_inputs(pivot, experts, min_experts=1, method="iso_c")
    merged = {}
    for key in float_keys(pivot):
        if is_matrix(pivot[key]):
            update, sbar = iso_c_matrix(summed_task_vector(pivot, experts, key))
            diag_layer(diagnostics, layer_name(key)).setdefault("iso_singular_value", {})[key] = sbar
        else:
            update = mean_task_vector(pivot, experts, key)
        merged[key] = apply_update(pivot[key], update, o.alpha)
    if diagnostics is not None:
        diagnostics.update(method="iso_c", options=dict(o))
    return finalize(pivot, merged)


@merge_method("iso_cts", options={"common_space_fraction": fraction(), "alpha": number()},
              scale="alpha", one_expert=None, identical=None)
def iso_cts_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Iso-CTS (module docstring): common plus task-specific subspaces, flat spectrum, scaled by ``alpha``."""
    validate_inputs(pivot, experts, min_experts=1, method="iso_cts")
    merged = {}
    for key in float_keys(pivot):
        if is_matrix(pivot[key]):
            # no reference kept to the summed matrix: iso_cts_matrix frees it once decomposed
            update, sbar, k_c = iso_cts_matrix(summed_task_vector(pivot, experts, key),
                                               TaskVectorsOf(pivot, experts, key), o.common_space_fraction)
            rec = diag_layer(diagnostics, layer_name(key))
            rec.setdefault("iso_singular_value", {})[key] = sbar
            rec.setdefault("common_rank", {})[key] = k_c
        else:
            update = mean_task_vector(pivot, experts, key)
        merged[key] = apply_update(pivot[key], update, o.alpha)
    if diagnostics is not None:
        diagnostics.update(method="iso_cts", options=dict(o))
    return finalize(pivot, merged)
