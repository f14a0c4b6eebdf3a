"""W&B offline: one run per stage of work, every cache entry a reference artifact, inputs declared (lineage).

The runs' transaction logs are read back with wandb's own reader (pivotmerge.wandb_logging.read_run_records).
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from pivotmerge.artifacts import Artifact, ArtifactStore, content_key
from pivotmerge.pipeline.runner import run
from pivotmerge.wandb_logging import (
    configure_wandb_env,
    log_eval_run,
    log_stage_run,
    log_training_output,
    read_run_records,
    results_artifact,
    start_run,
)
from tests.helpers.compose import compose_cfg
from tests.helpers.rows import known_rows

OVERRIDES = ["logger=wandb", "logger.wandb.mode=offline", "experiment_name=lineage",
             "stages=[data,features,pivot,experts,merge,eval,report]", "merge=[average,ties]",
             "eval.tasks=[pm_mc_digits]", "eval.workers=1", "eval.bootstrap_iters=0"]


@pytest.fixture()
def offline_env(monkeypatch):
    """configure_wandb_env writes WANDB_* variables: restore them after the test."""
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)


def runs_by_name(wandb_dir: Path, exclude=()) -> dict:
    runs = {}
    for folder in sorted(wandb_dir.glob("offline-run-*")):
        if folder in exclude:
            continue
        records = read_run_records(folder)
        assert records["complete"], folder
        runs[records["run"].display_name] = records
    return runs


def names(records) -> set[str]:
    return {a.name for a in records}


# ---- the lineage module on a cache of hand-made entries (fast) --------------------------------------------
def make_entry(store, stage, spec, files=("projector.safetensors",)):
    key = content_key(stage, spec)
    staging = store.begin(stage, key)
    for name in files:
        (staging / name).write_bytes(f"{stage} {key} {name}".encode())
    return Artifact(stage, key, store.commit(stage, key, spec), reused=False)


def offline_cfg(folder: Path):
    cfg = OmegaConf.create({"experiment_name": "exp", "seed": 0, "logger": {"wandb": {
        "enabled": True, "mode": "offline", "project": "pivotmerge", "entity": None, "group": "exp",
        "dir": str(folder)}}})
    configure_wandb_env(cfg)
    return cfg


def make_cache(store, tmp_path):
    """data -> features -> pivot -> expert -> merge, the suite, an evaluation of each projector, a results store."""
    data = make_entry(store, "data", {"name": "digits", "source": {"count": 3}}, ["dataset.arrow"])
    feats = make_entry(store, "features", {"vision": {"kind": "hf"}, "data": data.key}, ["train.safetensors"])
    pivot = make_entry(store, "pivot", {"features": {"digits": feats.key}, "pivot": {"init": "warmup"}})
    expert = make_entry(store, "expert", {"pivot": pivot.key, "source": "digits", "features": feats.key})
    merged = make_entry(store, "merge", {"pivot": pivot.key, "experts": {"digits": expert.key},
                                         "target": "baselines.ties.ties_merge", "options": {"density": 0.2}})
    suite = make_entry(store, "eval_suite", {"data": {"digits": data.key}, "code": "0123456789abcdef"},
                       ["suite.json"])
    evals = [make_entry(store, "eval", {"projector": p.key, "suite": suite.key}, ["results.json"])
             for p in (pivot, expert, merged)]
    results = tmp_path / "outputs" / "exp" / "run1" / "results"
    results.mkdir(parents=True)
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in known_rows()))
    return data, feats, pivot, expert, merged, suite, evals, results


def test_stage_runs_log_entries_and_declare_inputs(tmp_path, offline_env, capsys):
    from eval.table import build_table
    from eval.writers import write_report
    from pivotmerge.wandb_logging import log_report_run

    cfg = offline_cfg(tmp_path / "out")
    store = ArtifactStore(tmp_path / "cache")
    data, feats, pivot, expert, merged, suite, evals, results = make_cache(store, tmp_path)
    log_stage_run(cfg, store, "features", "features-seed0", [feats])
    for entry in (pivot, expert):   # what run_training_stage does with the WandbLogger's run
        log_training_output(SimpleNamespace(experiment=start_run(cfg, entry.stage, f"{entry.stage}-seed0")),
                            store, entry)
    log_stage_run(cfg, store, "merge", "merge-seed0", [merged])
    models = {"pivot": pivot, "expert:digits": expert, "merge:ties": merged}
    log_eval_run(cfg, store, models, dict(zip(models, evals)), {m: {"pm_mc_digits": 0.25} for m in models}, results)
    table = build_table(known_rows())
    log_report_run(cfg, table, write_report(table, results.parent / "report", plot=False), [results])

    runs = runs_by_name(tmp_path / "out" / "wandb")
    # the suite is no stage run's output: the folder logs it, made from the data, before the eval run uses it
    assert set(runs) == {"features-seed0", "pivot-seed0", "expert-seed0", "merge-seed0", "eval-seed0", "report-exp",
                         "eval_suite-from-cache-seed0"}
    assert {r["run"].run_group for r in runs.values()} == {"exp"}
    name = {e.key: n for e, n in ((data, f"data-digits-{data.key}"), (feats, f"features-digits-{feats.key}"),
                                   (pivot, f"pivot-{pivot.key}"), (expert, f"expert-digits-{expert.key}"),
                                   (merged, f"merge-ties-{merged.key}"), (suite, f"eval_suite-{suite.key}"))}
    assert names(runs["features-seed0"]["inputs"]) == {name[data.key]}
    assert names(runs["features-seed0"]["outputs"]) == {name[feats.key]}
    assert names(runs["pivot-seed0"]["inputs"]) == {name[feats.key]}
    assert names(runs["expert-seed0"]["inputs"]) == {name[pivot.key], name[feats.key]}
    assert names(runs["merge-seed0"]["inputs"]) == {name[pivot.key], name[expert.key]}
    assert names(runs["merge-seed0"]["outputs"]) == {name[merged.key]}
    assert names(runs["eval-seed0"]["inputs"]) == {name[pivot.key], name[expert.key], name[merged.key],
                                                   name[suite.key]}
    assert names(runs["eval-seed0"]["outputs"]) == {f"eval-{e.key}" for e in evals} | {"results-exp-run1"}
    assert runs["eval-seed0"]["summary"]["merge:ties/projector"] == name[merged.key]   # score -> projector
    assert runs["eval-seed0"]["summary"]["merge:ties/pm_mc_digits"] == 0.25
    assert names(runs["report-exp"]["inputs"]) == {"results-exp-run1"}
    assert {a.name for a in runs["report-exp"]["outputs"] if a.type != "run_table"} == {"table-exp-run1"}

    # producers and consumers name the same version (same digest); projectors are references into the cache
    produced = {a.name: a for r in runs.values() for a in r["outputs"]}
    used = [a for r in runs.values() for a in r["inputs"]]
    assert sum(a.name in produced for a in used) == 10
    assert all(a.digest == produced[a.name].digest for a in used if a.name in produced)
    ties = produced[name[merged.key]]
    assert ties.type == "projector" and {e.ref for e in ties.manifest.contents} == {
        (merged.path / f).resolve().as_uri() for f in ("projector.safetensors", "manifest.json")}
    meta = json.loads(ties.metadata)
    assert meta["content_key"] == merged.key and meta["spec"]["options"] == {"density": 0.2}
    assert "wandb sync" in capsys.readouterr().out

    # reused entries: no run where nothing was made; the eval run links the evaluations it read
    before = set((tmp_path / "out" / "wandb").glob("offline-run-*"))
    reused = [Artifact(e.stage, e.key, e.path, reused=True) for e in evals]
    log_stage_run(cfg, store, "merge", "merge-seed1", [Artifact("merge", merged.key, merged.path, reused=True)])
    log_stage_run(cfg, store, "eval", "eval-seed1", reused, link_reused=True, outputs=[results_artifact(results)])
    again = runs_by_name(tmp_path / "out" / "wandb", exclude=before)
    assert set(again) == {"eval-seed1"}
    assert names(again["eval-seed1"]["inputs"]) == {f"eval-{e.key}" for e in evals}
    assert names(again["eval-seed1"]["outputs"]) == {"results-exp-run1"}


def test_a_warm_run_folder_links_what_it_reused_back_to_the_data(tmp_path, offline_env):
    """A later run that reuses every entry (a new run folder, nothing made): its eval run links the
    evaluations and the projectors it scored, and the folder logs those entries and what they were made from
    (one `<stage>-from-cache` run per stage), so that syncing this folder alone keeps eval -> projector ->
    pivot -> features -> data; a second warm run in the same folder logs nothing again."""
    store = ArtifactStore(tmp_path / "cache")
    data, feats, pivot, expert, merged, suite, evals, results = make_cache(store, tmp_path)
    cfg = offline_cfg(tmp_path / "warm")
    reused = {m: Artifact(e.stage, e.key, e.path, reused=True)
              for m, e in {"pivot": pivot, "expert:digits": expert, "merge:ties": merged}.items()}
    evaluated = {m: Artifact("eval", e.key, e.path, reused=True) for m, e in zip(reused, evals)}
    log_stage_run(cfg, store, "merge", "merge-seed0", [reused["merge:ties"]])   # nothing made: no run
    log_eval_run(cfg, store, reused, evaluated, {m: {"pm_mc_digits": 0.5} for m in reused}, results)

    runs = runs_by_name(tmp_path / "warm" / "wandb")
    assert set(runs) == {"eval-seed0", "features-from-cache-seed0", "pivot-from-cache-seed0",
                         "expert-from-cache-seed0", "merge-from-cache-seed0", "eval_suite-from-cache-seed0",
                         "eval-from-cache-seed0"}
    name = {data.key: f"data-digits-{data.key}", feats.key: f"features-digits-{feats.key}",
            pivot.key: f"pivot-{pivot.key}", expert.key: f"expert-digits-{expert.key}",
            merged.key: f"merge-ties-{merged.key}", suite.key: f"eval_suite-{suite.key}",
            **{e.key: f"eval-{e.key}" for e in evals}}
    projectors = {name[pivot.key], name[expert.key], name[merged.key]}
    assert names(runs["eval-seed0"]["inputs"]) == {f"eval-{e.key}" for e in evals} | projectors
    assert names(runs["eval-seed0"]["outputs"]) == {"results-exp-run1"}
    assert runs["eval-seed0"]["summary"]["merge:ties/projector"] == name[merged.key]
    # every entry this folder uses is logged in it, with its inputs, except the root (data)
    produced = {a.name: a for r in runs.values() for a in r["outputs"]}
    made_from = {a.name: names(r["inputs"]) for r in runs.values() for a in r["outputs"]}
    used = {a.name for r in runs.values() for a in r["inputs"]}
    assert used - set(produced) == {name[data.key]}
    assert all(a.digest == produced[a.name].digest for r in runs.values() for a in r["inputs"] if a.name in produced)
    assert made_from[f"eval-{evals[2].key}"] == projectors | {name[suite.key]}   # one run logs the three
    assert made_from[name[merged.key]] == {name[pivot.key], name[expert.key]}
    assert made_from[name[expert.key]] == {name[pivot.key], name[feats.key]}
    assert made_from[name[pivot.key]] == {name[feats.key]}
    assert made_from[name[feats.key]] == made_from[name[suite.key]] == {name[data.key]}
    # the same entries reused again in this folder: only the eval run, nothing logged twice
    before = set((tmp_path / "warm" / "wandb").glob("offline-run-*"))
    log_eval_run(cfg, store, reused, evaluated, {m: {"pm_mc_digits": 0.5} for m in reused}, results)
    assert set(runs_by_name(tmp_path / "warm" / "wandb", exclude=before)) == {"eval-seed0"}


def test_a_training_run_links_a_reused_pivot(tmp_path, offline_env):
    """An expert trained on a pivot from the cache (made by an earlier run folder): its run declares the pivot,
    and this folder logs the pivot with what it was made from, beside the open training run."""
    store = ArtifactStore(tmp_path / "cache")
    data, feats, pivot, expert, *_ = make_cache(store, tmp_path)
    cfg = offline_cfg(tmp_path / "warm")
    log_training_output(SimpleNamespace(experiment=start_run(cfg, "expert", "expert-digits-seed3")), store, expert)
    runs = runs_by_name(tmp_path / "warm" / "wandb")
    assert set(runs) == {"expert-digits-seed3", "features-from-cache-seed3", "pivot-from-cache-seed3"}
    assert names(runs["expert-digits-seed3"]["inputs"]) == {f"pivot-{pivot.key}", f"features-digits-{feats.key}"}
    assert names(runs["pivot-from-cache-seed3"]["outputs"]) == {f"pivot-{pivot.key}"}
    assert {r["run"].run_group for r in runs.values()} == {"exp"}


# ---- the real pipeline on tiny models ----------------------------------------------------------------------
@pytest.mark.slow   # ~20-40 s: trains, merges and evaluates tiny models, twice
def test_offline_runs_hold_artifacts_and_lineage(tiny_model_cfg, tmp_path, offline_env, capsys):
    cfg = compose_cfg(tmp_path, tiny_model_cfg, OVERRIDES)
    ctx = run(cfg)
    wandb_dir = Path(cfg.paths.output_dir) / "wandb"
    runs = runs_by_name(wandb_dir)
    assert set(runs) == {"features-seed0", "pivot-pivot-seed0", "expert-digits-seed0", "expert-words-seed0",
                         "merge-seed0", "eval_suite-from-cache-seed0", "eval-seed0", "report-lineage"}
    assert {r["run"].run_group for r in runs.values()} == {"lineage"}
    assert {r["run"].job_type for r in runs.values()} == {"features", "pivot", "expert", "merge", "eval_suite",
                                                           "eval", "report"}

    key = {("pivot", "pivot"): ctx.pivot.key, **{("expert", n): a.key for n, a in ctx.experts.items()},
           **{("merge", n): a.key for n, a in ctx.merged.items()},
           **{("features", n): a.key for n, a in ctx.feature_artifacts.items()},
           **{("data", n): a.key for n, a in ctx.data.items()}}
    pivot, digits, words = (f"pivot-{key['pivot', 'pivot']}", f"expert-digits-{key['expert', 'digits']}",
                            f"expert-words-{key['expert', 'words']}")
    features = {f"features-{n}-{key['features', n]}" for n in ("digits", "words")}
    merged = {f"merge-average-{key['merge', 'average']}", f"merge-ties-{key['merge', 'ties']}"}

    # data -> features -> pivot -> experts -> merges -> evaluations -> results store -> table
    assert names(runs["features-seed0"]["inputs"]) == {f"data-{n}-{key['data', n]}" for n in ("digits", "words")}
    assert names(runs["features-seed0"]["outputs"]) == features
    assert names(runs["pivot-pivot-seed0"]["inputs"]) == features
    assert names(runs["pivot-pivot-seed0"]["outputs"]) == {pivot}
    assert names(runs["expert-digits-seed0"]["inputs"]) == {pivot, f"features-digits-{key['features', 'digits']}"}
    assert names(runs["expert-digits-seed0"]["outputs"]) == {digits}
    assert names(runs["merge-seed0"]["inputs"]) == {pivot, digits, words}
    assert names(runs["merge-seed0"]["outputs"]) == merged
    eval_inputs = names(runs["eval-seed0"]["inputs"])
    assert {pivot, digits, words} | merged <= eval_inputs
    assert any(name.startswith("eval_suite-") for name in eval_inputs)
    assert runs["eval-seed0"]["summary"]["merge:ties/projector"] == f"merge-ties-{key['merge', 'ties']}"
    eval_outputs = names(runs["eval-seed0"]["outputs"])
    results = f"results-{tmp_path.name}-out"
    assert results in eval_outputs and sum(n.startswith("eval-") for n in eval_outputs) == 5
    assert names(runs["report-lineage"]["inputs"]) == {results}
    outputs = names(a for a in runs["report-lineage"]["outputs"] if a.type != "run_table")
    assert outputs == {f"table-{tmp_path.name}-out"}

    # a projector is a reference artifact into the cache; its consumers name the very same version
    produced = {a.name: a for r in runs.values() for a in r["outputs"]}
    for r in runs.values():
        for used in r["inputs"]:
            if used.name in produced:
                assert used.digest == produced[used.name].digest, used.name
    ties = produced[f"merge-ties-{key['merge', 'ties']}"]
    assert ties.type == "projector"
    assert {e.path: e.ref for e in ties.manifest.contents}["projector.safetensors"] == \
        (ctx.merged["ties"].path / "projector.safetensors").resolve().as_uri()
    meta = json.loads(ties.metadata)
    assert meta["content_key"] == key["merge", "ties"] and meta["spec"]["options"]["density"] == 0.2
    assert meta["spec"]["experts"] == {"digits": key["expert", "digits"], "words": key["expert", "words"]}
    table_files = {e.path for e in produced[f"table-{tmp_path.name}-out"].manifest.contents}
    assert {"table.md", "table.csv", "report.html"} <= table_files
    assert "wandb sync" in capsys.readouterr().out

    # everything cached: no training/merge run, nothing logged again; eval links the existing evaluations and
    # the projectors it scored
    before = set(wandb_dir.glob("offline-run-*"))
    run(cfg)
    again = runs_by_name(wandb_dir, exclude=before)
    assert set(again) == {"eval-seed0", "report-lineage"}
    assert names(again["eval-seed0"]["outputs"]) == {results}
    evaluations = {n for n in eval_outputs if n.startswith("eval-")}
    assert names(again["eval-seed0"]["inputs"]) == evaluations | {pivot, digits, words} | merged

    # a warm run in a new run folder (what a second `make run` is): its folder logs what it reused, back to data
    warm_cfg = cfg.copy()
    warm_cfg.paths.output_dir = str(tmp_path / "warm")
    run(warm_cfg)
    warm = runs_by_name(tmp_path / "warm" / "wandb")
    assert {"eval-seed0", "report-lineage", "features-from-cache-seed0", "pivot-from-cache-seed0",
            "expert-from-cache-seed0", "merge-from-cache-seed0", "eval-from-cache-seed0"} <= set(warm)
    assert names(warm["eval-seed0"]["inputs"]) == evaluations | {pivot, digits, words} | merged
    produced = {a.name for r in warm.values() for a in r["outputs"]}
    used = {a.name for r in warm.values() for a in r["inputs"]}
    assert {pivot, digits, words} | merged | evaluations | features <= produced
    assert {n for n in used - produced if not n.startswith("results-")} == \
        {f"data-{n}-{key['data', n]}" for n in ("digits", "words")}


def test_every_cache_kind_is_a_wandb_artifact_type_or_deliberately_not_logged():
    """A new cache kind (the `sft` stage's tuned projectors were one) must say how W&B logs it: before this
    check, logging an sft entry failed with KeyError: 'sft' at the end of every tuning."""
    from pivotmerge.artifacts import BUILTIN_KINDS
    from pivotmerge.wandb_logging import ARTIFACT_TYPES, NOT_LOGGED

    assert BUILTIN_KINDS - NOT_LOGGED == set(ARTIFACT_TYPES)
    assert not NOT_LOGGED & set(ARTIFACT_TYPES)
