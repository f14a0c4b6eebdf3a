"""Suite, lmms-eval adapter, eval stage and report end to end on the tiny model (small synthetic suite)."""
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from eval.documents import SuiteSource, build_documents, planned_task_names
from eval.suite import EmbeddedSuite, load_suite, make_pool, write_suite
from pivotmerge.artifacts import Artifact
from pivotmerge.errors import ConfigError
from tests.helpers import CONF

EVAL_CONF = CONF / "eval" / "embedded.yaml"


def eval_cfg(**overrides):
    """conf/eval/embedded.yaml (the only place the suite's defaults live) with `overrides` (dotted keys)."""
    cfg = OmegaConf.load(EVAL_CONF)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def suite_options(**overrides) -> dict:
    return make_pool(eval_cfg(**{f"suite.{k}": v for k, v in overrides.items()})).settings

SOURCES = {"digits": ["one", "two", "three", "four", "five"], "animals": ["cat", "dog", "cow", "bear"],
           "words": ["apple", "river", "storm", "piano"]}
TEMPLATES = {"digits": ["a handwritten digit {label}"], "animals": ["a white silhouette of a {label}"],
             "words": ["a sign that reads {label}"]}
SPLIT_SHADE = {"train": 0, "val": 100, "test": 200}
N = 12


def image(source_index, split, i):
    return Image.new("RGB", (16, 16), (source_index * 70, SPLIT_SHADE[split] + i, (i * 37) % 255))


def png(img):
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def synthetic_sources(n=N):
    return [SuiteSource(name, TEMPLATES[name], [png(image(s, "test", i)) for i in range(n)],
                        [labels[i % len(labels)] for i in range(n)])
            for s, (name, labels) in enumerate(SOURCES.items())]


def test_suite_is_deterministic_and_sized(tmp_path):
    options = suite_options(items_per_task=12, mme_images_per_category=4)
    first, second = build_documents(synthetic_sources(), options), build_documents(synthetic_sources(), options)
    assert first == second
    names = list(first)
    assert names == ["pm_cls_digits", "pm_cls_animals", "pm_cls_words", "pm_nll_digits", "pm_nll_animals",
                     "pm_nll_words", "pm_mc_digits", "pm_mc_animals", "pm_mc_words", "pm_pope", "pm_mme",
                     "pm_open_digits", "pm_open_words", "pm_cross_mc"]
    assert names == planned_task_names(options, list(SOURCES))       # what the preflight checks names against
    kind, rows = first["pm_cls_animals"]   # k-way over every label of the source, the true caption's index
    vocab = sorted(set(SOURCES["animals"]))
    assert kind == "cls" and all(len(r["choices"]) == len(vocab) for r in rows)
    assert all(r["choices"][r["answer"]] == f"a white silhouette of a {r['label']}" for r in rows)
    kind, rows = first["pm_nll_words"]
    assert kind == "nll" and all(r["answer_text"] == f"a sign that reads {r['label']}" for r in rows)
    assert len(set(names)) == len(names) and all(n.startswith("pm_") for n in names)
    kind, rows = first["pm_mc_digits"]
    assert len(rows) == 12 and all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in rows)
    assert all(r["choices"][r["answer"]] == f"a handwritten digit {r['label']}" for r in rows)
    pope = first["pm_pope"][1]
    assert sum(r["answer"] == 0 for r in pope) == len(pope) // 2          # balanced yes/no
    assert {r["source"] for r in pope} == set(SOURCES)
    mme = first["pm_mme"][1]
    assert len(mme) == 2 * 4 * 3 and sorted({r["category"] for r in mme}) == sorted(SOURCES)
    cross = first["pm_cross_mc"][1]
    for row in cross:   # options mix two sources: 2 captions of each
        kinds = [c.split(" ")[1] for c in row["choices"]]
        assert len(set(kinds)) == 2
    default = suite_options()
    assert default["items_per_task"] >= 200 and default["mme_images_per_category"] * 2 * 4 >= 200
    meta = write_suite(synthetic_sources(), options, tmp_path / "suite")
    suite = load_suite(tmp_path / "suite")
    assert suite.tasks == meta and (tmp_path / "suite" / "utils.py").is_file()
    assert suite.select(["pm_mc_*", "pm_pope"]) == ["pm_mc_digits", "pm_mc_animals", "pm_mc_words", "pm_pope"]
    with pytest.raises(ConfigError, match="pm_nonexistent"):
        suite.select(["pm_nonexistent"])
    with pytest.raises(ConfigError, match="unknown eval.suite option"):
        suite_options(itemz=3)
    with pytest.raises(ConfigError, match="eval.suite.kinds has"):
        suite_options(kinds=["mc", "essay"])
    with pytest.raises(ConfigError, match="lacks option"):
        make_pool(OmegaConf.create({"suite": {"_target_": "eval.suite.EmbeddedSuite", "seed": 0}}))
    assert isinstance(make_pool(eval_cfg()), EmbeddedSuite)


# ---- a pipeline context with real artifacts -----------------------------------------------------------
def make_context(tmp_path, mllm, model_cfg):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    from pivotmerge.artifacts import Artifact, ArtifactStore
    from pivotmerge.pipeline.context import Context, StageLog
    from pivotmerge.pipeline.features import SourceFeatures
    from pivotmerge.pipeline.stages import registered

    store = ArtifactStore(tmp_path / "cache")
    cfg = OmegaConf.create({
        "experiment_name": "test", "seed": 0, "model": OmegaConf.to_container(model_cfg),
        "data": {"instructions": [""]},
        "eval": eval_cfg(**{"suite.items_per_task": N, "suite.mme_images_per_category": 4, "tasks": None,
                            "batch_size": 8, "max_new_tokens": 4, "bootstrap_iters": 10, "workers": 1}),
        "report": {"only": False}, "logger": {"wandb": {"enabled": False}}})
    out = tmp_path / "outputs" / "test" / "run1"
    ctx = Context.for_stages(registered(), cfg=cfg, store=store, log=StageLog(), output_dir=out)
    ctx._mllm = mllm
    features = Features({"image": ImageFeature(), "label": Value("string"), "source": Value("string"),
                         "index": Value("int32")})
    for s, (name, labels) in enumerate(SOURCES.items()):
        splits = {}
        for split in ("train", "val", "test"):
            images = [image(s, split, i) for i in range(N)]
            splits[split] = Dataset.from_dict({"image": images, "label": [labels[i % len(labels)] for i in range(N)],
                                               "source": [name] * N, "index": list(range(N))}, features=features)
        folder = tmp_path / "data" / name
        DatasetDict(splits).save_to_disk(str(folder / "dataset"))
        ctx.data[name] = Artifact("data", f"data-{name}", folder, reused=True)
        ctx.sources[name] = SimpleNamespace(caption_templates=TEMPLATES[name], labels=lambda labels=labels: labels)
        decoded = DatasetDict.load_from_disk(str(folder / "dataset"))["test"]["image"]
        ctx.features[name] = SourceFeatures(name, {"test": mllm.encode_images(list(decoded))},
                                            {"test": splits["test"]["label"]})

    def projector_artifact(stage, key, state):
        staging = store.begin(stage, key)
        save_file(state, str(staging / "projector.safetensors"))
        return Artifact(stage, key, store.commit(stage, key, {"k": key}), reused=False)

    seeded = {k: v.clone() for k, v in mllm.projector.state_dict().items()}
    torch.manual_seed(3)
    other = {k: torch.randn_like(v) * 0.1 for k, v in seeded.items()}
    bad = {k: torch.randn(*(s + 1 for s in v.shape)) for k, v in seeded.items()}
    ctx.pivot = projector_artifact("pivot", "p0", seeded)
    ctx.merged = {"average": projector_artifact("merge", "m0", other), "broken": projector_artifact("merge", "m1", bad)}
    return ctx


def test_experts_run_only_their_own_source_tasks_unless_told():
    from eval.plan import job_tasks
    from eval.suite import TaskSet

    meta = {"pm_cls_digits": {"sources": ["digits"]}, "pm_cls_words": {"sources": ["words"]},
            "pm_nll_digits": {"sources": ["digits"]}, "pm_cross_mc": {"sources": ["digits", "words"]}}
    tasks = TaskSet(list(meta), {}, meta, "k")
    cfg = OmegaConf.create({"eval": eval_cfg()})
    assert job_tasks(cfg, "expert:digits", tasks) == ["pm_cls_digits", "pm_nll_digits"]
    assert job_tasks(cfg, "merge:ties", tasks) == job_tasks(cfg, "pivot", tasks) == list(meta)
    cfg.eval.experts_on = "all"
    assert job_tasks(cfg, "expert:digits", tasks) == list(meta)
    no_sources = TaskSet(["mme", "pope"], {}, {"mme": {"sources": []}, "pope": {"sources": []}}, "k")
    cfg.eval.experts_on = "own_source"
    assert job_tasks(cfg, "expert:digits", no_sources) == ["mme", "pope"]   # lmms-eval's own tasks
    cfg.eval.experts_on = "mine"
    with pytest.raises(ConfigError, match="eval.experts_on must be one of"):
        job_tasks(cfg, "expert:digits", tasks)


def test_suite_prompts_with_the_training_instruction_unless_told(tmp_path, tiny_mllm, tiny_model_cfg):
    import pandas as pd

    ctx = make_context(tmp_path, tiny_mllm, tiny_model_cfg)
    ctx.cfg.data.instructions = ["Name the picture.", "Other."]

    def questions(**overrides):
        cfg = eval_cfg(**{"suite.items_per_task": N, "suite.mme_images_per_category": 4, **overrides})
        folder = make_pool(cfg).prepare(ctx, ["pm_cls_digits"]).include_path
        return set(pd.read_parquet(Path(folder) / "pm_cls_digits.parquet")["question"])

    assert questions() == {"Name the picture."}                      # data.instructions[0]
    assert questions(**{"suite.instruction": "Caption it."}) == {"Caption it."}


def test_eval_stage_and_report_end_to_end(tmp_path, tiny_mllm, tiny_model_cfg, monkeypatch):
    from eval import report, stage

    ctx = make_context(tmp_path, tiny_mllm, tiny_model_cfg)
    before = {k: v.clone() for k, v in tiny_mllm.projector.state_dict().items()}

    def no_tower(images):
        raise AssertionError("the vision tower ran although every test image was pre-filled")

    monkeypatch.setattr(tiny_mllm, "encode_images", no_tower)
    stage.run(ctx)
    rows = [json.loads(line) for line in (ctx.output_dir / "results" / "results.jsonl").read_text().splitlines()]
    models = {r["model"] for r in rows}
    assert models == {"pivot", "merge:average"}                       # merge:broken is a visible gap
    assert any("skipped" in r["note"] for r in ctx.log.rows if r["name"] == "merge:broken")
    assert (ctx.output_dir / "results" / "lmms" / "merge_average.json").is_file()
    primary = {r["benchmark"]: r["value"] for r in rows if r["model"] == "pivot" and r["primary"]}
    assert len(primary) == 14
    # a random projector is near chance
    for bench in ("pm_mc_digits", "pm_mc_animals", "pm_mc_words", "pm_cross_mc"):
        assert abs(primary[bench] - 0.25) <= 0.3, (bench, primary[bench])
    assert abs(primary["pm_pope"] - 0.5) <= 0.25
    mme_acc = next(r["value"] for r in rows
                   if r["model"] == "pivot" and r["benchmark"] == "pm_mme" and r["metric"] == "acc")
    assert abs(mme_acc - 0.5) <= 0.25
    assert all(torch.equal(before[k], v) for k, v in tiny_mllm.projector.state_dict().items())

    # a second run reuses every cached evaluation
    ctx.log.rows.clear()
    stage.run(ctx)
    evaluated = [r for r in ctx.log.rows if r["name"] in ("pivot", "merge:average")]
    assert [r["status"] for r in evaluated] == ["reused", "reused"]

    report.run(ctx)
    md = (ctx.output_dir / "report" / "table.md").read_text()
    assert "merge:average" in md and (ctx.output_dir / "report" / "scores.png").is_file()

    # report.only=true in a fresh run folder finds the store
    ctx2 = SimpleNamespace(cfg=ctx.cfg.copy(), output_dir=tmp_path / "outputs" / "test" / "run2", log=ctx.log)
    ctx2.cfg.report.only = True
    report.run(ctx2)
    assert (ctx2.output_dir / "report" / "table.md").read_text() == md


def test_models_with_identical_weights_share_one_evaluation(tmp_path, tiny_mllm, tiny_model_cfg, monkeypatch):
    """The eval key is the weights' digest: a merge that returns its pivot's weights (another entry, another
    key) is evaluated once and recorded under both names with the same numbers; other weights are not."""
    from eval import evaluate as evaluate_module
    from eval import stage
    from eval.plan import plan

    ctx = make_context(tmp_path, tiny_mllm, tiny_model_cfg)
    ctx.cfg.eval.tasks = ["pm_cls_digits"]
    ctx.merged.pop("broken")
    staging = ctx.store.begin("merge", "m2")
    shutil.copy2(ctx.pivot.path / "projector.safetensors", staging / "projector.safetensors")
    ctx.merged["keeps_pivot"] = Artifact("merge", "m2", ctx.store.commit("merge", "m2", {"k": "m2"}), False)
    evaluated = []
    real = evaluate_module.evaluate_model
    monkeypatch.setattr(evaluate_module, "evaluate_model",
                        lambda adapter, *args: evaluated.append(adapter) or real(adapter, *args))
    jobs = {job.model: job.key for job in plan(ctx).jobs}
    assert jobs["pivot"] == jobs["merge:keeps_pivot"] != jobs["merge:average"]
    stage.run(ctx)
    assert len(evaluated) == 2                                    # pivot (and its twin), average
    log = {r["name"]: r for r in ctx.log.rows if r["stage"] == "eval"}
    assert log["pivot"]["status"] == "ran" and log["merge:keeps_pivot"]["status"] == "reused"
    assert log["merge:keeps_pivot"]["note"].startswith("same weights as pivot")
    rows = [json.loads(line) for line in (ctx.output_dir / "results" / "results.jsonl").read_text().splitlines()]
    values = {m: sorted((r["benchmark"], r["metric"], r["value"]) for r in rows if r["model"] == m)
              for m in ("pivot", "merge:keeps_pivot")}
    assert values["pivot"] == values["merge:keeps_pivot"] and values["pivot"]


def test_unknown_benchmark_name_is_a_config_error(tmp_path, tiny_mllm, tiny_model_cfg):
    from eval import stage

    ctx = make_context(tmp_path, tiny_mllm, tiny_model_cfg)
    ctx.cfg.eval.tasks = ["pm_mc_digits", "pm_no_such_benchmark"]
    with pytest.raises(ConfigError, match="pm_no_such_benchmark"):
        stage.run(ctx)


@pytest.mark.slow   # 30-50 s on 2 busy cores: the eval stage from scratch, twice
def test_evaluation_from_scratch_is_reproducible(tmp_path, tiny_mllm, tiny_model_cfg):
    """Same projectors, same suite, two empty caches: the stores hold identical numbers (no sampling anywhere)."""
    from eval import stage

    values = []
    for run_name in ("a", "b"):
        ctx = make_context(tmp_path / run_name, tiny_mllm, tiny_model_cfg)
        stage.run(ctx)
        rows = [json.loads(line) for line in (ctx.output_dir / "results" / "results.jsonl").read_text().splitlines()]
        assert not any(r["status"] == "reused" for r in ctx.log.rows if r["name"] in ("pivot", "merge:average"))
        values.append(sorted((r["model"], r["benchmark"], r["metric"], r["value"]) for r in rows))
    assert values[0] == values[1] and len(values[0]) > 20


@pytest.mark.slow   # 35-80 s: two worker processes each build the tiny MLLM
def test_worker_processes_give_the_same_numbers_as_one_process(tmp_path, tiny_mllm, tiny_model_cfg):
    """eval.workers=2 evaluates pending projectors in spawned processes: same store rows, same logs."""
    from eval import stage

    values = []
    for workers in (1, 2):
        ctx = make_context(tmp_path / f"w{workers}", tiny_mllm, tiny_model_cfg)
        ctx.cfg.eval.workers = workers
        ctx.cfg.paths = {"models_dir": str(tmp_path / "models")}
        ctx.merged.pop("broken")
        stage.run(ctx)
        ran = [r for r in ctx.log.rows if r["name"] in ("pivot", "merge:average")]
        assert [r["status"] for r in ran] == ["ran", "ran"]
        rows = [json.loads(line) for line in (ctx.output_dir / "results" / "results.jsonl").read_text().splitlines()]
        values.append(sorted((r["model"], r["benchmark"], r["metric"], r["value"]) for r in rows))
    assert len(values[0]) > 20 and [v[:3] for v in values[0]] == [v[:3] for v in values[1]]
    # accuracies match exactly; float32 log-likelihood sums differ in the 8th digit with the thread count
    assert all(math.isclose(a[3], b[3], rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(values[0], values[1]))
    assert all(a[3] == b[3] for a, b in zip(values[0], values[1]) if a[2] != "nll")
    with pytest.raises(ConfigError, match="eval.workers"):
        ctx.cfg.eval.workers = 0
        stage.run(ctx)


def test_workers_are_dealt_the_longest_evaluations_first():
    """A merge's evaluation (every task) before an expert's (its own source's): stable among equals."""
    from eval.plan import Job
    from eval.stage import longest_first

    def job(model, tasks):
        return Job(model, tasks, None, model, {})

    jobs = [job("pivot", ["a", "b", "c"]), job("expert:x", ["a"]), job("merge:ties", ["a", "b", "c"]),
            job("expert:y", ["b"]), job("merge:pivotmerge", ["a", "b", "c"])]
    assert [j.model for j in longest_first(jobs)] == ["pivot", "merge:ties", "merge:pivotmerge", "expert:x",
                                                      "expert:y"]


def test_suite_command_prints_the_suite_folder(tmp_path, capsys, monkeypatch):
    """`pivotmerge suite --print-path <run.py overrides>`: the folder for `lmms-eval --include_path`."""
    from pivotmerge.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = [f"paths.cache_dir={tmp_path / 'cache'}", "scenario.sources=[digits,words]", "data.split.train=24",
                 "data.split.val=8", "data.split.test=8", "data.sources.words.count=60", "eval.suite.items_per_task=8"]
    assert main(["suite", "--print-path", *overrides]) == 0
    printed = capsys.readouterr().out.strip()
    folder = Path(printed)
    assert folder.parent == tmp_path / "cache" / "eval_suite" and (folder / "pm_mc_digits.yaml").is_file()
    assert main(["suite", *overrides]) == 0       # reused: same folder, with its tasks and the lmms-eval command
    shown = capsys.readouterr().out
    assert f"suite folder: {folder}" in shown and "pm_cross_mc" in shown and f"--include_path {folder}" in shown
    assert main(["suite", "--print-path", "eval=lmms_standard"]) == 2
    assert "no suite folder" in capsys.readouterr().err
    assert main(["suite", "--print-path", "eval=nope"]) == 2
    assert "cannot compose the config" in capsys.readouterr().err
