"""TSV-M, Task Singular Vectors Merging (Gargiulo et al., CVPR 2025).

Per 2-D tensor (m x n, r = min(m, n)) with task matrices tau_k = U_k S_k V_k^T (k = 1..K):

1. keep each task's top k = floor(r / K) singular triplets (its share 1/K of the rank);
2. concatenate them: U = [U_1,k .. U_K,k] (m x Kk), S = diag(S_1,k .. S_K,k), V = [V_1,k .. V_K,k];
3. orthogonalise the stacked singular vectors (Procrustes: the nearest matrix with orthonormal columns,
   U_perp = P Q^T from U = P Sigma Q^T; same for V), which removes the interference between tasks'
   subspaces;
4. theta = pivot + alpha * U_perp S V_perp^T.

1-D (and other non-2-D) tensors: pivot + alpha * mean_k tau_k (the authors' code and FusionBench).
A rank-deficient U or V (e.g. two experts sharing singular vectors) gets the unique partial-isometry
polar factor (zero directions stay zero) instead of arbitrary null-space vectors.
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
    thin_svd,
)
from pivotmerge.merging.spec import Options, merge_method, number

NAME = "tsv_m"


def tsv_matrix(taus: Sequence[Tensor]) -> Tensor:
    """The TSV-M update of one 2-D tensor from its task matrices (steps 1-3 of the module docstring).

    ``taus`` may be a lazy sequence: one task matrix is alive at a time."""
    k_experts = len(taus)
    us, ss, vs = [], [], []
    for i in range(k_experts):
        tau = taus[i]
        k = min(tau.shape) // k_experts
        u, s, v = thin_svd(tau, top=k)
        us.append(u), ss.append(s), vs.append(v)
        del tau
    s_cat = torch.cat(ss)
    u_cat = torch.cat(us, 1)
    del us
    left = polar(u_cat).mul_(s_cat)
    del u_cat
    v_cat = torch.cat(vs, 1)
    del vs
    right = polar(v_cat)
    del v_cat
    return left @ right.T


@merge_method(NAME, options={"alpha": number()}, scale="alpha", one_expert={}, identical=None)
def tsv_m_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """TSV-M (module docstring): per-task top-1/K singular triplets, orthogonalised, scaled by ``alpha``."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    merged = {}
    for key in float_keys(pivot):
        if is_matrix(pivot[key]):
            update = tsv_matrix(TaskVectorsOf(pivot, experts, key))
            diag_layer(diagnostics, layer_name(key)).setdefault("tsv_rank_per_expert", {})[key] = (
                min(pivot[key].shape) // len(experts))
        else:
            update = mean_task_vector(pivot, experts, key)
        merged[key] = apply_update(pivot[key], update, o.alpha)
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o))
    return finalize(pivot, merged)
