"""The regime axes: easy-VQA's caption views on shared images, the pool and the general pivot, independent
expert starts, the preflight's one-line refusals, and the regime runner with its map."""
import json
from pathlib import Path

import pytest
import torch

from pivotmerge.errors import ConfigError, DataError, MissingDependencyError
from pivotmerge.pipeline.runner import run
from tests.helpers.compose import compose_cfg

EASYVQA = ["scenario.sources=[easyvqa_shape,easyvqa_color]"]


def test_easyvqa_views_share_every_image_and_keep_the_package_split(tmp_path, tiny_model_cfg):
    from pivotmerge.data.sources.easyvqa import answers, read_questions
    from pivotmerge.pipeline.data import SplitSizes, build_source, stratified_split

    cfg = compose_cfg(tmp_path, tiny_model_cfg, EASYVQA)
    splits = {}
    for view in ("shape", "color"):
        source = build_source(cfg.data.sources[f"easyvqa_{view}"])
        splits[view] = stratified_split(source.examples(), SplitSizes(50, 10, 20, 15), seed=0)
    for split in ("train", "val", "test", "pool"):
        assert [e.key for e in splits["shape"][split]] == [e.key for e in splits["color"][split]]
        assert len(splits["shape"][split]) == {"train": 50, "val": 10, "test": 20, "pool": 15}[split]
    test_ids = {int(e.key) for e in splits["shape"]["test"]}
    train_ids = {int(e.key) for e in splits["shape"]["train"] + splits["shape"]["pool"]}
    # test images are the package's test images; the others come from its train images
    assert test_ids <= {q.image_id for q in read_questions("test")}
    assert train_ids <= {q.image_id for q in read_questions("train")}
    assert {e.label for e in splits["shape"]["train"]} == {"circle", "rectangle", "triangle"}
    assert {e.label for e in splits["color"]["train"]} <= set(answers())
    # the labels agree with the package's own open questions on the same image
    first = splits["shape"]["test"][0]
    asks_shape = ("what shape is in the image?", "what shape is present?", "what shape does the image contain?")
    said = [q.answer for q in read_questions("test") if q.image_id == int(first.key) and q.text in asks_shape]
    assert all(answer == first.label for answer in said)


def test_pm_easyvqa_holds_the_package_questions_unchanged():
    from eval.documents import SuiteSource, build_documents, planned_task_names
    from pivotmerge.data.sources.easyvqa import answers

    questions = [("what color is the shape?", "red", 0), ("is there a circle?", "no", 1), ("what shape is present?",
                                                                                             "triangle", 1)]
    source = SuiteSource("easyvqa_color", ["{label}"], [{"bytes": b"a"}, {"bytes": b"b"}], ["red", "blue"],
                         questions=questions, answers=answers())
    options = {"kinds": ["vqa"], "seed": 0, "items_per_task": 2, "instruction": ""}
    kind, rows = build_documents([source, SuiteSource("easyvqa_shape", ["{label}"], source.images, ["a", "b"],
                                                      questions=questions, answers=answers())], options)["pm_easyvqa"]
    assert kind == "vqa" and len(rows) == 2   # one task for both views, items_per_task of the questions
    for row in rows:
        match = [q for q in questions if q[0] == row["question"]]
        assert match and row["choices"] == answers() and row["choices"][row["answer"]] == match[0][1]
        assert row["image"] == source.images[match[0][2]]
    assert planned_task_names(options, ["easyvqa_shape", "easyvqa_color"]) == ["pm_easyvqa"]
    assert planned_task_names(options, ["digits"]) == []


def test_missing_easyvqa_package_is_one_line(monkeypatch):
    import importlib.util

    from pivotmerge.data.sources import easyvqa

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="need the package 'easy-vqa'"):
        easyvqa.read_questions("test")


def test_damaged_easyvqa_questions_are_one_line(tmp_path, monkeypatch):
    from pivotmerge.data.sources import easyvqa

    (tmp_path / "test").mkdir()
    (tmp_path / "answers.txt").write_text("red\n")
    (tmp_path / "test" / "questions.json").write_text("[[\"what color is the shape?\", \"red\"")
    monkeypatch.setattr(easyvqa, "package_folder", lambda: tmp_path)
    with pytest.raises(DataError, match="cannot read easy-VQA"):
        easyvqa.read_questions("test")
    (tmp_path / "test" / "questions.json").write_text(json.dumps([["is there a red shape?", "yes", 3],
                                                                  ["what color is the shape?", "blue", 3]]))
    with pytest.raises(DataError, match="both 'red' and 'blue'"):
        easyvqa.image_labels(easyvqa.read_questions("test"))


def test_pool_is_disjoint_from_every_expert_split():
    from PIL import Image

    from pivotmerge.data.sources.base import Example
    from pivotmerge.pipeline.data import SplitSizes, stratified_split

    image = Image.new("L", (2, 2))
    examples = [Example(image, str(i % 5), key=str(i)) for i in range(100)]
    splits = stratified_split(examples, SplitSizes(train=40, val=10, test=20, pool=25), seed=3)
    keys = {split: {e.key for e in rows} for split, rows in splits.items()}
    assert {split: len(k) for split, k in keys.items()} == {"test": 20, "val": 10, "train": 40, "pool": 25}
    assert len(set().union(*keys.values())) == 95
    assert stratified_split(examples, SplitSizes(40, 10, 20, 0), seed=3)["train"] == splits["train"]


@pytest.mark.parametrize("override,message", [
    ("data.sources.easyvqa_shape.view=size", "view='size' is not an easy-VQA view"),
    ("scenario.experts.start=shared", "scenario.experts.start='shared'"),
    ("scenario.pivot.data=web", "scenario.pivot.data='web'"),
    ("scenario.pivot.data=general", "data.split.pool=0 must be >= 1 for scenario.pivot.data=general"),
])
def test_bad_regime_options_fail_in_preflight_with_one_line(tmp_path, tiny_model_cfg, override, message):
    from pivotmerge import preflight

    cfg = compose_cfg(tmp_path, tiny_model_cfg, [*EASYVQA, override])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        preflight.check(cfg)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory, tiny_model_cfg):
    tmp = tmp_path_factory.mktemp("independent")
    cfg = compose_cfg(tmp, tiny_model_cfg, ["stages=[data,features,pivot,experts]", "data.split.pool=8",
                                            "scenario.pivot.data=general", "scenario.experts.start=independent"])
    return run(cfg)


def test_independent_experts_start_from_their_own_warm_up(independent_run):
    ctx = independent_run
    pivot = ctx.projector(ctx.pivot)
    starts = {}
    for name, artifact in ctx.experts.items():
        spec = json.loads((artifact.path / "manifest.json").read_text())["spec"]
        assert spec["pivot"] != ctx.pivot.key      # not the shared pivot
        starts[name] = spec["pivot"]
        start = ctx.projector(type(ctx.pivot)("pivot", spec["pivot"], ctx.store.folder("pivot", spec["pivot"]), True))
        assert any(not torch.equal(start[k], pivot[k]) for k in pivot)
    assert len(set(starts.values())) == len(starts)   # a start of its own for every expert
    pivot_rows = [r for r in ctx.log.rows if r["stage"] == "pivot"]
    assert "general" in pivot_rows[0]["name"]


def test_regimes_run_each_pipeline_and_write_the_map(tmp_path, tiny_model_cfg):
    overrides = ["stages=[data,features,pivot,experts,merge,eval,report]", "merge=[average,task_arithmetic]",
                 "eval.tasks=[pm_cls_*]", "eval.limit=4", "eval.workers=1", "merge_diagnostics.lmc=false",
                 "scenario.joint.enabled=true", "scenario.joint.steps=2", "merge_search.enabled=true",
                 "merge_search.budget=1", "calibration.per_source=4",
                 "+regimes={base: {}, seeded: {scenario.pivot.init: seeded}}"]
    cfg = compose_cfg(tmp_path, tiny_model_cfg, overrides)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    for regime in ("base", "seeded"):
        assert (out / "regimes" / regime / "results" / "results.jsonl").is_file()
        assert (out / "regimes" / regime / "val_check_seed0.json").is_file()
    text = (out / "report" / "regime_map.md").read_text()
    assert "VAL losses against the pivot" in text   # the VAL check of every regime reaches the map
    assert sum(line.startswith(("| base | 0 |", "| seeded | 0 |")) for line in text.splitlines()) == 2
    assert "| merge:average |" in text and "% of the joint projector" in text
    header = next(line for line in text.splitlines() if line.startswith("| Model"))
    assert header == "| Model | base | seeded |"
    assert (out / "report" / "regime_map.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="regimes.bad overrides 'scenario.nope'"):
        run(compose_cfg(tmp_path, tiny_model_cfg, ["+regimes={bad: {scenario.nope: 1}}"]))


@pytest.mark.parametrize("count,expected", [(1, {0: True, 1: False}), (None, {0: True, 1: True}),
                                            (0, {0: False, 1: False})])
def test_ablation_seeds_run_the_variants_on_the_first_seeds_only(tmp_path, tiny_model_cfg, monkeypatch, count,
                                                                 expected):
    from types import SimpleNamespace

    from pivotmerge import preflight
    from pivotmerge.pipeline import regimes

    cfg = compose_cfg(tmp_path, tiny_model_cfg, ["seeds=[0,1]", "+regimes={a: {}, b: {}}",
                                                 f"+ablation_seeds={'null' if count is None else count}",
                                                 "+merge_variants={pm_flat: {base: pivotmerge, alm: 'off'}}"])
    monkeypatch.setattr(preflight, "check", lambda cfg: None)
    monkeypatch.setattr(regimes, "write_map", lambda *args: None)
    ran = []

    def run_one(one, mllm=None):
        ran.append((one.paths.output_dir.rsplit("/", 1)[-1], one.seed, bool(one.merge_variants)))
        return SimpleNamespace(_mllm=None)

    regimes.run_regimes(cfg, run_one)
    assert ran == [(r, s, expected[s]) for s in (0, 1) for r in ("a", "b")]
    times = json.loads((Path(cfg.paths.output_dir) / regimes.TIMES_FILE).read_text())   # the budget, measured
    assert [(t["regime"], t["seed"]) for t in times] == [(r, s) for s in (0, 1) for r in ("a", "b")]
    assert all(t["seconds"] >= 0 for t in times)


def test_a_bad_ablation_seeds_is_one_line(tmp_path, tiny_model_cfg):
    from pivotmerge.pipeline import regimes

    cfg = compose_cfg(tmp_path, tiny_model_cfg, ["+ablation_seeds=-1"])
    with pytest.raises(ConfigError, match=r"ablation_seeds=-1 must be a whole number >= 0"):
        regimes.ablation_seeds(cfg, [0, 1])
