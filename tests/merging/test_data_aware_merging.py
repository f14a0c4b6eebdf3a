"""Data-aware merging: calibration statistics, RegMean(++), Fisher, learned coefficients and PivotMerge's
feature-space reading - known answers and reductions on small layers whose domains are chosen by hand."""
from __future__ import annotations

import pytest
import torch

from pivotmerge.merging.calibration import (
    ExpertStats,
    compute_stats,
    layer_inputs,
    load_stats,
    projector_forward,
    save_stats,
)
from tests.helpers.merging import merge

D_IN, HIDDEN, D_OUT = 6, 5, 4


def projector(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": scale * torch.randn(HIDDEN, D_IN, generator=g),
            "0.bias": scale * torch.randn(HIDDEN, generator=g),
            "2.weight": scale * torch.randn(D_OUT, HIDDEN, generator=g),
            "2.bias": scale * torch.randn(D_OUT, generator=g)}


def plus(a, b):
    return {k: a[k] + b[k] for k in a}


def domain(dims: list[int], n: int = 200, seed: int = 0) -> torch.Tensor:
    """Inputs that live on the given coordinates only (a domain's own subspace of the input space)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, D_IN)
    x[:, dims] = torch.randn(n, len(dims), generator=g)
    return x - x.mean(0)   # centred: the bias column is orthogonal to every domain's own directions


def linear_case():
    """One Linear layer (LLaVA's `linear` projector): experts on disjoint input coordinates."""
    g = torch.Generator().manual_seed(1)
    pivot = {"weight": torch.randn(D_OUT, D_IN, generator=g), "bias": torch.zeros(D_OUT)}
    experts = [{"weight": pivot["weight"] + torch.randn(D_OUT, D_IN, generator=g), "bias": torch.zeros(D_OUT)}
               for _ in range(2)]
    inputs = [domain([0, 1, 2], seed=2), domain([3, 4, 5], seed=3)]
    stats = [compute_stats(e, x) for e, x in zip(experts, inputs)]
    return pivot, experts, inputs, stats


def test_stats_hold_the_grams_of_each_layers_inputs_and_round_trip(tmp_path):
    expert = projector(0)
    x = domain([0, 1, 2, 3])
    stats = compute_stats(expert, x.reshape(20, 10, D_IN), sample_tokens=50)
    for layer, inputs in layer_inputs(expert, x).items():
        aug = torch.cat([inputs.double(), torch.ones(len(inputs), 1, dtype=torch.float64)], 1)
        torch.testing.assert_close(stats.grams[layer], aug.T @ aug)
        assert stats.counts[layer] == 200
    assert stats.inputs.shape == (50, D_IN)
    again = load_stats(save_stats(stats, tmp_path / "a.safetensors"))
    assert all(torch.equal(again.grams[k], stats.grams[k]) for k in stats.grams) and again.counts == stats.counts


def test_regmean_reproduces_every_expert_on_its_own_domain_when_domains_are_orthogonal():
    pivot, experts, inputs, stats = linear_case()
    merged = merge("regmean", pivot, experts, alpha=1.0, calibration=stats)
    for expert, x in zip(experts, inputs):
        torch.testing.assert_close(projector_forward(merged, x), projector_forward(expert, x), atol=1e-4, rtol=1e-4)
    averaged = merge("average", pivot, experts)
    assert (projector_forward(averaged, inputs[0]) - projector_forward(experts[0], inputs[0])).abs().max() > 0.1


def test_regmean_with_identical_grams_is_averaging():
    pivot, experts, _, _ = linear_case()
    full = compute_stats(experts[0], domain(list(range(D_IN))), sample_tokens=100)   # every input direction used
    same = [full, full]
    for name in ("regmean", "regmean_plusplus"):
        got = merge(name, pivot, experts, alpha=0.7, calibration=same)
        ref = merge("average", pivot, experts)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


def test_regmean_plusplus_sees_the_merged_first_layer():
    pivot = projector(0)
    experts = [plus(pivot, projector(s, 0.5)) for s in (1, 2)]
    x = [domain([0, 1, 2], seed=4), domain([2, 3, 4, 5], seed=5)]
    stats = [compute_stats(e, xi, sample_tokens=200) for e, xi in zip(experts, x)]
    plain = merge("regmean", pivot, experts, alpha=1.0, calibration=stats)
    plus_plus = merge("regmean_plusplus", pivot, experts, alpha=1.0, calibration=stats)
    torch.testing.assert_close(plus_plus["0.weight"], plain["0.weight"], atol=1e-5, rtol=1e-5)   # same layer 0
    assert (plus_plus["2.weight"] - plain["2.weight"]).abs().max() > 1e-3                      # not layer 2
    # layer 2 of RegMean++ is the least-squares fit on what the merged layer 0 feeds it
    h = [torch.nn.functional.gelu(xi @ plus_plus["0.weight"].T + plus_plus["0.bias"]) for xi in x]
    targets = [hi @ e["2.weight"].T + e["2.bias"] for hi, e in zip(h, experts)]
    err = lambda w, b: sum(((hi @ w.T + b - t) ** 2).sum() for hi, t in zip(h, targets))  # noqa: E731
    assert err(plus_plus["2.weight"], plus_plus["2.bias"]) <= err(plain["2.weight"], plain["2.bias"]) + 1e-6


def test_fisher_merging_known_answer():
    pivot = {"w": torch.zeros(3)}
    experts = [{"w": torch.tensor([1.0, 1.0, 1.0])}, {"w": torch.tensor([3.0, 3.0, 3.0])}]
    fisher = [{"w": torch.tensor([1.0, 3.0, 0.0])}, {"w": torch.tensor([1.0, 1.0, 0.0])}]
    stats = [ExpertStats({}, {}, None, f) for f in fisher]
    got = merge("fisher", pivot, experts, fisher_floor=0.0, lam=1.0, calibration=stats)["w"]
    torch.testing.assert_close(got, torch.tensor([2.0, 1.5, 2.0]))   # equal weights / 3:1 / nothing -> average


def test_learned_coefficients_reach_the_least_squares_optimum_of_a_linear_layer():
    """For one Linear layer the objective is quadratic in the coefficients: the fit must find its minimum."""
    pivot, experts, inputs, _ = linear_case()
    stats = [compute_stats(e, x, sample_tokens=200) for e, x in zip(experts, inputs)]
    diag = {}
    merge("adamerging", pivot, experts, init=0.3, steps=400, lr=0.05, chunks=1, batch_tokens=200, seed=0,
          calibration=stats, diagnostics=diag)
    fitted = torch.tensor(diag["coefficients"]).reshape(-1)
    # sum_k ||X_k (sum_j l_j tau_j - tau_k)^T||^2 / ||X_k tau_k^T||^2 (inputs with a 1 for the bias)
    rows, target = [], []
    for x, expert in zip(inputs, experts):
        xa = torch.cat([x, torch.ones(len(x), 1)], 1)
        outs = [xa @ torch.cat([e["weight"] - pivot["weight"], (e["bias"] - pivot["bias"])[:, None]], 1).T
                for e in experts]
        own = xa @ torch.cat([expert["weight"] - pivot["weight"], (expert["bias"] - pivot["bias"])[:, None]], 1).T
        scale = own.pow(2).sum(-1).mean().sqrt() * len(x) ** 0.5
        rows.append(torch.stack([o.reshape(-1) for o in outs], 1) / scale)
        target.append(own.reshape(-1) / scale)
    optimum = torch.linalg.lstsq(torch.cat(rows), torch.cat(target)).solution
    torch.testing.assert_close(fitted, optimum, atol=2e-2, rtol=0)
    assert diag["fit_loss_first_last"][1] < diag["fit_loss_first_last"][0]


# ---- PivotMerge, feature-space reading ---------------------------------------------------------------------
def pm(pivot, experts, stats, **opts):
    base = dict(sdf_space="features", consensus="joint", filter="none", alm="off", lam=1.0, layer_inputs="own",
                alpha=1.0)
    return merge("pivotmerge", pivot, experts, calibration=stats, **{**base, **opts})


def two_domains_sharing_one_direction(shared_scale_a: float = 1.0, n: int = 400):
    """Inputs of two domains over 3 coordinates: coordinate 0 used by both (domain a's spread on it scaled),
    1 by a only, 2 by b only. The columns are exactly orthogonal to each other and to the bias's column of
    ones, so there are no sampling correlations."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1), torch.randn(n, 3, generator=g)], 1))
    common, own_a, own_b = (q[:, i:i + 1] * n ** 0.5 for i in (1, 2, 3))
    return (torch.cat([shared_scale_a * common, own_a, torch.zeros(n, 1)], 1),
            torch.cat([common, torch.zeros(n, 1), own_b], 1))


def overlapping_case():
    """Three experts on partly overlapping input coordinates: some directions shared, some not."""
    pivot = projector(0)
    experts = [plus(pivot, projector(s, 0.5)) for s in (1, 2, 3)]
    inputs = [domain([0, 1, 2, 3]), domain([2, 3, 4], seed=1), domain([3, 4, 5, 0], seed=2)]
    return pivot, experts, [compute_stats(e, x, sample_tokens=100) for e, x in zip(experts, inputs)]


def test_without_shared_directions_pivotmerge_is_regmean():
    pivot = projector(0)
    experts = [plus(pivot, projector(s, 0.5)) for s in (1, 2, 3)]
    stats = [compute_stats(e, domain([i, i + 1, i + 2], seed=i), sample_tokens=100) for i, e in enumerate(experts)]
    got = pm(pivot, experts, stats, shared_threshold=1.5, alpha=0.8)
    ref = merge("regmean", pivot, experts, alpha=0.8, lam=1.0, calibration=stats)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


def test_disjoint_domains_have_no_shared_direction_and_keep_each_expert():
    pivot, experts, inputs, stats = linear_case()
    diag = {}
    merged = pm(pivot, experts, stats, shared_threshold=0.5, diagnostics=diag)
    assert diag["layers"]["linear"]["shared_directions"] == 1   # only the bias column is used by both domains
    for expert, x in zip(experts, inputs):
        torch.testing.assert_close(projector_forward(merged, x), projector_forward(expert, x), atol=1e-4, rtol=1e-4)


def test_a_shared_direction_gets_the_experts_consensus_or_is_filtered_out():
    """Two domains use input coordinate 0 equally (shared) and one coordinate of their own each."""
    x_a, x_b = two_domains_sharing_one_direction()
    pivot = {"weight": torch.zeros(1, 3)}
    agree = [{"weight": torch.tensor([[1.0, 2.0, 0.0]])}, {"weight": torch.tensor([[1.0, 0.0, 3.0]])}]
    conflict = [{"weight": torch.tensor([[1.0, 2.0, 0.0]])}, {"weight": torch.tensor([[-1.0, 0.0, 3.0]])}]

    def stats_of(experts):
        return [compute_stats(e, x) for e, x in zip(experts, (x_a, x_b))]

    merged = pm(pivot, agree, stats_of(agree), shared_threshold=0.9)["weight"]
    torch.testing.assert_close(merged, torch.tensor([[1.0, 2.0, 3.0]]), atol=2e-2, rtol=0)
    kept = pm(pivot, conflict, stats_of(conflict), shared_threshold=0.9)["weight"]
    filtered = pm(pivot, conflict, stats_of(conflict), shared_threshold=0.9, filter="cosine",
                  filter_threshold=0.5)["weight"]
    assert abs(float(kept[0, 0])) < 0.1 and abs(float(filtered[0, 0])) < 0.1   # they cancel either way
    torch.testing.assert_close(filtered[0, 1:], torch.tensor([2.0, 3.0]), atol=5e-2, rtol=0)


@pytest.mark.parametrize("shared_threshold", [0.0, 0.5, 1.5])
def test_least_squares_consensus_with_no_filter_is_regmean_at_the_extremes(shared_threshold):
    """Every direction shared (threshold 0) or none (> 1): the block least squares is RegMean itself; in
    between it drops the shared/specific cross terms of each domain's Gram, so it differs."""
    pivot, experts, stats = overlapping_case()
    diag = {}
    got = pm(pivot, experts, stats, shared_threshold=shared_threshold, consensus="least_squares", alpha=0.8,
             diagnostics=diag)
    ref = merge("regmean", pivot, experts, alpha=0.8, lam=1.0, calibration=stats)
    gap = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    shared = [layer["shared_directions"] for layer in diag["layers"].values()]
    if shared_threshold in (0.0, 1.5):
        assert gap < 1e-5
    else:
        assert 0 < min(shared) and gap > 1e-3


def test_least_squares_consensus_fits_a_shared_direction_and_its_filter_drops_a_conflict():
    """Two domains share input direction 0 with different spreads on it and a direction of their own each."""
    x_a, x_b = two_domains_sharing_one_direction(shared_scale_a=2.0)
    pivot = {"weight": torch.zeros(1, 3)}
    experts = [{"weight": torch.tensor([[1.0, 2.0, 0.0]])}, {"weight": torch.tensor([[-1.0, 0.0, 3.0]])}]
    stats = [compute_stats(e, x) for e, x in zip(experts, (x_a, x_b))]
    merged = pm(pivot, experts, stats, shared_threshold=0.5, consensus="least_squares")["weight"]
    # the least squares of 4n (1 - w)^2 + n (-1 - w)^2 on the shared coordinate: w = (4 - 1) / (4 + 1)
    torch.testing.assert_close(merged, torch.tensor([[0.6, 2.0, 3.0]]), atol=1e-4, rtol=0)
    filtered = pm(pivot, experts, stats, shared_threshold=0.5, consensus="least_squares", filter="cosine",
                  filter_threshold=0.9)["weight"]
    torch.testing.assert_close(filtered, torch.tensor([[0.0, 2.0, 3.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer_inputs, reference", [("own", "regmean"), ("merged", "regmean_plusplus")])
@pytest.mark.parametrize("shared_threshold", [0.0, 0.5, 1.5])
def test_joint_consensus_without_a_filter_is_regmean(shared_threshold, layer_inputs, reference):
    pivot, experts, stats = overlapping_case()
    got = pm(pivot, experts, stats, shared_threshold=shared_threshold, consensus="joint", alpha=0.8,
             layer_inputs=layer_inputs)
    ref = merge(reference, pivot, experts, alpha=0.8, lam=1.0, calibration=stats)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


def test_joint_consensus_with_the_filter_leaves_a_conflicting_shared_direction_at_the_pivot():
    x_a, x_b = two_domains_sharing_one_direction()
    pivot = {"weight": torch.zeros(1, 3)}
    experts = [{"weight": torch.tensor([[1.0, 2.0, 0.0]])}, {"weight": torch.tensor([[-0.5, 0.0, 3.0]])}]
    stats = [compute_stats(e, x) for e, x in zip(experts, (x_a, x_b))]
    fitted = pm(pivot, experts, stats, shared_threshold=0.5, consensus="joint")["weight"]
    torch.testing.assert_close(fitted, torch.tensor([[0.25, 2.0, 3.0]]), atol=1e-4, rtol=0)
    filtered = pm(pivot, experts, stats, shared_threshold=0.5, consensus="joint", filter="cosine",
                  filter_threshold=0.5)["weight"]
    torch.testing.assert_close(filtered, torch.tensor([[0.0, 2.0, 3.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("consensus", ["least_squares", "joint"])
def test_least_squares_consensus_refuses_the_sign_vote(consensus):
    pivot = projector(0)
    experts = [plus(pivot, projector(1, 0.1))]
    stats = [compute_stats(experts[0], domain([0, 1]))]
    with pytest.raises(Exception, match="filter=sign .*energy_mean"):
        pm(pivot, experts, stats, consensus=consensus, filter="sign")


# ---- consensus: curvature (each expert's K-FAC output factor from its diagonal Fisher) ---------------------
def with_fisher(stats, fishers):
    for s, f in zip(stats, fishers):
        s.fisher = f
    return stats


def test_curvature_on_identical_inputs_is_a_per_row_fisher_weighted_mean():
    """Both domains see the same inputs (shared images): least squares over the inputs can only average the
    experts; the output factor s_ko (the Fisher summed over row o) decides each row's mix."""
    from pivotmerge.pivotmerge_method.sdf_features import OUTPUT_FLOOR
    g = torch.Generator().manual_seed(5)
    x = domain([0, 1, 2, 3, 4, 5])
    pivot = {"weight": torch.randn(HIDDEN, D_IN, generator=g)}
    experts = [{"weight": pivot["weight"] + torch.randn(HIDDEN, D_IN, generator=g)} for _ in range(2)]
    fishers = [{"weight": torch.rand(HIDDEN, D_IN, generator=g) * (torch.arange(HIDDEN) % 2 == i).float()[:, None]}
               for i in range(2)]   # expert 0's loss depends on the even rows only, expert 1's on the odd ones
    stats = with_fisher([compute_stats(e, x) for e in experts], fishers)
    merged = pm(pivot, experts, stats, consensus="curvature", shared_threshold=0.5)["weight"]
    s = torch.stack([f["weight"].double().sum(1) for f in fishers])
    s = s + OUTPUT_FLOOR * s.amax(1, keepdim=True)
    taus = torch.stack([e["weight"].double() - pivot["weight"].double() for e in experts])
    expected = pivot["weight"].double() + (s[:, :, None] * taus).sum(0) / s.sum(0)[:, None]
    torch.testing.assert_close(merged.double(), expected, atol=1e-5, rtol=1e-5)
    # each row is (up to the floor) the expert that owns it; the joint least squares gives their mean
    owner = torch.where((torch.arange(HIDDEN) % 2 == 0)[:, None], experts[0]["weight"], experts[1]["weight"])
    assert float((merged - owner).abs().max()) < 0.02
    joint = pm(pivot, experts, stats, consensus="joint", shared_threshold=0.5)["weight"]
    torch.testing.assert_close(joint, (experts[0]["weight"] + experts[1]["weight"]) / 2, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shared_threshold", [0.0, 0.5, 1.5])
def test_curvature_with_equal_output_factors_is_the_joint_least_squares(shared_threshold):
    """The same Fisher for every expert and row, and Grams of equal trace: the output factor changes nothing."""
    x_a, x_b = two_domains_sharing_one_direction()
    pivot = {"weight": torch.zeros(2, 3)}
    experts = [{"weight": torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]])},
               {"weight": torch.tensor([[-0.5, 0.0, 3.0], [2.0, 0.0, 1.0]])}]
    stats = with_fisher([compute_stats(e, x) for e, x in zip(experts, (x_a, x_b))],
                        [{"weight": torch.ones(2, 3)}] * 2)
    got = pm(pivot, experts, stats, consensus="curvature", shared_threshold=shared_threshold)["weight"]
    ref = pm(pivot, experts, stats, consensus="joint", shared_threshold=shared_threshold)["weight"]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_curvature_keeps_one_expert_and_asks_for_the_fisher_it_lacks():
    pivot = projector(0)
    experts = [plus(pivot, projector(1, 0.3))]
    stats = [compute_stats(experts[0], domain([0, 1, 2, 3, 4, 5]), sample_tokens=100)]
    with pytest.raises(Exception, match="Fisher"):
        pm(pivot, experts, stats, consensus="curvature")
    stats = with_fisher(stats, [{k: torch.rand(v.shape) + 0.1 for k, v in experts[0].items()}])
    merged = pm(pivot, experts, stats, consensus="curvature", layer_inputs="merged")
    for k in pivot:
        torch.testing.assert_close(merged[k], experts[0][k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["regmean", "regmean_plusplus", "fisher", "adamerging", "pivotmerge"])
def test_data_aware_methods_without_statistics_say_what_to_pass(name):
    pivot = projector(0)
    # PivotMerge's default also measures its layer weights on a calibration loss: it names that first
    with pytest.raises(Exception, match="calibration statistics|--stats|needs a calibration_loss"):
        merge(name, pivot, [plus(pivot, projector(1, 0.1))])


@pytest.mark.parametrize("k", [2, 3])
def test_curvature_solve_is_the_per_row_normal_equations(k):
    """Both solvers (two experts: one simultaneous diagonalisation; more: a Cholesky per row) against the
    per-row normal equations solved one row at a time."""
    from pivotmerge.pivotmerge_method.sdf_features import CURVATURE_RIDGE, curvature_solve
    g = torch.Generator().manual_seed(k)
    d, out = 7, 5
    grams = []
    for _ in range(k):
        x = torch.randn(40, d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g, dtype=torch.float64)
        grams.append(x.T @ x)
    taus = [torch.randn(out, d, generator=g, dtype=torch.float64) for _ in range(k)]
    outputs = [torch.rand(out, generator=g, dtype=torch.float64) + 0.01 for _ in range(k)]
    got = curvature_solve(taus, grams, outputs, chunk=2)
    s = torch.stack(outputs)
    s = s / s.sum(0)
    means = [gr / torch.trace(gr) + CURVATURE_RIDGE / d * torch.eye(d, dtype=torch.float64) for gr in grams]
    for o in range(out):
        total = sum(s[i, o] * means[i] for i in range(k))
        rhs = sum(s[i, o] * taus[i][o] @ means[i] for i in range(k))
        torch.testing.assert_close(got[o], torch.linalg.solve(total, rhs), atol=1e-8, rtol=1e-8)


def test_balanced_curvature_ignores_how_steep_each_experts_loss_is_overall():
    """`curvature_balanced` scales each expert's output factor to mean 1: multiplying one expert's Fisher by a
    constant changes `curvature` (that expert pulls harder) but not the balanced reading."""
    pivot, experts, stats = overlapping_case()
    g = torch.Generator().manual_seed(9)
    fishers = [{k: torch.rand(v.shape, generator=g) + 0.1 for k, v in e.items()} for e in experts]
    steeper = [{k: v * (100.0 if i == 0 else 1.0) for k, v in f.items()} for i, f in enumerate(fishers)]
    results = {}
    for name, f in (("same", fishers), ("steeper", steeper)):
        st = with_fisher(stats, f)   # the same statistics, this Fisher
        results[name] = {c: pm(pivot, experts, st, consensus=c, shared_threshold=0.5, layer_inputs="merged")
                         for c in ("curvature", "curvature_balanced")}
    for k in pivot:
        torch.testing.assert_close(results["same"]["curvature_balanced"][k],
                                   results["steeper"]["curvature_balanced"][k], atol=1e-5, rtol=1e-5)
    assert max(float((results["same"]["curvature"][k] - results["steeper"]["curvature"][k]).abs().max())
               for k in pivot) > 1e-3


# ---- consensus: select (the reading chosen per merge on the layer search's loss) ---------------------------
@pytest.mark.parametrize("target", ["curvature", "joint"])
def test_select_keeps_the_reading_whose_merge_the_loss_prefers_and_is_then_that_reading(target):
    """A loss that is the distance to one reading's full merge: select must pick that reading, and its result
    must be what that reading alone gives with the same layer search (bit for bit: same update, same search)."""
    pivot, experts, stats = overlapping_case()
    g = torch.Generator().manual_seed(3)
    stats = with_fisher(stats, [{k: torch.rand(v.shape, generator=g) + 0.1 for k, v in e.items()} for e in experts])
    opts = dict(shared_threshold=0.5, layer_inputs="merged")
    goal = pm(pivot, experts, stats, consensus=target, **opts)
    calls = []

    def loss(state):
        calls.append(1)
        return sum(float((state[k].double() - goal[k].double()).pow(2).sum()) for k in goal)

    diag = {}
    got = pm(pivot, experts, stats, consensus="select", alm="search", calibration_loss=loss, diagnostics=diag,
             **opts)
    select_passes = len(calls)
    assert diag["consensus_selected"] == target == diag["alm_search"]["selected"]
    alone = pm(pivot, experts, stats, consensus=target, alm="search", calibration_loss=loss, **opts)
    for k in pivot:
        assert torch.equal(got[k], alone[k])
    assert loss(got) < 1e-8   # the full merge of the target reading is on the grid (every weight 1)
    # one more reading costs its common weights but not the pivot again (the same state for every reading)
    grid = len(diag["alm_search"]["grid"])
    assert select_passes == (len(calls) - 1 - select_passes) + grid - 1


def test_select_needs_the_layer_search_and_says_so():
    pivot, experts, stats = overlapping_case()
    with pytest.raises(Exception, match="consensus=select .*needs alm=search"):
        pm(pivot, experts, stats, consensus="select", alm="off")
