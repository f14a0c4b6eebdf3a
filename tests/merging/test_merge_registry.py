"""The merge registry: conf/merge/<name>.yaml is the only list of methods and the only copy of defaults."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch

from pivotmerge.merging import (
    NON_OPTIONS,
    MergeConfigError,
    available,
    conf_dir,
    contract_of,
    get_method,
    merge,
    method_defaults,
    method_options,
    needs_calibration,
    registry,
)
from pivotmerge.merging.registry import load_config
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
def test_config_names_a_function_whose_options_are_exactly_its_keys_without_defaults(name):
    path = conf_dir() / f"{name}.yaml"
    # Hydra 1.3 has no `_group_`/`_name_` package keywords any more: each file names its own node
    assert path.read_text().startswith(f"# @package merge.{name}\n")
    cfg = load_config(name)
    fn = get_method(name)
    params = inspect.signature(fn).parameters
    positional = [p.name for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["pivot", "experts"]
    assert set(cfg.defaults) == set(method_options(fn)), "YAML keys != keyword-only options of the function"
    for option in method_options(fn):
        assert params[option].default is inspect.Parameter.empty, f"{option} has a second default in the signature"
    for extra in set(params) & NON_OPTIONS:
        assert params[extra].default is None, f"{extra} is supplied by callers, so it must default to None"
    assert "diagnostics" in params
    # the declared contract names real options
    c = contract_of(fn)
    for key in [c.scale] * (c.scale is not None) + list(c.one_expert or {}) + list(c.symmetric):
        assert key in cfg.defaults, f"contract of {name} names {key!r}, not an option"


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
    a = merge("ties", pivot, experts, lam=0.5)
    b = fn(pivot, experts, **{**defaults, "lam": 0.5})
    assert all(torch.equal(a[k], b[k]) for k in pivot)
    method_defaults("ties")["lam"] = 7.0  # callers get a copy
    assert method_defaults("ties")["lam"] == 1.0


def test_unknown_method_option_and_extra_are_clean_errors():
    pivot, experts = make()
    with pytest.raises(MergeConfigError, match="unknown merge method 'nope'; available: adamerging, average, "):
        merge("nope", pivot, experts)
    with pytest.raises(MergeConfigError, match="unknown option.*densty.*valid options: combine, density"):
        merge("ties", pivot, experts, densty=0.3)
    with pytest.raises(MergeConfigError, match="does not take calibration_loss"):
        merge("ties", pivot, experts, calibration_loss=lambda sd: 0.0)
    with pytest.raises(MergeConfigError, match="merge method must be a name"):
        get_method("../conf/merge/ties")


def test_needs_calibration_reads_the_signature():
    # pivotmerge_data_free shares pivotmerge's function, so its signature takes calibration too (unused there)
    data_aware_methods = {"adamerging", "fisher", "pivotmerge", "pivotmerge_data_free", "regmean", "regmean_plusplus"}
    assert {name for name in METHODS if needs_calibration(name)} == data_aware_methods

    def data_aware(pivot, experts, *, lam, calibration=None, diagnostics=None):
        return dict(pivot)

    assert needs_calibration(data_aware) and registry.accepted_extras(data_aware) == {"calibration", "diagnostics"}
    assert method_options(data_aware) == ["lam"]


def test_a_new_method_is_one_python_file_and_one_yaml(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    for path in conf_dir().glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    (tmp_path / "my_method.py").write_text(
        "from pivotmerge.merging.checks import check_number, validate_inputs\n"
        "from pivotmerge.merging.ops import apply_update, finalize, float_keys, mean_task_vector\n\n"
        "def half_mean_merge(pivot, experts, *, lam, diagnostics=None):\n"
        "    lam = check_number('half_mean', 'lam', lam)\n"
        "    validate_inputs(pivot, experts, method='half_mean')\n"
        "    return finalize(pivot, {k: apply_update(pivot[k], mean_task_vector(pivot, experts, k), lam)\n"
        "                            for k in float_keys(pivot)})\n")
    (folder / "half_mean.yaml").write_text("# @package merge.half_mean\n_target_: my_method.half_mean_merge\n"
                                           "_partial_: true\nlam: 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "conf_dir", lambda: folder)
    assert "half_mean" in available() and method_defaults("half_mean") == {"lam": 0.5}
    pivot, experts = make()
    m = merge("half_mean", pivot, experts)
    torch.testing.assert_close(m["0.bias"], pivot["0.bias"] + 0.5 * (experts[0]["0.bias"] + experts[1]["0.bias"]
                                                                     - 2 * pivot["0.bias"]) / 2)
    # a config whose target or options are wrong fails with one line naming the file
    (folder / "broken.yaml").write_text("# @package merge.broken\n_target_: my_method.nope\n_partial_: true\n")
    with pytest.raises(MergeConfigError, match=r"broken.yaml: _target_ 'my_method.nope' cannot be imported"):
        merge("broken", pivot, experts)
    (folder / "nopartial.yaml").write_text("_target_: my_method.half_mean_merge\nlam: 1\n")
    with pytest.raises(MergeConfigError, match="_partial_: true"):
        merge("nopartial", pivot, experts)
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
