"""The contract every merge method keeps, generated over the registry (``available()``: every
conf/merge/*.yaml), never over a hand-kept list. A new method is covered the moment its YAML exists.

Checked for every method, at its YAML defaults: keys, order, shapes and dtypes of the pivot kept (integer
buffers copied); inputs untouched; deterministic; experts equal to the pivot give the pivot; the result does
not depend on the experts' order; identical experts; bad inputs and every option given a value of the
wrong kind fail with one MergeConfigError/MergeInputError line naming it; the CLI and the Hydra config give
exactly what ``merge()`` gives. Where the method declares it (its ``@merge_method`` spec next to the function,
see ``pivotmerge.merging.spec.Contract``): one expert gives pivot + scale * tau, the scale option is linear,
K identical experts give the update of one ('mean') or K times it ('sum').
"""

from __future__ import annotations

import pytest
import torch

from pivotmerge.merging import (
    MergeConfigError,
    MergeInputError,
    available,
    conf_dir,
    get_spec,
    method_defaults,
    spec_of,
)
from pivotmerge.merging.calibration import compute_stats
from tests.helpers.merging import merge as merge_call

METHODS = available()
OPTIONS = [(name, option) for name in METHODS for option in method_defaults(name)]
RTOL, ATOL = 1e-4, 1e-5  # float32 arithmetic; SVD-based methods sum in a different order


def make(k=3, seed=0, dtype=torch.float32):
    """A two-layer projector (ranks 5 and 6, so that every expert keeps a share of the SVD methods' rank)
    with biases and an integer buffer, and ``k`` experts around it."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (8, 5), "0.bias": (8,), "2.weight": (6, 8), "2.bias": (6,)}
    pivot = {n: torch.randn(s, generator=g).to(dtype) for n, s in shapes.items()}
    pivot["steps"] = torch.tensor(7)
    experts = [{n: (v + torch.randn(v.shape, generator=g).to(dtype)) if v.is_floating_point() else v.clone()
                for n, v in pivot.items()} for _ in range(k)]
    return pivot, experts


def synthetic_stats(expert, fisher: bool):
    """Calibration statistics of one expert on a domain of its own: inputs drawn from a generator seeded by the
    expert's weights, so that the statistics travel with the expert (permutations, identical copies)."""
    import hashlib

    digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in expert.values() if v.is_floating_point()))
    seed = int.from_bytes(digest.digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    d_in = expert["0.weight"].shape[1]
    stats = compute_stats({k: v.float() for k, v in expert.items() if v.is_floating_point()},
                          torch.randn(40, d_in, generator=g) + torch.randn(d_in, generator=g), sample_tokens=32)
    if fisher:
        stats.fisher = {k: torch.rand(v.shape, generator=g) + 0.1 for k, v in expert.items() if v.is_floating_point()}
    return stats


def away_from(pivot):
    """A calibration loss that rewards moving away from the pivot: a method that measures its layer weights on
    it (PivotMerge's alm=search) keeps every layer's full update, so the contract's algebra applies as written."""
    def loss(state):
        moved = [(state[k].double() - pivot[k].double()).norm() for k in pivot if pivot[k].is_floating_point()]
        return -float(sum(moved))
    return loss


def extras(spec, pivot, experts, given=()):
    """What the pipeline would pass besides the options: statistics, the calibration loss."""
    out = {}
    valid = isinstance(experts, list) and all(isinstance(e, dict) and "0.weight" in e for e in experts)
    if "calibration" in spec.takes and "calibration" not in given and valid:
        out["calibration"] = [synthetic_stats(e, spec.fisher) for e in experts]
    if "calibration_loss" in spec.takes and "calibration_loss" not in given:
        out["calibration_loss"] = away_from(pivot)
    return out


def merge(name, pivot, experts, **overrides):
    """The one merge call, with calibration statistics and loss for the data-aware methods."""
    return merge_call(name, pivot, experts, **overrides, **extras(get_spec(name), pivot, experts, overrides))


def close(a, b, rtol=RTOL, atol=ATOL):
    assert list(a) == list(b)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def update(merged, pivot):
    return {k: merged[k].double() - pivot[k].double() for k in pivot if pivot[k].is_floating_point()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", METHODS)
def test_keys_order_shapes_and_dtypes_of_the_pivot_are_kept(name, dtype):
    pivot, experts = make(2, dtype=dtype)
    m = merge(name, pivot, experts)
    assert list(m) == list(pivot)
    assert all(m[k].dtype == pivot[k].dtype and m[k].shape == pivot[k].shape for k in pivot)
    assert torch.equal(m["steps"], pivot["steps"])
    assert all(torch.isfinite(m[k].float()).all() for k in m)


@pytest.mark.parametrize("name", METHODS)
def test_inputs_are_not_mutated_and_the_result_is_deterministic(name):
    pivot, experts = make(3)
    before = [{k: v.clone() for k, v in sd.items()} for sd in [pivot, *experts]]
    a = merge(name, pivot, experts)
    b = merge(name, pivot, experts)
    for sd, ref in zip([pivot, *experts], before):
        assert all(torch.equal(sd[k], ref[k]) for k in sd)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", METHODS)
def test_experts_equal_to_the_pivot_give_the_pivot(name):
    pivot, _ = make(1)
    m = merge(name, pivot, [dict(pivot), {k: v.clone() for k, v in pivot.items()}])
    assert all(torch.equal(m[k], pivot[k]) for k in pivot)


@pytest.mark.parametrize("name", METHODS)
def test_order_of_the_experts_does_not_matter(name):
    opts = dict(get_spec(name).contract.symmetric)
    pivot, experts = make(4)
    close(merge(name, pivot, experts, **opts), merge(name, pivot, [experts[i] for i in (2, 0, 3, 1)], **opts))


@pytest.mark.parametrize("name", METHODS)
def test_identical_experts(name):
    c = get_spec(name).contract
    opts = dict(c.symmetric)
    pivot, experts = make(1)
    many = merge(name, pivot, [experts[0]] * 3, **opts)
    if c.identical is None:  # nothing simpler than the method itself; degenerate input must stay finite
        assert all(torch.isfinite(many[k]).all() for k in many)
        return
    one = merge(name, pivot, experts, **opts)
    factor = 1.0 if c.identical == "mean" else 3.0
    close(update(many, pivot), {k: factor * v for k, v in update(one, pivot).items()})


@pytest.mark.parametrize("name", METHODS)
def test_one_expert_gives_pivot_plus_scaled_task_vector(name):
    c = get_spec(name).contract
    if c.one_expert is None:
        pytest.skip(f"{name}: one expert is not merged to pivot + scale * tau by definition")
    pivot, experts = make(1)
    opts = dict(c.one_expert)
    scale = 1.0
    if c.scale is not None:
        scale = opts[c.scale] = 0.7
    m = merge(name, pivot, experts, **opts)
    close(m, {k: (v + scale * (experts[0][k] - v)) if v.is_floating_point() else v for k, v in pivot.items()})


@pytest.mark.parametrize("name", METHODS)
def test_scale_option_scales_the_update(name):
    c = get_spec(name).contract
    if c.scale is None:
        pytest.skip(f"{name} has no scale option")
    pivot, experts = make(3)
    small = update(merge(name, pivot, experts, **{c.scale: 0.5}), pivot)
    large = update(merge(name, pivot, experts, **{c.scale: 1.5}), pivot)
    close(large, {k: 3 * v for k, v in small.items()})


def _wrong_kind(default):
    if isinstance(default, bool):
        return "yes"
    if isinstance(default, int):
        return 0.5
    if isinstance(default, float):
        return "x"
    if isinstance(default, str):
        return "no-such-choice"
    return "x"  # lists and anything else


@pytest.mark.parametrize("name,option", OPTIONS)
def test_a_bad_option_value_is_one_clean_error_naming_it(name, option):
    pivot, experts = make(2)
    with pytest.raises(MergeConfigError) as err:
        merge(name, pivot, experts, **{option: _wrong_kind(method_defaults(name)[option])})
    assert option in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_options_and_bad_inputs_are_clean_errors(name):
    pivot, experts = make(2)
    with pytest.raises(MergeConfigError, match="unknown option"):
        merge(name, pivot, experts, no_such_option=1)
    with pytest.raises(MergeInputError, match="at least 1 expert"):
        merge(name, pivot, [])
    bad = {k: v for k, v in experts[1].items() if k != "2.bias"}
    with pytest.raises(MergeInputError, match="expert 1.*missing '2.bias'"):
        merge(name, pivot, [experts[0], bad])
    bad = dict(experts[1], **{"0.weight": experts[1]["0.weight"].clone()})
    bad["0.weight"][1, 1] = float("nan")
    with pytest.raises(MergeInputError, match="expert 1: tensor '0.weight' has 1 NaN/Inf"):
        merge(name, pivot, [experts[0], bad])


@pytest.mark.parametrize("name", METHODS)
def test_cli_round_trip(name, tmp_path, capsys):
    from pivotmerge.cli import main
    from pivotmerge.io import load_state_dict, save_state_dict

    pivot, experts = make(2)
    pivot.pop("steps")
    experts = [{k: v for k, v in e.items() if k != "steps"} for e in experts]
    save_state_dict(pivot, tmp_path / "pivot.safetensors")
    for i, e in enumerate(experts):
        save_state_dict(e, tmp_path / f"e{i}.safetensors")
    out = tmp_path / "merged.safetensors"
    stats_args, extra = [], {}
    if "calibration" in get_spec(name).takes:
        from pivotmerge.merging.calibration import save_stats

        extra["calibration"] = [synthetic_stats(e, get_spec(name).fisher) for e in experts]
        stats_args = ["--stats"] + [str(save_stats(s, tmp_path / f"e{i}.stats.safetensors"))
                                    for i, s in enumerate(extra["calibration"])]
    cli = dict(get_spec(name).contract.cli)   # what the CLI needs where it has no calibration loss
    rc = main(["merge", name, *(f"{k}={v}" for k, v in cli.items()), "--base", str(tmp_path / "pivot.safetensors"),
               "--experts", str(tmp_path / "e0.safetensors"), str(tmp_path / "e1.safetensors"), "--out", str(out),
               *stats_args])
    assert rc == 0, capsys.readouterr().err
    got, ref = load_state_dict(out), merge(name, pivot, experts, **extra, **cli)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert f"pivotmerge merge: {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", METHODS)
def test_hydra_config_gives_what_merge_gives(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    fn = instantiate(OmegaConf.load(conf_dir() / f"{name}.yaml"))
    pivot, experts = make(2)
    extra = extras(spec_of(fn), pivot, experts)
    a, b = fn(pivot, experts, **extra), merge(name, pivot, experts, **extra)
    assert all(torch.equal(a[k], b[k]) for k in a)
