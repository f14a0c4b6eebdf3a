"""The shared tensor pieces of pivotmerge/merging/ops.py: exact top-k selection, SVD and polar factor."""

from __future__ import annotations

import pytest
import torch

from pivotmerge.merging.ops import (
    SVD_RTOL,
    TaskVectorsOf,
    kth_largest_1d,
    polar,
    thin_svd,
)


@pytest.mark.parametrize("case", ["gauss", "zeros", "ties"])
def test_fast_kth_largest_is_exact(case):
    g = torch.Generator().manual_seed(0)
    n = (1 << 20) + 17
    x = torch.randn(n, generator=g).abs()
    if case == "zeros":
        x[: n // 2] = 0  # many equal values around small k
    elif case == "ties":
        x = (x * 4).round()  # few distinct values: bracket misses -> exact fallback
    for frac in (0.001, 0.2, 0.5, 0.9):
        k = int(frac * n)
        assert kth_largest_1d(x, k) == x.kthvalue(n - k + 1).values
    assert kth_largest_1d(x, 0) == float("inf") and kth_largest_1d(x, n) == float("-inf")


@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (7, 7), (15, 4), (4, 15)])  # LAPACK and Gram routes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thin_svd_matches_lapack(shape, dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=g, dtype=dtype)
    u, s, v = thin_svd(a)
    u_ref, s_ref, vh_ref = torch.linalg.svd(a.double(), full_matrices=False)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert u.dtype == s.dtype == v.dtype == dtype
    torch.testing.assert_close(s.double(), s_ref, rtol=tol, atol=tol)
    torch.testing.assert_close((u * s) @ v.T, a, rtol=tol, atol=tol)
    q = min(shape)
    torch.testing.assert_close(u.T @ u, torch.eye(q, dtype=dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(v.T @ v, torch.eye(q, dtype=dtype), rtol=tol, atol=tol)
    # the top-2 triplets span the same subspaces as LAPACK's (signs are arbitrary)
    u2, _, v2 = thin_svd(a, top=2)
    torch.testing.assert_close((u2 @ u2.T).double(), u_ref[:, :2] @ u_ref[:, :2].T, rtol=tol, atol=tol)
    torch.testing.assert_close((v2 @ v2.T).double(), vh_ref[:2].T @ vh_ref[:2], rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(6, 5), (5, 6), (12, 5), (5, 12)])
def test_thin_svd_of_rank_deficient_and_zero_matrices(shape):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)  # rank 2
    u, s, v = thin_svd(a)
    assert int((s > 0).sum()) == 2 and bool((s[2:] == 0).all())
    assert not u[:, 2:].any() and not v[:, 2:].any()  # no arbitrary null-space vectors
    torch.testing.assert_close((u * s) @ v.T, a, rtol=1e-5, atol=1e-5)
    if shape[0] <= shape[1]:  # complete orthonormal u, even where s = 0
        u, s, v = thin_svd(a, complete=True)
        torch.testing.assert_close(u.T @ u, torch.eye(shape[0]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close((u * s) @ v.T, a, rtol=1e-5, atol=1e-5)
    u, s, v = thin_svd(torch.zeros(shape))
    assert not s.any() and not u.any() and not v.any()
    u, s, v = thin_svd(torch.randn(shape), top=0)
    assert u.shape == (shape[0], 0) and s.shape == (0,) and v.shape == (shape[1], 0)
    assert SVD_RTOL < 1e-5


def test_thin_svd_falls_back_to_the_gram_route_when_lapack_does_not_converge(monkeypatch):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, 5, generator=g, dtype=torch.float64)
    expected = thin_svd(a)

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", fail)
    u, s, v = thin_svd(a)
    torch.testing.assert_close(s, expected[1])
    torch.testing.assert_close((u * s) @ v.T, a)
    u, _, _ = thin_svd(a.T.contiguous(), complete=True)
    torch.testing.assert_close(u.T @ u, torch.eye(5, dtype=torch.float64))


def test_polar_is_the_procrustes_solution():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64)
    w = polar(a)
    torch.testing.assert_close(w.T @ w, torch.eye(5, dtype=torch.float64))
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(w, u @ vh)
    # nearest orthonormal-column matrix: no random orthonormal matrix is closer to a
    for _ in range(20):
        q, _ = torch.linalg.qr(torch.randn(8, 5, generator=g, dtype=torch.float64))
        assert (a - w).norm() <= (a - q).norm() + 1e-12
    # duplicated columns c [1, 1] = c sqrt(2) [1, 1]/sqrt(2): the unique partial isometry c [1, 1]/sqrt(2)
    c = torch.randn(6, 1, generator=g, dtype=torch.float64)
    c = c / c.norm()
    torch.testing.assert_close(polar(torch.cat([c, c], 1)), torch.cat([c, c], 1) / 2**0.5)


def test_task_vectors_of_builds_each_expert_on_access():
    pivot = {"w": torch.ones(2, 2, dtype=torch.bfloat16)}
    experts = [{"w": torch.full((2, 2), float(i), dtype=torch.bfloat16)} for i in range(3)]
    taus = TaskVectorsOf(pivot, experts, "w")
    assert len(taus) == 3 and taus[2].dtype == torch.float32
    torch.testing.assert_close(taus[-1], torch.ones(2, 2))
    assert [float(t[0, 0]) for t in taus] == [-1.0, 0.0, 1.0]
