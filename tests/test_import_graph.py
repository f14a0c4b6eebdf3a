"""The code's layers, checked on its import graph (imports inside functions included): no import cycle between
modules, and no module imports a layer above its own."""
import pytest

from tests.helpers import REPO
from tests.helpers.import_graph import cycles, import_graph, unit_graph, unit_of, upward_imports

PACKAGES = ("pivotmerge", "eval", "baselines")

# Lowest first. A module belongs to the longest prefix listed; a layer may import only its own and lower ones.
LAYERS = (
    # the ground floor: errors, files, the artifact store, names, config locations, the config schema checker
    ("ground", ("pivotmerge", "pivotmerge.errors", "pivotmerge.io", "pivotmerge.artifacts", "pivotmerge.version",
                "pivotmerge.logs", "pivotmerge.model_id", "pivotmerge.config", "pivotmerge.preflight.schema")),
    # services the stages use: models, data sources, training, W&B
    ("services", ("pivotmerge.models", "pivotmerge.data", "pivotmerge.interop", "pivotmerge.training",
                  "pivotmerge.wandb_logging")),
    ("merging", ("pivotmerge.merging", "pivotmerge.pivotmerge_method", "baselines")),
    # the stage protocol and the stages up to sft; preflight/merges.py is the merge stage's check (it reads
    # pipeline/merge.py, so the registry wires it to the stage)
    ("pipeline", ("pivotmerge.pipeline", "pivotmerge.preflight.merges")),
    ("eval", ("eval",)),
    # what knows every stage: the registry, the runner, the regimes, the preflight that calls the stages' hooks
    ("orchestration", ("pivotmerge.pipeline.stages", "pivotmerge.pipeline.runner", "pivotmerge.pipeline.regimes",
                       "pivotmerge.preflight")),
    ("entry", ("pivotmerge.run", "pivotmerge.__main__", "pivotmerge.cli")),
)
UNITS = {prefix: rank for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO, PACKAGES)


def test_every_module_has_a_layer(graph):
    for module in graph:
        unit_of(module, UNITS)


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_import_cycles_between_units(graph):
    # units: the prefixes of LAYERS (a package, or a module placed apart from its package)
    assert cycles(unit_graph(graph, UNITS)) == []


def test_no_layer_imports_a_higher_one(graph):
    assert upward_imports(graph, UNITS) == []


def test_the_stages_are_imported_as_modules_not_by_name(graph):
    # the registry's edges to both eval stages are visible (the review's hidden two-way dependency)
    assert {"eval.stage", "eval.report"} <= graph["pivotmerge.pipeline.stages"]


def test_the_checker_finds_a_planted_cycle_and_an_upward_import(tmp_path):
    package = tmp_path / "toy"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from toy.high import b\n")   # inside a function
    (package / "high.py").write_text("from .low.a import f\nfrom toy.low import a\n")
    (package / "b.py").write_text("import toy.low.a\n")
    planted = import_graph(tmp_path, ("toy",))
    assert planted["toy.high"] == {"toy.low.a"}
    assert cycles(planted) == [["toy.high", "toy.low.a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    units = {"toy": 0, "toy.low": 0, "toy.high": 1}
    assert upward_imports(planted, units) == [("toy.low.a", "toy.high")]
    assert unit_graph(planted, units) == {"toy": {"toy.low"}, "toy.low": {"toy.high"}, "toy.high": {"toy.low"}}
    assert cycles(unit_graph(planted, units)) == [["toy.high", "toy.low"]]
