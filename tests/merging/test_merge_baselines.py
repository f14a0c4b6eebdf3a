"""Known-answer and reference (peft) tests of the TIES / DARE / Task Arithmetic baselines.

The properties every method shares (dtype, order, identical experts, option errors, CLI) are checked for
all of them in tests/merging/test_merge_contract.py; the registry itself in tests/merging/test_merge_registry.py."""

from __future__ import annotations

import pytest
import torch

from pivotmerge.merging import MergeConfigError, MergeInputError, task_vectors
from tests.helpers.merging import merge


def make(k=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (6, 4), "0.bias": (6,), "2.weight": (3, 6), "2.bias": (3,)}
    pivot = {n: torch.randn(s, generator=g).to(dtype) for n, s in shapes.items()}
    pivot["steps"] = torch.tensor(7)  # non-float buffer: copied from the pivot
    experts = []
    for _ in range(k):
        e = {n: (v + torch.randn(v.shape, generator=g).to(dtype)) if v.is_floating_point() else v.clone()
             for n, v in pivot.items()}
        experts.append(e)
    return pivot, experts


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ------------------------------------------------------------------ known answers (hand computed)
TIES_TAUS = [vec(1, -2, 0.5, 3, -0.1), vec(-1.5, -1, 0.2, 2, 0.4), vec(0.5, 1, -3, 1, 0.1)]


def ties_case(pivot_val=0.0):
    pivot = {"w": torch.full((5,), pivot_val), "v": torch.full((1,), pivot_val)}
    v_taus = [vec(10.0), vec(0.01), vec(-0.01)]
    experts = [{"w": pivot["w"] + t, "v": pivot["v"] + v} for t, v in zip(TIES_TAUS, v_taus)]
    return pivot, experts


def test_ties_known_answer_tensor_scope_mean_sum_count():
    pivot, experts = ties_case()
    # density 0.6 -> keep 3 of 5 per expert; "v" has 1 entry -> int(0.6) = 0 kept
    m = merge("ties", pivot, experts, density=0.6, scope="tensor", sign="sum", combine="mean", lam=1.0)
    torch.testing.assert_close(m["w"], vec(-1.5, -1.5, -3, 2, 0), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["v"], vec(0.0))
    m = merge("ties", pivot, experts, density=0.6, scope="tensor", sign="sum", combine="sum", lam=1.0)
    torch.testing.assert_close(m["w"], vec(-1.5, -3, -3, 6, 0), rtol=0, atol=1e-6)
    m = merge("ties", pivot, experts, density=0.6, scope="tensor", sign="count", combine="mean", lam=1.0)
    torch.testing.assert_close(m["w"], vec(1, -1.5, -3, 2, 0), rtol=0, atol=1e-6)


def test_ties_known_answer_global_scope_and_lam():
    pivot, experts = ties_case(pivot_val=1.0)
    # global: 6 entries per expert, keep 3: expert 1 keeps v=10, 3, -2; expert 2: 2, -1.5, -1; expert 3: -3, 1, 1
    m = merge("ties", pivot, experts, density=0.5, scope="global", lam=0.5)
    torch.testing.assert_close(m["w"], 1 + 0.5 * vec(-1.5, -1.5, -3, 2, 0), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["v"], 1 + 0.5 * vec(10.0), rtol=0, atol=1e-6)
    m = merge("ties", pivot, experts, density=0.5, scope="tensor", lam=0.5)
    torch.testing.assert_close(m["v"], vec(1.0))  # per tensor: int(0.5 * 1) = 0 entries kept


def test_task_arithmetic_and_average_known_answer():
    pivot = {"w": vec(1, 2)}
    experts = [{"w": vec(2, 2)}, {"w": vec(1, 5)}]
    torch.testing.assert_close(merge("task_arithmetic", pivot, experts, lam=0.5)["w"], vec(1.5, 3.5))
    torch.testing.assert_close(merge("task_arithmetic", pivot, experts, lam=1.0)["w"], vec(2, 5))
    torch.testing.assert_close(merge("average", pivot, experts)["w"], vec(1.5, 3.5))


def test_task_vectors_helper():
    pivot, experts = make(2)
    tv = task_vectors(pivot, experts)
    assert set(tv[0]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(tv[1]["0.bias"], experts[1]["0.bias"] - pivot["0.bias"])


# -------------------------------------------------------------------------------------- DARE
@pytest.mark.parametrize("name,base,extra", [("dare_ta", "task_arithmetic", {}),
                                             ("dare_ties", "ties", {"density": 0.5, "scope": "tensor"}),
                                             ("dare_ties", "ties",
                                              {"density": 0.3, "scope": "global", "sign": "count"})])
def test_dare_p0_equals_its_base(name, base, extra):
    pivot, experts = make(3)
    a = merge(name, pivot, experts, p=0.0, lam=0.8, **extra)
    b = merge(base, pivot, experts, lam=0.8, **extra)
    assert all(torch.equal(a[k], b[k]) for k in pivot)


def test_dare_kept_entries_rescaled_exactly_and_seeded():
    from baselines.dare import drop_and_rescale

    pivot, experts = make(3)
    keys = [k for k in pivot if pivot[k].is_floating_point()]
    p = 0.3
    dropped = drop_and_rescale(pivot, experts, keys, p, seed=11)
    again = drop_and_rescale(pivot, experts, keys, p, seed=11)
    other = drop_and_rescale(pivot, experts, keys, p, seed=12)
    n_kept = n_all = 0
    for k in keys:
        tau = torch.stack([e[k] - pivot[k] for e in experts])
        kept = dropped[k] != 0
        assert torch.equal(dropped[k][kept], tau[kept] / (1 - p))
        assert torch.equal(dropped[k], again[k])
        n_kept += int(kept.sum())
        n_all += kept.numel()
    assert any(not torch.equal(dropped[k], other[k]) for k in keys)
    assert 0.45 < n_kept / n_all < 0.95  # ~0.7 kept on 135 entries
    m = merge("dare_ta", pivot, experts, p=1.0)
    assert all(torch.equal(m[k], pivot[k]) for k in pivot)


def test_dare_does_not_touch_global_rng():
    pivot, experts = make(2)
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    merge("dare_ta", pivot, experts, p=0.5, seed=3)
    assert torch.equal(torch.rand(3), a)


# ------------------------------------------------------------------- peft reference (numeric)
def _peft_ref(pivot, experts, fn, lam=1.0, **kw):
    out = {}
    for k, v in sorted(pivot.items()):  # DARE draws its masks over the tensors in sorted key order
        if not v.is_floating_point():
            continue
        taus = [e[k] - v for e in experts]
        out[k] = v + lam * fn(taus, torch.ones(len(experts)), **kw)
    return out


@pytest.mark.parametrize("sign,peft_sign", [("sum", "total"), ("count", "frequency")])
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_peft_per_tensor(sign, peft_sign, density):
    mu = pytest.importorskip("peft.utils.merge_utils")
    pivot, experts = make(4, seed=3)
    ours = merge("ties", pivot, experts, density=density, scope="tensor", sign=sign, combine="mean", lam=0.9)
    with pytest.warns(UserWarning) if density >= 1 else _nullcontext():
        ref = _peft_ref(pivot, experts, mu.ties, lam=0.9, density=density, majority_sign_method=peft_sign)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-6)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("name,peft_fn,extra", [
    ("dare_ta", "dare_linear", {}),
    ("dare_ties", "dare_ties", {"density": 1.0, "scope": "tensor", "sign": "sum", "combine": "mean"}),
])
def test_dare_matches_peft_bit_for_bit(name, peft_fn, extra):
    mu = pytest.importorskip("peft.utils.merge_utils")
    pivot, experts = make(3, seed=5)
    p, seed = 0.4, 123
    ours = merge(name, pivot, experts, p=p, seed=seed, lam=1.0, **extra)
    torch.manual_seed(seed)  # peft draws its masks from the global RNG in the same order
    ref = _peft_ref(pivot, experts, getattr(mu, peft_fn), density=1 - p)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


# ------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    pivot, experts = make(2)
    bad = dict(experts[1])
    del bad["2.bias"]
    with pytest.raises(MergeInputError, match="expert 1.*missing '2.bias'"):
        merge("ties", pivot, [experts[0], bad])
    bad = dict(experts[1], **{"0.bias": torch.zeros(5)})
    with pytest.raises(MergeInputError, match="'0.bias' has shape"):
        merge("average", pivot, [experts[0], bad])
    bad = dict(experts[1], **{"0.weight": experts[1]["0.weight"].clone()})
    bad["0.weight"][0, 0] = float("inf")
    with pytest.raises(MergeInputError, match="expert 1: tensor '0.weight' has 1 NaN/Inf"):
        merge("task_arithmetic", pivot, [experts[0], bad])
    with pytest.raises(MergeInputError, match="at least 1 expert"):
        merge("ties", pivot, [])


@pytest.mark.parametrize("name,opts,msg", [
    ("ties", {"density": 1.5}, "density=1.5 is outside"), ("ties", {"density": -0.1}, "outside"),
    ("ties", {"scope": "layer"}, "scope"), ("ties", {"sign": "max"}, "sign"), ("ties", {"combine": "max"}, "combine"),
    ("dare_ta", {"p": 2}, "p=2 is outside"), ("dare_ties", {"seed": 0.5}, "integer"),
    ("task_arithmetic", {"lam": "x"}, "lam"), ("ties", {"densty": 0.2}, "unknown option"),
])
def test_bad_options(name, opts, msg):
    pivot, experts = make(2)
    with pytest.raises(MergeConfigError, match=msg):
        merge(name, pivot, experts, **opts)
