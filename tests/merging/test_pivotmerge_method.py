"""PivotMerge: reductions to baselines, hand-computed known answers, ALM, diagnostics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pivotmerge.merging import MergeConfigError, MergeInputError
from pivotmerge.merging.diagnostics import collect, write_diagnostics
from tests.helpers.merging import merge


def make(k=3, seed=0, dtype=torch.float32, prefix=""):
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (6, 4), "0.bias": (6,), "2.weight": (3, 6), "2.bias": (3,)}
    pivot = {prefix + n: torch.randn(s, generator=g).to(dtype) for n, s in shapes.items()}
    experts = [{n: v + torch.randn(v.shape, generator=g).to(dtype) for n, v in pivot.items()} for _ in range(k)]
    return pivot, experts


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ------------------------------------------------------------------------------ reductions
@pytest.mark.parametrize("lam", [0.3, 1.0])
@pytest.mark.parametrize("extra", [{}, {"filter": "cosine", "rank_ratio": 0.9, "remainder_density": 0.1}])
def test_all_components_off_is_exactly_task_arithmetic(lam, extra):
    pivot, experts = make(3)
    a = merge("pivotmerge_data_free", pivot, experts, sdf=False, alm="off", lam=lam, **extra)
    b = merge("task_arithmetic", pivot, experts, lam=lam)
    assert all(torch.equal(a[k], b[k]) for k in pivot)


def test_full_shared_rank_without_filter_is_weight_averaging():
    pivot, experts = make(3)
    a = merge("pivotmerge_data_free", pivot, experts, rank_ratio=1.0, filter="none", alm="off", lam=1.0)
    b = merge("average", pivot, experts)
    for k in pivot:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


def test_zero_shared_rank_untrimmed_is_task_arithmetic():
    pivot, experts = make(3)
    a = merge("pivotmerge_data_free", pivot, experts, rank_ratio=0.0, remainder_density=1.0, alm="off", lam=0.5)
    b = merge("task_arithmetic", pivot, experts, lam=0.5)
    for k in pivot:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- known answers
def orth_case():
    """One layer 'l': tau_1 = [2, 0] (weight) | [0] (bias), tau_2 = [0, 1] | [0.5]; orthogonal.

    G = diag(4, 1.25): sigma = (2, sqrt(1.25)), q_1 = e_1, shared rank 1 (ratio 0.5 of rank 2).
    Shared coordinates c = (2, 0); remainders rho_1 = 0, rho_2 = tau_2.
    """
    pivot = {"l.weight": torch.zeros(1, 2), "l.bias": torch.zeros(1)}
    experts = [{"l.weight": torch.tensor([[2.0, 0.0]]), "l.bias": vec(0.0)},
               {"l.weight": torch.tensor([[0.0, 1.0]]), "l.bias": vec(0.5)}]
    return pivot, experts


@pytest.mark.parametrize("opts,weight,bias", [
    ({"filter": "none"}, [[1.0, 1.0]], [0.5]),                       # shared mean (2+0)/2 = 1
    ({"filter": "sign"}, [[2.0, 1.0]], [0.5]),                       # disjoint mean over the agreeing coordinate
    ({"filter": "cosine", "filter_threshold": 0.0}, [[1.0, 1.0]], [0.5]),   # cos = (1, 0): both kept
    ({"filter": "cosine", "filter_threshold": 0.5}, [[2.0, 1.0]], [0.5]),   # expert 2 dropped from shared
    ({"filter": "none", "rank_mode": "energy", "energy": 0.7}, [[1.0, 1.0]], [0.5]),  # 4/5.25 >= 0.7 -> r=1
    ({"filter": "none", "rank_mode": "energy", "energy": 0.8}, [[1.0, 0.5]], [0.25]),  # r=2 -> mean
    # rho_2 trimmed per tensor: the bias keeps int(0.5) = 0 entries
    ({"filter": "none", "remainder_density": 0.5}, [[1.0, 1.0]], [0.0]),
    ({"sdf": False}, [[2.0, 1.0]], [0.5]),                            # task arithmetic
])
def test_known_answers_two_orthogonal_experts(opts, weight, bias):
    pivot, experts = orth_case()
    base = dict(rank_ratio=0.5, remainder_density=1.0, alm="off", lam=1.0)
    m = merge("pivotmerge_data_free", pivot, experts, **{**base, **opts})
    torch.testing.assert_close(m["l.weight"], torch.tensor(weight), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["l.bias"], torch.tensor(bias), rtol=0, atol=1e-6)


def test_known_answer_sign_filter_threshold_suppresses_conflicting_direction():
    # taus (1-D layer) [3, 0] and [-1, 0]: rank 1, single shared direction e_1, coordinates (3, -1)
    pivot = {"w": torch.zeros(2)}
    experts = [{"w": vec(3, 0)}, {"w": vec(-1, 0)}]
    kw = dict(rank_ratio=1.0, remainder_density=1.0, alm="off", lam=1.0)
    # sign: elected +, only 3 agrees -> 3; agreement |3-1|/(3+1) = 0.5
    torch.testing.assert_close(merge("pivotmerge_data_free", pivot, experts, filter="sign", **kw)["w"], vec(3, 0))
    torch.testing.assert_close(merge("pivotmerge_data_free", pivot, experts, filter="none", **kw)["w"], vec(1, 0))
    m = merge("pivotmerge_data_free", pivot, experts, filter="sign", filter_threshold=0.6, **kw)
    torch.testing.assert_close(m["w"], vec(0, 0))


def test_known_answer_alm_proxy_weights():
    # layer a: identical experts (agreement 1); layer b: orthogonal equal-norm experts (agreement 1/2)
    pivot = {"a.w": torch.zeros(2), "b.w": torch.zeros(2)}
    experts = [{"a.w": vec(1, 1), "b.w": vec(1, 0)}, {"a.w": vec(1, 1), "b.w": vec(0, 1)}]
    diag = {}
    m = merge("pivotmerge_data_free", pivot, experts, sdf=False, alm="proxy", temperature=0.5, weight_range=[0.5, 1.0],
              lam=1.0, diagnostics=diag)
    w_b = 0.5 + 0.5 * math.exp((0.5 - 1.0) / 0.5)
    assert diag["layer_weights"]["a"] == pytest.approx(1.0)
    assert diag["layer_weights"]["b"] == pytest.approx(w_b)
    torch.testing.assert_close(m["a.w"], vec(2, 2))
    torch.testing.assert_close(m["b.w"], vec(w_b, w_b))


@pytest.mark.parametrize("probe", ["remove", "apply"])
def test_alm_data_prefers_layer_whose_update_lowers_the_loss(probe):
    g = torch.Generator().manual_seed(0)
    pivot = {"0.weight": torch.randn(4, 3, generator=g), "0.bias": torch.randn(4, generator=g),
             "2.weight": torch.randn(2, 4, generator=g)}
    experts = [{k: v + torch.rand(v.shape, generator=g) for k, v in pivot.items()} for _ in range(3)]
    calls = []

    def loss(sd):  # positive updates of layer 0 lower it, those of layer 2 raise it
        calls.append(1)
        return float(-sd["0.weight"].sum() - sd["0.bias"].sum() + sd["2.weight"].sum())

    diag = {}
    merge("pivotmerge_data_free", pivot, experts, alm="data", alm_probe=probe, calibration_loss=loss, diagnostics=diag)
    w = diag["layer_weights"]
    assert w["0"] == pytest.approx(1.0) and w["2"] < 0.6
    assert diag["layers"]["0"]["alm_loss_gain"] > 0 > diag["layers"]["2"]["alm_loss_gain"]
    assert len(calls) == 3  # one reference + one probe per layer


def test_alm_data_without_loss_and_bad_loss():
    pivot, experts = make(2)
    with pytest.raises(MergeConfigError, match="alm=data needs a calibration_loss"):
        merge("pivotmerge_data_free", pivot, experts, alm="data")
    with pytest.raises(MergeInputError, match="calibration_loss returned nan"):
        merge("pivotmerge_data_free", pivot, experts, alm="data", calibration_loss=lambda sd: float("nan"))


@pytest.mark.parametrize("probe", ["remove", "apply"])
def test_alm_data_with_one_weight_for_every_layer_is_alm_off(probe):
    # the probes evaluate the merged update; they must not change the update that is applied afterwards
    pivot, experts = make(3)
    off = merge("pivotmerge_data_free", pivot, experts, alm="off")
    data = merge("pivotmerge_data_free", pivot, experts, alm="data", alm_probe=probe, weight_range=[1.0, 1.0],
                 calibration_loss=lambda sd: float(sum(v.double().square().sum() for v in sd.values())))
    assert all(torch.equal(off[k], data[k]) for k in pivot)


def test_alm_search_finds_each_layers_best_weight():
    pivot, experts = make(2)
    off = merge("pivotmerge_data_free", pivot, experts, alm="off")
    update = {k: off[k].double() - pivot[k].double() for k in pivot}
    target = {"0": 0.5, "2": 0.0}   # the loss is lowest with half of layer 0's update and none of layer 2's

    def loss(sd):
        return float(sum(((sd[k].double() - pivot[k].double()) - target[k.split(".")[0]] * update[k]).square().sum()
                         for k in pivot))

    diag = {}
    merged = merge("pivotmerge_data_free", pivot, experts, alm="search", weight_range=[0.0, 1.0],
                   calibration_loss=loss, diagnostics=diag)
    assert diag["layer_weights"] == {"0": 0.5, "2": 0.0}
    assert not diag["alm_search"]["kept_pivot"]
    assert loss(merged) < min(loss(off), loss(pivot))
    assert torch.equal(merged["2.weight"], pivot["2.weight"])


def test_alm_search_measures_each_weighting_once():
    """The coordinate descent revisits weightings (both layers at the common weight, a second sweep): each is one
    calibration-loss pass, the rest are remembered."""
    pivot, experts = make(2)
    off = merge("pivotmerge_data_free", pivot, experts, alm="off")
    update = {k: off[k].double() - pivot[k].double() for k in pivot}
    target = {"0": 0.25, "2": 0.5}
    states = []

    def loss(sd):
        states.append(tuple(round(float((sd[k].double() - pivot[k].double()).norm()), 9) for k in sorted(pivot)))
        return float(sum(((sd[k].double() - pivot[k].double()) - target[k.split(".")[0]] * update[k]).square().sum()
                         for k in pivot))

    diag = {}
    merge("pivotmerge_data_free", pivot, experts, alm="search", weight_range=[0.0, 1.0], calibration_loss=loss,
          diagnostics=diag)
    assert diag["layer_weights"] == target
    assert len(states) == len(set(states))
    grid = len(diag["alm_search"]["grid"])
    assert len(states) <= grid * grid   # never more than the distinct weightings of two layers


@pytest.mark.parametrize("reading", ["pivotmerge_data_free", "task_arithmetic_like"])
def test_alm_search_never_does_worse_than_the_pivot(reading):
    """Any merge that raises the calibration loss above the pivot's falls back to the pivot itself."""
    pivot, experts = make(3, seed=4)
    extra = {"sdf": False} if reading == "task_arithmetic_like" else {}

    def loss(sd):   # every step away from the pivot costs: no merge beats it
        return float(sum((sd[k].double() - pivot[k].double()).abs().sum() for k in pivot)) + 1.0

    diag = {}
    merged = merge("pivotmerge_data_free", pivot, experts, alm="search", calibration_loss=loss, diagnostics=diag,
                   **extra)
    assert all(torch.equal(merged[k], pivot[k]) for k in pivot)
    assert set(diag["layer_weights"].values()) == {0.0}
    assert diag["alm_search"]["merged_loss"] == diag["alm_search"]["pivot_loss"]

    def coupled(sd):   # the layers only help together, and never beat the pivot: one layer alone is worst
        at_pivot = {k.split(".")[0] for k in pivot if torch.equal(sd[k], pivot[k])}
        return 1.0 if len(at_pivot) == 2 else 3.0 if at_pivot else 2.0

    diag = {}
    merged = merge("pivotmerge_data_free", pivot, experts, alm="search", calibration_loss=coupled, diagnostics=diag,
                   **extra)
    assert all(torch.equal(merged[k], pivot[k]) for k in pivot) and diag["alm_search"]["kept_pivot"]
    with pytest.raises(MergeConfigError, match="alm=search needs a calibration_loss"):
        merge("pivotmerge_data_free", pivot, experts, alm="search")


# -------------------------------------------------------------------------------- invariants
def test_one_expert_gives_pivot_plus_lam_tau():
    pivot, experts = make(1)
    m = merge("pivotmerge_data_free", pivot, experts, lam=0.6)  # defaults: sdf, sign filter, proxy ALM (weights 1)
    for k in pivot:
        torch.testing.assert_close(m[k], pivot[k] + 0.6 * (experts[0][k] - pivot[k]), rtol=1e-6, atol=1e-6)


def test_identical_experts_merge_to_themselves():
    pivot, experts = make(1)
    m = merge("pivotmerge_data_free", pivot, [experts[0]] * 4)
    for k in pivot:
        torch.testing.assert_close(m[k], experts[0][k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [{}, {"filter": "cosine"}, {"rank_mode": "energy", "filter": "none"}])
def test_permutation_invariance(opts):
    pivot, experts = make(4)
    a = merge("pivotmerge_data_free", pivot, experts, **opts)
    b = merge("pivotmerge_data_free", pivot, [experts[i] for i in (2, 0, 3, 1)], **opts)
    for k in pivot:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_any_projector_and_dtype(dtype):
    g = torch.Generator().manual_seed(1)
    shapes = {"model.mm_projector.0.weight": (8, 5), "model.mm_projector.0.bias": (8,),
              "model.mm_projector.2.weight": (8, 8), "model.mm_projector.2.bias": (8,),
              "model.mm_projector.4.weight": (3, 8), "norm.weight": (3,), "norm.bias": (3,),
              "conv.weight": (4, 2, 3, 3), "scalar": ()}
    pivot = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    experts = [{k: v + torch.randn(v.shape, generator=g).to(dtype) for k, v in pivot.items()} for _ in range(3)]
    diag = {}
    m = merge("pivotmerge_data_free", pivot, experts, diagnostics=diag)
    assert list(m) == list(pivot) and all(m[k].dtype == dtype and m[k].shape == pivot[k].shape for k in m)
    assert set(diag["layer_weights"]) == {"model.mm_projector.0", "model.mm_projector.2", "model.mm_projector.4",
                                          "norm", "conv", "scalar"}


@pytest.mark.parametrize("opts,msg", [
    ({"rank_ratio": 1.2}, "rank_ratio"), ({"energy": -1}, "energy"), ({"filter": "ties"}, "filter"),
    ({"filter": "sign", "filter_threshold": 2.0}, "filter_threshold"), ({"alm": "on"}, "alm"),
    ({"temperature": 0}, "temperature"), ({"weight_range": [1.0, 0.5]}, "weight_range"),
    ({"weight_range": 3}, "weight_range"), ({"sdf": "yes"}, "sdf"), ({"remainder_density": 2}, "remainder_density"),
])
def test_bad_options(opts, msg):
    pivot, experts = make(2)
    with pytest.raises(MergeConfigError, match=msg):
        merge("pivotmerge_data_free", pivot, experts, **opts)


# -------------------------------------------------------------------------------- diagnostics
def test_diagnostics_collect_and_write(tmp_path):
    pivot, experts = make(3, prefix="model.mm_projector.")
    diag = {}
    m = merge("pivotmerge_data_free", pivot, experts, diagnostics=diag)
    collect(pivot, experts, m, diag)
    rec = diag["layers"]["model.mm_projector.0"]
    assert len(rec["tau_spectra"]) == 3 and len(rec["tau_spectra"][0]) == 5  # (6, 4 + bias column)
    assert len(rec["stack_singular_values"]) == 3 and 0 < rec["shared_energy_ratio"] <= 1
    assert 0 <= rec["sign_conflict_rate"] <= 1 and rec["shared_rank"] == 2
    tau = torch.cat([(experts[0][k] - pivot[k]).reshape(-1) for k in ("model.mm_projector.0.weight",
                                                                      "model.mm_projector.0.bias")])
    assert rec["tau_norms"][0] == pytest.approx(float(tau.norm()), rel=1e-5)
    paths = write_diagnostics(diag, tmp_path / "d")
    assert {p.name for p in paths} == {"diagnostics.json", "spectra.png", "layers.png"}
    data = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert data["method"] == "pivotmerge" and "model.mm_projector.2" in data["layer_weights"]
    assert (tmp_path / "d" / "spectra.png").read_bytes()[:4] == b"\x89PNG"


def test_sign_conflict_rate_known_answer():
    pivot = {"w": torch.zeros(4)}
    experts = [{"w": vec(1, 1, 0, 1)}, {"w": vec(1, -1, 2, 0)}, {"w": vec(-1, 0, 0, 0)}]
    diag = collect(pivot, experts, merge("average", pivot, experts), spectra=False)
    # entries with >= 2 movers: 0 (+,+,-: conflict), 1 (+,-: conflict) -> 2/2
    assert diag["layers"]["w"]["sign_conflict_rate"] == 1.0
