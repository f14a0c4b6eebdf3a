"""WUDI-Merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It").

Per 2-D (linear-layer) tensor with task matrices tau_k (out x in), the merged task matrix minimises the
interference the merge causes on each task's own inputs, which the task matrix itself spans:

    L(T) = sum_k ||(T - tau_k) tau_k^T||_F^2 / ||tau_k||_F^2.

L is quadratic in T. With G_k = tau_k^T tau_k, A = sum_k G_k / ||tau_k||^2 (in x in) and
B = sum_k tau_k G_k / ||tau_k||^2 (out x in), grad L = 2 (T A - B), so

* ``solver: closed_form``: T A = B, solved exactly (Cholesky). Where A is singular the objective leaves
  T's component undetermined; a vanishing ridge delta ||T - T0||^2 towards the paper's starting point
  T0 = sum_k tau_k fixes it there (delta = 1e-10 ||A||_F, raised x100 only if A is numerically
  indefinite), so nothing else changes; A and B are accumulated in float64;
* ``solver: adam``: the paper's optimisation: Adam (betas 0.9/0.999, eps 1e-8) from T0 = sum_k tau_k,
  ``steps`` steps of learning rate ``lr`` (paper: 300 and 1e-5), on the exact gradient 2 (T A - B) (the
  same gradient autograd gives for L; one GEMM a step instead of 3K).

theta = pivot + lam * T (the paper merges without a scale: lam = 1). 1-D (and other non-2-D) tensors:
pivot + lam * mean_k tau_k (the authors' code and FusionBench). An expert whose task matrix is zero adds
nothing (its term of L is 0/0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.errors import MergeInputError
from pivotmerge.merging.ops import (
    TaskVectorsOf,
    apply_update,
    diag_layer,
    finalize,
    float_keys,
    is_matrix,
    layer_name,
    mean_task_vector,
)
from pivotmerge.merging.spec import Options, choice, integer, merge_method, number

NAME = "wudi"
SOLVERS = ("closed_form", "adam")
_RIDGE = 1e-10  # delta / ||A||_F: far below any direction float32 task vectors determine
_RIDGE_TRIES = 6  # delta, 100 delta, ... before giving up


class Quadratic:
    """L(T) = tr(T A T^T) - 2 <T, B> + c of one tensor, and T0 = sum_k tau_k (the paper's start).

    A and B are accumulated in float64: the part of B outside A's range is pure rounding error, and a
    float32 GEMM's error (1e-7 of ||B||) divided by A's smallest eigenvalues would swamp the solution."""

    def __init__(self, taus: Sequence[Tensor]):
        first = taus[0]
        m, n = first.shape
        self.dtype = first.dtype
        self.a = torch.zeros(n, n, dtype=torch.float64)
        self.b = torch.zeros(m, n, dtype=torch.float64)
        self.t0 = torch.zeros(m, n, dtype=self.dtype)
        self.c = 0.0
        self.used = 0
        for i in range(len(taus)):
            tau = first if i == 0 else taus[i]
            self.t0 += tau
            t64 = tau.double()
            del tau
            norm2 = float(t64.square().sum())
            if norm2 > 0:
                g = t64.T @ t64
                self.a.add_(g, alpha=1 / norm2)
                self.b.addmm_(t64, g, alpha=1 / norm2)
                self.c += float(g.square().sum()) / norm2
                self.used += 1
                del g
            del t64
        del first  # A's GEMM rounding leaves it asymmetric at 1e-16; Cholesky reads one triangle only

    def value(self, t: Tensor) -> float:
        t = t.double()
        return float((t @ self.a).mul_(t).sum() - 2 * (t * self.b).sum()) + self.c

    def solve(self, keep: bool = True) -> Tensor:
        """argmin L (closed form, see the module docstring); ``keep=False`` reuses A and B's memory."""
        if self.used == 0:
            return self.t0
        a = self.a if not keep else self.a.clone()
        if not keep:
            self.a = None
        delta, added = _RIDGE * float(a.norm()), 0.0
        for _ in range(_RIDGE_TRIES):
            a.diagonal().add_(delta - added)
            added = delta
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                break
            delta *= 100
        else:  # pragma: no cover - A is PSD by construction; only NaN/Inf could get here
            raise MergeInputError(f"{NAME}: the normal equations cannot be factorised")
        del a
        rhs = (self.b if not keep else self.b.clone()).add_(self.t0, alpha=delta)
        if not keep:
            self.b = None
        solution = torch.cholesky_solve(rhs.T, chol).T
        del rhs, chol
        return solution.to(self.dtype)

    def adam(self, steps: int, lr: float) -> Tensor:
        """``steps`` Adam steps from T0 on the exact gradient 2 (T A - B)."""
        a, b = self.a.to(self.dtype), self.b.to(self.dtype)
        param = torch.nn.Parameter(self.t0.clone())
        opt = torch.optim.Adam([param], lr=lr)
        for _ in range(steps):
            param.grad = torch.addmm(b, param.data, a, beta=-1).mul_(2)
            opt.step()
        return param.data


def wudi_matrix(taus: Sequence[Tensor], solver: str, steps: int, lr: float, record: dict | None = None) -> Tensor:
    """The WUDI task matrix of one 2-D tensor (``taus`` may build each tau_k on access)."""
    q = Quadratic(taus)
    t = q.solve(keep=record is not None) if solver == "closed_form" else q.adam(steps, lr)
    if record is not None:
        record.update(initial=q.value(q.t0), final=q.value(t))
    return t


@merge_method(NAME, options={"solver": choice(SOLVERS), "steps": integer(minimum=0),
                             "lr": number(0.0, exclusive=True), "lam": number()},
              scale="lam", one_expert={}, identical="mean")
def wudi_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """WUDI-Merging (module docstring): per linear layer, the task matrix minimising the interference loss."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    merged = {}
    for key in float_keys(pivot):
        if is_matrix(pivot[key]):
            record = None
            if diagnostics is not None:
                record = diag_layer(diagnostics, layer_name(key)).setdefault("wudi_objective", {}).setdefault(key, {})
            update = wudi_matrix(TaskVectorsOf(pivot, experts, key), o.solver, o.steps, o.lr, record)
        else:
            update = mean_task_vector(pivot, experts, key)
        merged[key] = apply_update(pivot[key], update, o.lam)
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o))
    return finalize(pivot, merged)
