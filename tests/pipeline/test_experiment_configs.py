"""Every experiment config composes, and what it promises holds at the config level."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pivotmerge.merging.registry import import_target
from pivotmerge.pipeline.merge import candidate_options, expand_variants, search_grid
from tests.helpers import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _cfg(experiment, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_its_search_grids_name_real_options(experiment):
    cfg = _cfg(experiment)
    assert cfg.experiment_name == experiment
    methods = expand_variants(cfg)
    assert methods, "an experiment without merge methods"
    for name, method in methods.items():
        grid = search_grid(cfg, name, import_target(method._target_))
        if not grid:
            continue
        base = {k: v for k, v in OmegaConf.to_container(method, resolve=True).items() if not k.startswith("_")}
        candidates = candidate_options(base, grid, int(cfg.merge_search.budget))
        assert candidates[0] == base and len(candidates) == int(cfg.merge_search.budget)


def test_paper_table_searches_every_method_with_the_same_budget():
    cfg = _cfg("paper_table")
    assert list(cfg.seeds) == [0, 1, 2] and cfg.scenario.joint.enabled
    grids = {name: search_grid(cfg, name, import_target(method._target_)) for name, method in cfg.merge.items()}
    assert {k for k, grid in grids.items() if grid} == {k for k in cfg.merge if k != "average"}   # average: no option
    scales = {"tsv_m": "alpha", "iso_c": "alpha", "iso_cts": "alpha", "adamerging": "init"}   # lam for the rest
    assert {k: grid for k, grid in grids.items() if grid} == {
        k: {scales.get(k, "lam"): [0.3, 0.5, 0.7, 1.0]} for k in cfg.merge if k != "average"}
    assert not cfg.merge_search.grids   # implied by each method's spec, not written per method


def test_ablation_variants_inherit_the_experiments_settings_of_their_base():
    methods = expand_variants(_cfg("ablation_components", "merge.pivotmerge.lam=0.3"))
    base = OmegaConf.to_container(methods["pivotmerge"])
    assert base["lam"] == 0.3
    for name, switched in {"pm_no_shared_space": {"shared_threshold": 2.0}, "pm_no_filter": {"filter": "none"},
                           "pm_own_layer_inputs": {"layer_inputs": "own"}, "pm_all_shared": {"shared_threshold": 0.0},
                           "pm_alm_data": {"alm": "data", "consensus": "curvature"}}.items():
        assert OmegaConf.to_container(methods[name]) == {**base, **switched}, name


def test_regime_map_covers_every_axis_and_each_regime_passes_preflight(tmp_path):
    from pivotmerge import preflight
    from pivotmerge.pipeline.regimes import regime_configs

    cfg = _cfg("regime_map", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
               f"paths.output_dir={tmp_path}/out", f"paths.models_dir={tmp_path}/models")
    regimes = regime_configs(cfg)
    axes = {(r.scenario.pivot.data, tuple(r.scenario.sources), r.scenario.experts.start) for r in regimes.values()}
    assert {a[0] for a in axes} == {"experts", "general"}
    assert {("easyvqa_shape", "easyvqa_color"), ("digits", "emoji", "animals", "charts")} <= {a[1] for a in axes}
    assert {a[2] for a in axes} == {"from_pivot", "independent"}
    assert {r.align for r in regimes.values()} == {"none", "weights"}
    paper = _cfg("paper_table")
    for regime in regimes.values():   # the same methods and the same search budget in every regime
        assert set(regime.merge) == set(paper.merge) and regime.merge_search.budget == paper.merge_search.budget
        assert all(regime.merge_search.grids[m] == grid for m, grid in paper.merge_search.grids.items())
        assert regime.merge_search.scale_values == paper.merge_search.scale_values
    preflight.check(regimes["general_shared_independent_aligned"])   # every axis off its default at once
