"""The merge registry: conf/merge/<name>.yaml is the only list of methods and the only copy of defaults; each
method's spec (@merge_method) the only copy of its options' kinds; pivotmerge.merging.merge the one call."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch

from pivotmerge.merging import (
    MergeConfigError,
    available,
    conf_dir,
    get_method,
    get_spec,
    merge,
    method_defaults,
    needs_calibration,
    registry,
)
from pivotmerge.merging.registry import load_config
from pivotmerge.merging.spec import EXTRAS
from tests.helpers import REPO

METHODS = available()


def make(k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    pivot = {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g)}
    return pivot, [{n: v + torch.randn(v.shape, generator=g) for n, v in pivot.items()} for _ in range(k)]


def test_the_methods_are_the_yaml_files():
    assert METHODS == sorted(p.stem for p in conf_dir().glob("*.yaml"))
    assert {"average", "task_arithmetic", "ties", "dare_ta", "dare_ties", "pivotmerge",
            "tsv_m", "iso_c", "iso_cts", "wudi"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_config_names_a_method_whose_spec_options_are_exactly_its_keys(name):
    path = conf_dir() / f"{name}.yaml"
    # Hydra 1.3 has no `_group_`/`_name_` package keywords any more: each file names its own node
    assert path.read_text().startswith(f"# @package merge.{name}\n")
    cfg = load_config(name)
    spec = get_spec(name)
    assert list(cfg.defaults) == list(spec.options), "YAML keys != the spec's options (same order)"
    # the function takes the checked options as one argument, and only the inputs its spec says it takes
    params = inspect.signature(get_method(name).function).parameters
    assert list(params)[:3] == ["pivot", "experts", "o"]
    assert set(params) - {"pivot", "experts", "o"} == set(spec.takes) <= set(EXTRAS)
    assert all(params[extra].default is None for extra in spec.takes), "inputs supplied by callers default to None"
    # the declared contract and search name real options, and the YAML's values pass the spec's checks
    c = spec.contract
    for key in [c.scale, spec.search] + list(c.one_expert or {}) + list(c.symmetric) + list(c.cli):
        assert key is None or key in cfg.defaults, f"spec of {name} names {key!r}, not an option"
    assert dict(spec.checked(cfg.defaults)) == cfg.defaults


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_method_imports_another_method():
    modules = {load_config(name).target.rpartition(".")[0] for name in METHODS}
    for mod in modules:
        path = Path(sys.modules[mod].__file__) if mod in sys.modules else REPO / (mod.replace(".", "/") + ".py")
        others = {m for m in modules if m != mod}
        bad = {i for i in _imports(path) if i in others or i.startswith("baselines")}
        assert not bad, f"{mod} imports {bad}: shared pieces belong in pivotmerge/merging/ops.py"


def test_only_the_registry_knows_where_the_configs_are():
    offenders = []
    for folder in ("pivotmerge", "baselines", "eval", "experiments", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            if path.name != "registry.py" and ('"conf" / "merge"' in text or '"conf/merge"' in text):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"use pivotmerge.merging.registry.conf_dir() instead: {offenders}"


def test_merge_takes_defaults_from_the_yaml_and_overrides_from_the_caller():
    pivot, experts = make()
    fn = get_method("ties")
    defaults = method_defaults("ties")
    assert defaults == {"density": 0.2, "scope": "global", "sign": "sum", "combine": "mean", "lam": 1.0}
    a = merge("ties", pivot, experts, {"lam": 0.5})
    b = fn(pivot, experts, **{**defaults, "lam": 0.5})
    assert all(torch.equal(a[k], b[k]) for k in pivot)
    method_defaults("ties")["lam"] = 7.0  # callers get a copy
    assert method_defaults("ties")["lam"] == 1.0


def test_unknown_method_option_and_extra_are_clean_errors():
    pivot, experts = make()
    with pytest.raises(MergeConfigError, match="unknown merge method 'nope'; available: adamerging, average, "):
        merge("nope", pivot, experts)
    with pytest.raises(MergeConfigError, match="unknown option.*densty.*valid options: combine, density"):
        merge("ties", pivot, experts, {"densty": 0.3})
    with pytest.raises(MergeConfigError, match="does not take calibration_loss"):
        merge("ties", pivot, experts, calibration_loss=lambda sd: 0.0)
    with pytest.raises(MergeConfigError, match="does not take calibration"):
        merge("ties", pivot, experts, statistics=[])
    with pytest.raises(MergeConfigError, match="merge method must be a name"):
        get_method("../conf/merge/ties")


def test_needs_calibration_reads_the_spec_under_the_options():
    data_aware_methods = {"adamerging", "fisher", "pivotmerge", "regmean", "regmean_plusplus"}
    assert {name for name in METHODS if needs_calibration(name)} == data_aware_methods
    # pivotmerge_data_free shares pivotmerge's function: its task-vector reading needs no statistics
    assert "calibration" in get_spec("pivotmerge_data_free").takes
    assert needs_calibration("pivotmerge_data_free", {"sdf_space": "features"})
    assert not needs_calibration("pivotmerge", {"sdf_space": "task_vectors"})
    assert not needs_calibration("pivotmerge", {"sdf": False})
    assert get_spec("fisher").fisher and not get_spec("regmean").fisher
    # the Fisher only for the reading that reads it, so the other readings keep their cache keys
    pm_defaults = method_defaults("pivotmerge")
    assert not get_spec("pivotmerge").needs_fisher({**pm_defaults, "consensus": "joint"})
    assert get_spec("pivotmerge").needs_fisher({**pm_defaults, "consensus": "curvature"})
    assert get_spec("pivotmerge").needs_fisher({**pm_defaults, "consensus": "select"})   # curvature is a candidate
    assert not get_spec("pivotmerge").needs_fisher({**pm_defaults, "consensus": "curvature", "sdf": False})
    assert get_spec("pivotmerge").needs_calibration_loss(method_defaults("pivotmerge"))
    assert not get_spec("pivotmerge_data_free").needs_calibration_loss(method_defaults("pivotmerge_data_free"))


def test_a_config_with_a_wrong_target_is_one_line_naming_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    (tmp_path / "my_method.py").write_text("def undeclared_merge(pivot, experts, *, lam, diagnostics=None):\n"
                                           "    return dict(pivot)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "conf_dir", lambda: folder)
    pivot, experts = make()
    (folder / "broken.yaml").write_text("# @package merge.broken\n_target_: my_method.nope\n_partial_: true\n")
    with pytest.raises(MergeConfigError, match=r"broken.yaml: _target_ 'my_method.nope' cannot be imported"):
        merge("broken", pivot, experts)
    (folder / "nopartial.yaml").write_text("_target_: my_method.undeclared_merge\nlam: 1\n")
    with pytest.raises(MergeConfigError, match="_partial_: true"):
        merge("nopartial", pivot, experts)
    (folder / "undeclared.yaml").write_text("_target_: my_method.undeclared_merge\n_partial_: true\nlam: 1\n")
    with pytest.raises(MergeConfigError, match=r"my_method.undeclared_merge is not a merge method: .*@merge_method"):
        merge("undeclared", pivot, experts)
    monkeypatch.setattr(registry, "conf_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(MergeConfigError, match="the merge configs are missing: .*nowhere does not exist"):
        merge("ties", pivot, experts)


def test_hydra_multiselect_packages_under_method_name():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir().parent), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+merge=[pivotmerge,ties,wudi]", "merge.ties.density=0.3"])
    assert list(cfg.merge) == ["pivotmerge", "ties", "wudi"]
    assert cfg.merge.ties.density == 0.3 and cfg.merge.pivotmerge.sdf_space == "features"
    assert cfg.merge.wudi.solver == "closed_form"


def test_pipeline_rejects_a_config_with_missing_or_unknown_options():
    from pivotmerge.merging.registry import check_options

    fn = get_method("ties")
    check_options(fn, method_defaults("ties"), "merge.ties")
    with pytest.raises(MergeConfigError, match="merge.ties: unknown option.*densty; missing option.*density"):
        check_options(fn, {**{k: v for k, v in method_defaults("ties").items() if k != "density"}, "densty": 1},
                      "merge.ties")
