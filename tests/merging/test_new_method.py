"""A new merge method is one Python file (the function under @merge_method) and one YAML (conf/merge/<name>.yaml):
nothing else is edited, and the one merge call, the registry, the preflight and the search grid all know it.
Shown for a data-free and a data-aware method, written to a tmp folder like a user would."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pivotmerge.merging import MergeConfigError, MergeInputError, available, merge, needs_calibration, registry
from pivotmerge.merging.calibration import compute_stats
from pivotmerge.pipeline.merge import search_grid
from pivotmerge.preflight.merges import check_merges
from pivotmerge.preflight.schema import PreflightError

DATA_FREE = '''
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import apply_update, finalize, float_keys, mean_task_vector
from pivotmerge.merging.spec import merge_method, number


@merge_method("half_mean", options={"lam": number()}, scale="lam", one_expert={}, identical="mean")
def half_mean_merge(pivot, experts, o, *, diagnostics=None):
    validate_inputs(pivot, experts, method="half_mean")
    return finalize(pivot, {k: apply_update(pivot[k], mean_task_vector(pivot, experts, k), o.lam)
                            for k in float_keys(pivot)})
'''

DATA_AWARE = '''
from pivotmerge.merging.calibration import check_stats, linear_layers
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import apply_update, finalize, float_keys
from pivotmerge.merging.spec import fraction, merge_method, number


@merge_method("count_weighted", options={"lam": number(), "floor": fraction()}, scale="lam", one_expert={},
              identical="mean", statistics=True)
def count_weighted_merge(pivot, experts, o, *, calibration=None, diagnostics=None):
    """Task vectors weighted by how many calibration tokens each expert's domain has (at least `floor` each)."""
    validate_inputs(pivot, experts, method="count_weighted")
    stats = check_stats(calibration, len(experts), "count_weighted")
    counts = [max(s.counts[linear_layers(pivot)[0]], 1) for s in stats]
    weights = [max(c / sum(counts), o.floor) for c in counts]
    weights = [w / sum(weights) for w in weights]
    update = {k: sum(w * (e[k].double() - pivot[k].double()) for w, e in zip(weights, experts))
              for k in float_keys(pivot)}
    return finalize(pivot, {k: apply_update(pivot[k], u, o.lam) for k, u in update.items()})
'''


@pytest.fixture
def new_method(tmp_path, monkeypatch):
    """Write one Python file and one YAML into a copy of conf/merge/; returns the folder of the YAMLs."""
    folder = tmp_path / "conf"
    folder.mkdir()
    for path in registry.conf_dir().glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "conf_dir", lambda: folder)

    def write(module: str, source: str, name: str, target: str, options: str):
        (tmp_path / f"{module}.py").write_text(source)
        (folder / f"{name}.yaml").write_text(f"# @package merge.{name}\n_target_: {module}.{target}\n"
                                             f"_partial_: true\n{options}")
        return folder / f"{name}.yaml"

    return write


def make(k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    pivot = {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g)}
    return pivot, [{n: v + torch.randn(v.shape, generator=g) for n, v in pivot.items()} for _ in range(k)]


def preflight_config(name: str, yaml_path, **method_options):
    """The keys of a run config the preflight's merge check reads, with `name` selected and the paper table's
    scale search on."""
    method = OmegaConf.merge(OmegaConf.load(yaml_path), method_options)
    return OmegaConf.create({"merge": {name: method}, "merge_variants": None, "align": "none",
                             "merge_search": {"enabled": True, "budget": 3, "grids": {},
                                              "scale_values": [0.3, 0.7]}})


def test_a_data_free_method_is_one_python_file_and_one_yaml(new_method):
    yaml_path = new_method("my_half_mean", DATA_FREE, "half_mean", "half_mean_merge", "lam: 0.5\n")
    assert "half_mean" in available() and not needs_calibration("half_mean")
    pivot, experts = make()
    merged = merge("half_mean", pivot, experts)   # the YAML's lam: 0.5
    mean_tau = (experts[0]["0.bias"] + experts[1]["0.bias"]) / 2 - pivot["0.bias"]
    torch.testing.assert_close(merged["0.bias"], pivot["0.bias"] + 0.5 * mean_tau)
    doubled = merge("half_mean", pivot, experts, {"lam": 2.0})
    torch.testing.assert_close(doubled["0.bias"], pivot["0.bias"] + 2 * mean_tau)
    with pytest.raises(MergeConfigError, match="half_mean: option lam must be a finite number, got 'x'"):
        merge("half_mean", pivot, experts, {"lam": "x"})
    with pytest.raises(MergeConfigError, match="does not take calibration"):
        merge("half_mean", pivot, experts, statistics=[])
    # the scale search needs no grid of its own, and the preflight runs every candidate
    cfg = preflight_config("half_mean", yaml_path)
    assert search_grid(cfg, "half_mean", registry.get_method("half_mean")) == {"lam": [0.3, 0.7]}
    check_merges(cfg, n_experts=2)
    with pytest.raises(PreflightError, match="config merge.half_mean: half_mean: option lam must be a finite number"):
        check_merges(preflight_config("half_mean", yaml_path, lam="big"), n_experts=2)


def test_a_data_aware_method_is_one_python_file_and_one_yaml(new_method):
    yaml_path = new_method("my_count_weighted", DATA_AWARE, "count_weighted", "count_weighted_merge",
                           "lam: 1.0\nfloor: 0.0\n")
    assert needs_calibration("count_weighted")
    pivot, experts = make()
    g = torch.Generator().manual_seed(1)
    stats = [compute_stats(e, torch.randn(rows, 4, generator=g), sample_tokens=8) for e, rows in zip(experts, (10, 30))]
    merged = merge("count_weighted", pivot, experts, statistics=stats)
    expected = pivot["0.bias"] + 0.25 * (experts[0]["0.bias"] - pivot["0.bias"]) \
        + 0.75 * (experts[1]["0.bias"] - pivot["0.bias"])
    torch.testing.assert_close(merged["0.bias"], expected)
    floored = merge("count_weighted", pivot, experts, {"floor": 0.8, "lam": 0.5}, statistics=stats)
    torch.testing.assert_close(floored["0.bias"], pivot["0.bias"] + 0.25 * sum(e["0.bias"] - pivot["0.bias"]
                                                                               for e in experts))
    with pytest.raises(MergeInputError, match="count_weighted is data-aware: it needs calibration statistics"):
        merge("count_weighted", pivot, experts)
    with pytest.raises(MergeConfigError, match=r"count_weighted: option floor=1.5 is outside \[0, 1\]"):
        merge("count_weighted", pivot, experts, {"floor": 1.5}, statistics=stats)
    cfg = preflight_config("count_weighted", yaml_path)   # synthetic statistics reach it
    assert search_grid(cfg, "count_weighted", registry.get_method("count_weighted")) == {"lam": [0.3, 0.7]}
    check_merges(cfg, n_experts=2)
    with pytest.raises(PreflightError, match="config merge.count_weighted: count_weighted: option floor=-1"):
        check_merges(preflight_config("count_weighted", yaml_path, floor=-1), n_experts=2)
