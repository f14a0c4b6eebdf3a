"""A new stage is one module and its config section: the runner plans it after what it needs, runs it, caches
its entry (a second run reuses it), logs it, hands it its lineage and calls its preflight hook."""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from pivotmerge.pipeline.runner import run
from pivotmerge.pipeline.stages import stage_names, unregister
from pivotmerge.preflight import PreflightError
from tests.helpers.compose import compose_cfg

TOY_STAGE = '''
"""A toy stage: counts the TRAIN rows of each source's data entry, cached per data entry and settings."""
import json
from dataclasses import dataclass

from pivotmerge.artifacts import CacheKind
from pivotmerge.pipeline.data import load_dataset_dict
from pivotmerge.pipeline.stage import Stage
from pivotmerge.pipeline.stages import register
from pivotmerge.preflight.schema import fail, rule

CALLS = {"preflight": [], "lineage": [], "built": 0}


@dataclass
class ToySchema:
    label: str = rule()
    scale: int = rule(ge=1)


def check(cfg, sources):
    CALLS["preflight"].append(list(sources))
    if cfg.toy.label == "forbidden":
        raise fail("toy.label", cfg.toy.label, "is forbidden", "any other label")


def count_rows(ctx, name, staging):
    CALLS["built"] += 1
    rows = len(load_dataset_dict(ctx.data[name].path)["train"]) * int(ctx.cfg.toy.scale)
    (staging / "count.json").write_text(json.dumps({"rows": rows}))


def run(ctx):
    for name, data in ctx.data.items():
        spec = {"data": data.key, "scale": int(ctx.cfg.toy.scale)}
        ctx.counts[name] = ctx.produce("toy", name, ctx.store.entry, "toy", spec,
                                       lambda staging, name=name: count_rows(ctx, name, staging),
                                       note=ctx.cfg.toy.label)


def lineage(ctx, entries):
    CALLS["lineage"].append([entry.key for entry in entries])


STAGE = register(Stage("toy", run, needs=("data",), produces={"counts": dict}, config={"toy": ToySchema},
                       preflight=check, caches={"toy": CacheKind(1, ("datasets",))}, lineage=lineage))
'''


@pytest.fixture
def toy_module(tmp_path):
    """The toy stage as a module of its own, imported (and so registered) like any stage module."""
    path = tmp_path / "toy_stage.py"
    path.write_text(textwrap.dedent(TOY_STAGE))
    spec = importlib.util.spec_from_file_location("toy_stage", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_stage"] = module
    spec.loader.exec_module(module)
    yield module
    unregister("toy")
    sys.modules.pop("toy_stage", None)


def toy_cfg(tmp: Path, model_cfg, **toy):
    cfg = compose_cfg(tmp, model_cfg, ["stages=[toy]"])
    with open_dict(cfg):
        cfg.toy = OmegaConf.create({"label": "hello", "scale": 2, **toy})   # the stage's config section
    return cfg


def test_a_new_stage_is_planned_run_cached_logged_and_checked(toy_module, tmp_path, tiny_model_cfg):
    assert stage_names()[-1] == "toy"
    cfg = toy_cfg(tmp_path, tiny_model_cfg)
    ctx = run(cfg)
    rows = [r for r in ctx.log.rows if r["stage"] == "toy"]
    assert [(r["name"], r["status"], r["note"]) for r in rows] == [("digits", "ran", "hello"),
                                                                    ("words", "ran", "hello")]
    assert {r["stage"] for r in ctx.log.rows} == {"data", "toy"}    # planned: toy and the data it needs
    assert json.loads((ctx.counts["digits"].path / "count.json").read_text()) == {"rows": 48}
    assert toy_module.CALLS["preflight"] == [["digits", "words"]]
    assert toy_module.CALLS["lineage"] == [[ctx.counts["digits"].key, ctx.counts["words"].key]]

    again = run(cfg)
    assert [r["status"] for r in again.log.rows if r["stage"] == "toy"] == ["reused", "reused"]
    assert toy_module.CALLS["built"] == 2
    written = json.loads((Path(cfg.paths.output_dir) / "stages.json").read_text())
    assert [(r["stage"], r["name"], r["status"]) for r in written if r["stage"] == "toy"] == [
        ("toy", "digits", "reused"), ("toy", "words", "reused")]


def test_the_new_stage_s_schema_and_hook_run_in_preflight(toy_module, tmp_path, tiny_model_cfg):
    with pytest.raises(PreflightError, match=r"toy\.scale=0 must be >= 1"):
        run(toy_cfg(tmp_path, tiny_model_cfg, scale=0))
    with pytest.raises(PreflightError, match=r"toy\.label='forbidden' is forbidden"):
        run(toy_cfg(tmp_path, tiny_model_cfg, label="forbidden"))
    assert not (tmp_path / "cache" / "toy").exists()


def test_an_unknown_output_is_an_error_not_a_new_field(toy_module, tmp_path, tiny_model_cfg):
    ctx = run(toy_cfg(tmp_path, tiny_model_cfg))
    with pytest.raises(AttributeError, match="not an output any stage declares"):
        ctx.countz = {}
    with pytest.raises(AttributeError, match="no 'countz'"):
        _ = ctx.countz
