"""TSV-M, Iso-C, Iso-CTS and WUDI: equal to FusionBench's tensor functions (the reference implementations
the papers point to), to references written from the papers' equations, and to hand-computed answers."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from tests.helpers.merging import merge


@pytest.fixture(scope="module")
def fb():
    """FusionBench 0.2.33's pure tensor functions (the dev extra pins it)."""
    tsvm = pytest.importorskip("fusion_bench.method.task_singular_vector.utils.TSVM_utils",
                               reason="fusion-bench (dev extra) is not importable")
    iso = pytest.importorskip("fusion_bench.method.isotropic_merging.iso_utils")
    wudi = pytest.importorskip("fusion_bench.method.wudi.wudi")

    def quiet(fn, *args, **kw):  # its functions print per key
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = fn(*args, **kw)
        return {k: v.detach() for k, v in out.items()}

    return {
        "tsv_m": lambda tvs: quiet(tsvm.compute_and_sum_svd_mem_reduction, tvs, accelerator="cpu"),
        "iso_c": lambda tvs: quiet(iso.iso_c, tvs, accelerator="cpu"),
        "iso_cts": lambda tvs, f: quiet(iso.iso_cts, tvs, f, accelerator="cpu"),
        "wudi": lambda tvs, n: quiet(wudi.wudi_merging, tvs, accelerator="cpu", iter_num=n),
    }


def make(shape, k, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    pivot = {"0.weight": torch.randn(shape, generator=g, dtype=dtype),
             "0.bias": torch.randn(shape[0], generator=g, dtype=dtype)}
    experts = [{n: v + scale * torch.randn(v.shape, generator=g, dtype=dtype) for n, v in pivot.items()}
               for _ in range(k)]
    return pivot, experts, [{n: e[n] - pivot[n] for n in pivot} for e in experts]


def assert_merged(ours, pivot, ref_update, scale=1.0, rtol=1e-6):
    for n in pivot:
        expected = pivot[n] + scale * ref_update[n]
        torch.testing.assert_close(ours[n], expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


SHAPES = [(12, 8), (8, 12), (10, 10)]  # tall, wide (Iso-CTS's small-residual path), square


# ------------------------------------------------------------------------------ FusionBench oracles
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_tsv_m_equals_fusion_bench(fb, shape, k, dtype, rtol):
    pivot, experts, tvs = make(shape, k, seed=k, dtype=dtype)
    assert_merged(merge("tsv_m", pivot, experts, alpha=0.8), pivot, fb["tsv_m"](tvs), 0.8, rtol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_iso_c_equals_fusion_bench(fb, shape, k, dtype, rtol):
    pivot, experts, tvs = make(shape, k, seed=10 + k, dtype=dtype)
    assert_merged(merge("iso_c", pivot, experts, alpha=1.3), pivot, fb["iso_c"](tvs), 1.3, rtol)


@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.3, 1.0])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_iso_cts_equals_fusion_bench(fb, shape, k, fraction):
    pivot, experts, tvs = make(shape, k, seed=20 + k)
    ours = merge("iso_cts", pivot, experts, common_space_fraction=fraction, alpha=1.5)
    assert_merged(ours, pivot, fb["iso_cts"](tvs, fraction), 1.5)


def test_iso_cts_float32_equals_fusion_bench(fb):
    pivot, experts, tvs = make((10, 10), 3, seed=3, dtype=torch.float32)
    assert_merged(merge("iso_cts", pivot, experts), pivot, fb["iso_cts"](tvs, 0.8), 1.0, 1e-4)


@pytest.mark.parametrize("shape,steps", [((12, 8), 60), ((8, 12), 100), ((10, 10), 30)])
def test_wudi_adam_is_the_papers_optimisation_as_in_fusion_bench(fb, shape, steps):
    # task vectors of 1e-3, as after fine-tuning: the paper's lr 1e-5 moves them noticeably in these steps
    pivot, experts, tvs = make(shape, 3, seed=1, dtype=torch.float32, scale=1e-3)
    ours = merge("wudi", pivot, experts, solver="adam", steps=steps, lr=1e-5)
    ref = fb["wudi"](tvs, steps)
    moved = float((ref["0.weight"] - sum(t["0.weight"] for t in tvs)).abs().max())
    assert moved > 1e-4  # the optimisation did something to compare
    assert_merged(ours, pivot, ref, 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------------------- WUDI
def wudi_reference(taus):
    """argmin_T sum_k ||(T - tau_k) tau_k^T||^2 / ||tau_k||^2 as one float64 least-squares problem:
    ||T M^T - C||^2 with M = [tau_k / ||tau_k||] (stacked rows), C = [tau_k tau_k^T / ||tau_k||]."""
    taus = [t.double() for t in taus]
    m = torch.cat([t / t.norm() for t in taus], 0)
    c = torch.cat([t @ t.T / t.norm() for t in taus], 1)
    return torch.linalg.lstsq(m, c.T).solution.T


@pytest.mark.parametrize("shape", [(12, 8), (10, 10), (16, 4)])
def test_wudi_closed_form_solves_the_papers_objective(shape):
    pivot, experts, tvs = make(shape, 3, seed=4, dtype=torch.float32)
    diag = {}
    ours = merge("wudi", pivot, experts, lam=0.6, diagnostics=diag)
    ref = wudi_reference([t["0.weight"] for t in tvs])
    torch.testing.assert_close(ours["0.weight"].double(), pivot["0.weight"].double() + 0.6 * ref,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["0.bias"], pivot["0.bias"] + 0.6 * sum(t["0.bias"] for t in tvs) / 3)
    obj = diag["layers"]["0"]["wudi_objective"]["0.weight"]
    assert 0 <= obj["final"] < obj["initial"]


def test_wudi_closed_form_equals_the_optimised_one():
    """The paper's optimiser (Adam, lr 1e-5, 300 steps from sum_k tau_k; equal to FusionBench's, tested
    above) converges to the closed form on task vectors of the size its learning rate is made for."""
    pivot, experts, tvs = make((10, 10), 3, seed=5, dtype=torch.float32, scale=1e-4)
    closed = merge("wudi", pivot, experts)
    adam = merge("wudi", pivot, experts, solver="adam", steps=300, lr=1e-5)
    start = pivot["0.weight"] + sum(t["0.weight"] for t in tvs)
    assert float((closed["0.weight"] - start).abs().max()) > 5e-5  # the optimum is far from the start
    torch.testing.assert_close(adam["0.weight"], closed["0.weight"], rtol=0, atol=2e-6)


def test_wudi_adam_converges_to_the_closed_form_on_larger_task_vectors():
    pivot, experts, tvs = make((6, 4), 3, seed=6, dtype=torch.float64)
    closed = merge("wudi", pivot, experts)
    adam = merge("wudi", pivot, experts, solver="adam", steps=4000, lr=1e-3)
    start = pivot["0.weight"] + sum(t["0.weight"] for t in tvs)
    assert float((closed["0.weight"] - start).abs().max()) > 1.0
    torch.testing.assert_close(adam["0.weight"], closed["0.weight"], rtol=0, atol=1e-2)  # Adam's noise ~ lr


def test_wudi_rank_deficient_layer_keeps_the_start_where_the_objective_is_silent():
    # one expert of rank 1: only its row space is determined; T = tau there, and nothing is added elsewhere
    pivot = {"w": torch.zeros(3, 4, dtype=torch.float64)}
    tau = torch.outer(torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 0.0, 1.0, -2.0])).double()
    m = merge("wudi", pivot, [{"w": tau}, {"w": 2 * tau}])
    # both experts span the same direction: the objective pins T to the line of tau (T = 1.5 tau)
    torch.testing.assert_close(m["w"], wudi_reference([tau, 2 * tau]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m["w"], 1.5 * tau, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(m["w"]).all()


# ------------------------------------------------------------------------------------ TSV-M, Iso
def test_tsv_m_of_experts_in_orthogonal_subspaces_is_task_arithmetic():
    # rank-1 task matrices with orthogonal left and right vectors: already orthogonal, TSV-M keeps them
    e = torch.eye(4, dtype=torch.float64)
    taus = [3 * torch.outer(e[0], e[1]), -2 * torch.outer(e[2], e[3])]
    pivot = {"w": torch.ones(4, 4, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
    experts = [{"w": 1 + t, "b": torch.full((4,), float(i)).double()} for i, t in enumerate(taus)]
    m = merge("tsv_m", pivot, experts, alpha=0.5)
    torch.testing.assert_close(m["w"], 1 + 0.5 * (taus[0] + taus[1]))
    torch.testing.assert_close(m["b"], torch.full((4,), 0.25).double())  # alpha * mean of (0, 1)


def test_tsv_m_of_identical_experts_is_the_truncated_task_matrix():
    pivot, experts, tvs = make((8, 6), 1, seed=7)
    u, s, vh = torch.linalg.svd(tvs[0]["0.weight"], full_matrices=False)
    m = merge("tsv_m", pivot, experts * 3)  # each copy keeps the top 6 // 3 = 2 triplets
    torch.testing.assert_close(m["0.weight"], pivot["0.weight"] + (u[:, :2] * s[:2]) @ vh[:2])
    torch.testing.assert_close(m["0.bias"], experts[0]["0.bias"])


def test_iso_c_known_answer_and_identical_experts():
    pivot = {"w": torch.zeros(2, 2, dtype=torch.float64)}
    experts = [{"w": torch.tensor([[2.0, 0.0], [0.0, 0.0]]).double()},
               {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]]).double()}]
    # Delta = diag(3, 1): singular values (3, 1) -> both 2
    torch.testing.assert_close(merge("iso_c", pivot, experts)["w"], 2 * torch.eye(2).double())
    pivot, experts, _ = make((6, 5), 1, seed=8)
    one, three = merge("iso_c", pivot, experts), merge("iso_c", pivot, experts * 3)
    torch.testing.assert_close(three["0.weight"] - pivot["0.weight"], 3 * (one["0.weight"] - pivot["0.weight"]))
    torch.testing.assert_close(three["0.bias"], one["0.bias"])  # biases: mean task vector


@pytest.mark.parametrize("shape", SHAPES)
def test_iso_cts_with_the_whole_rank_common_is_iso_c(shape):
    pivot, experts, _ = make(shape, 3, seed=9)
    a = merge("iso_cts", pivot, experts, common_space_fraction=1.0, alpha=0.7)
    b = merge("iso_c", pivot, experts, alpha=0.7)
    for n in pivot:
        torch.testing.assert_close(a[n], b[n])


def test_iso_cts_split_of_the_rank_follows_the_authors_code():
    from baselines.iso import split_ranks

    assert split_ranks(4096, 4, 0.8) == (3276, 205)  # LLaVA-1.5-7B 2.weight
    assert split_ranks(1024, 4, 0.8) == (820, 51)    # 0.weight: the task total rounds to a multiple of K
    assert split_ranks(10, 3, 0.8) == (7, 1) and split_ranks(3, 4, 0.0) == (3, 0)
    # where the authors' rounding would need more task directions than the rank, n_t is capped at r // K
    # (their code then indexes the common space with a negative count)
    assert split_ranks(8, 3, 0.0) == (2, 2)
