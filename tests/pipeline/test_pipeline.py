"""The pipeline's stages on tiny models: they run, cache by content, resume, and fail clearly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pivotmerge.errors import ConfigError, DataError
from pivotmerge.pipeline.runner import run
from tests.helpers import REPO as ROOT
from tests.helpers.compose import compose_cfg

STAGES = "stages=[data,features,pivot,experts]"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_cfg):
    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = compose_cfg(tmp, tiny_model_cfg, [STAGES])
    return tmp, cfg, run(cfg)


def test_stages_run_then_are_reused(first_run, tiny_model_cfg):
    tmp, cfg, ctx = first_run
    statuses = {(r["stage"], r["name"].split(" ")[0]): r["status"] for r in ctx.log.rows}
    assert set(statuses.values()) == {"ran"}
    assert {name for stage, name in statuses if stage == "expert"} == {"digits", "words"}
    again = run(cfg)
    assert {r["status"] for r in again.log.rows} == {"reused"}
    # experts start from the pivot and move away from it
    pivot = again.projector(again.pivot)
    for artifact in again.experts.values():
        expert = again.projector(artifact)
        assert set(expert) == set(pivot) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert any(not torch.equal(expert[k], pivot[k]) for k in pivot)
    assert (Path(cfg.paths.output_dir) / "resolved_config.yaml").is_file()
    assert json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())["seeds"] == [0]


def test_data_splits_are_disjoint_and_deterministic(first_run):
    from pivotmerge.pipeline.data import load_dataset_dict

    _, _, ctx = first_run
    data = load_dataset_dict(ctx.data["digits"].path)
    assert (len(data["train"]), len(data["val"]), len(data["test"])) == (24, 8, 8)
    # the same rows come back from a rebuild: compare pixels of test vs train images
    train = {bytes(img.tobytes()) for img in data["train"]["image"]}
    assert not any(bytes(img.tobytes()) in train for img in data["test"]["image"])
    assert len(set(data["test"]["label"])) == 8  # label-balanced test split (10 digit classes, 8 rows)


def test_changing_an_expert_option_reuses_upstream(first_run, tiny_model_cfg, tmp_path, capsys):
    tmp, _, _ = first_run
    cfg = compose_cfg(tmp, tiny_model_cfg, [STAGES, "scenario.experts.steps=2", "trainer.progress_bar=true"])
    ctx = run(cfg)
    status = {r["stage"]: r["status"] for r in ctx.log.rows}
    assert status["data"] == status["features"] == status["pivot"] == "reused"
    assert status["expert"] == "ran"
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    # the bar (a line per 10 % off a terminal) names the stage and counts steps
    assert "expert digits" in shown and "2/2" in shown


def test_caption_change_retrains_but_keeps_images_and_features(first_run, tiny_model_cfg):
    tmp, _, ctx0 = first_run
    caption_change = "data.sources.digits.caption_templates=['the digit {label}']"
    ctx1 = run(compose_cfg(tmp, tiny_model_cfg, [STAGES, caption_change]))
    status = {(r["stage"], r["name"].split(" ")[0]): r["status"] for r in ctx1.log.rows}
    assert status[("data", "digits")] == status[("features", "digits")] == "reused"
    assert status[("pivot", "pivot")] == "ran"          # the pivot is trained on every source's captions
    assert ctx1.pivot.key != ctx0.pivot.key
    assert {ctx1.experts[n].key for n in ctx1.experts}.isdisjoint({ctx0.experts[n].key for n in ctx0.experts})


def test_seed_changes_pivot_and_experts(first_run, tiny_model_cfg):
    tmp, _, ctx0 = first_run
    ctx1 = run(compose_cfg(tmp, tiny_model_cfg, [STAGES, "seed=1"]))
    assert ctx1.pivot.key != ctx0.pivot.key
    assert not torch.equal(ctx1.projector(ctx1.pivot)["0.weight"], ctx0.projector(ctx0.pivot)["0.weight"])
    status = {r["stage"]: r["status"] for r in ctx1.log.rows}
    assert status["data"] == status["features"] == "reused"


@pytest.mark.slow   # 23-28 s: trains the tiny pipeline twice
def test_training_is_deterministic(tiny_model_cfg, tmp_path):
    a = run(compose_cfg(tmp_path / "a", tiny_model_cfg, [STAGES]))
    b = run(compose_cfg(tmp_path / "b", tiny_model_cfg, [STAGES]))
    for name in a.experts:
        sa, sb = a.projector(a.experts[name]), b.projector(b.experts[name])
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow   # 17-29 s: a killed and a resumed training run
def test_killed_run_resumes_from_checkpoint(tiny_model_cfg, tmp_path, monkeypatch):
    """A run that dies mid-training resumes from its last checkpoint and ends where a clean run ends."""
    from pivotmerge.training import ProjectorAlignment

    clean = run(compose_cfg(tmp_path / "clean", tiny_model_cfg, [STAGES]))
    cfg = compose_cfg(tmp_path / "crash", tiny_model_cfg, [STAGES])
    original_step = ProjectorAlignment.training_step

    def dying_step(self, batch, index):
        if self.trainer.global_step == 2 and self.max_steps == 3:
            raise RuntimeError("simulated crash")
        return original_step(self, batch, index)

    monkeypatch.setattr(ProjectorAlignment, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    partial = list((tmp_path / "crash" / "cache" / "expert").glob("*.partial/checkpoints/last.ckpt"))
    assert len(partial) == 1
    monkeypatch.setattr(ProjectorAlignment, "training_step", original_step)
    resumed = run(cfg)
    name = next(iter(resumed.experts))
    metrics = json.loads((resumed.experts[name].path / "metrics.json").read_text())
    assert metrics["resumed"] is True
    a, b = resumed.projector(resumed.experts[name]), clean.projector(clean.experts[name])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not list((tmp_path / "crash" / "cache" / "expert").glob("*.partial"))


def test_unknown_source_and_empty_source_are_clear(tiny_model_cfg, tmp_path):
    with pytest.raises(ConfigError, match="scenario.sources=\\['nope'\\] names \\['nope'\\]"):
        run(compose_cfg(tmp_path, tiny_model_cfg, [STAGES, "scenario.sources=[nope]"]))
    with pytest.raises(DataError, match="words"):
        run(compose_cfg(tmp_path, tiny_model_cfg, [STAGES, "scenario.sources=[words]",
                                                   "data.sources.words.count=0"]))


def test_run_py_reports_unknown_config_name_without_traceback():
    result = subprocess.run([sys.executable, "run.py", "model=nope", "--cfg", "job"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "conf/model/ has no 'nope'" in result.stderr and "Traceback" not in result.stderr
    assert "embedded" in result.stderr  # lists the available options


def test_merge_stage_selection_and_reuse(first_run, tiny_model_cfg, monkeypatch):
    import pivotmerge.pipeline.merge as merge_stage
    from pivotmerge.merging.call import merge

    tmp, _, _ = first_run
    overrides = ["stages=[data,features,pivot,experts,merge]", "merge=[ties,pivotmerge]",
                 "merge.pivotmerge.alm=data", "merge.pivotmerge.consensus=joint", "calibration.per_source=4",
                 "merge_search.enabled=true",
                 "merge_search.budget=2", "+merge_search.grids.ties.density=[0.5]",
                 "+merge_search.grids.pivotmerge.rank_ratio=[0.25]"]
    calls = []
    monkeypatch.setattr(merge_stage, "merge", lambda *a, **k: calls.append(a[3]) or merge(*a, **k))
    ctx = run(compose_cfg(tmp, tiny_model_cfg, overrides))
    assert set(ctx.merged) == {"ties", "pivotmerge"}
    # every candidate is merged once, the chosen one included: the stored merge is the search's own
    assert len(calls) == 4
    chosen = json.loads((Path(ctx.output_dir) / "selection_seed0.json").read_text())["ties"]["chosen"]
    fresh = merge("ties", ctx.projector(ctx.pivot), [ctx.projector(a) for a in ctx.experts.values()], chosen)
    stored = ctx.projector(ctx.merged["ties"])
    assert all(torch.equal(stored[k], fresh[k]) for k in fresh)
    for artifact in ctx.merged.values():
        assert (artifact.path / "projector.safetensors").is_file()
        diag = json.loads((artifact.path / "diagnostics" / "diagnostics.json").read_text())
        assert diag["experts"] == ["digits", "words"]
    pm_diag = json.loads((ctx.merged["pivotmerge"].path / "diagnostics" / "diagnostics.json").read_text())
    assert "layer_weight" in json.dumps(pm_diag)
    selection = json.loads((Path(ctx.output_dir) / "selection_seed0.json").read_text())
    # the same budget for every method, and the chosen point is the one with the lowest val loss
    assert {len(v["candidates"]) for v in selection.values()} == {2}
    for entry in selection.values():
        best = min(entry["candidates"], key=lambda row: row["val_loss"])
        assert best["options"] == entry["chosen"]
    # the VAL check scores the stored merge with the search's loss: the chosen candidate's number again
    check = json.loads((Path(ctx.output_dir) / "val_check_seed0.json").read_text())
    assert set(check["losses"]) == {"pivot", "merge:ties", "merge:pivotmerge"}
    for name, entry in selection.items():
        best = min(row["val_loss"] for row in entry["candidates"])
        assert check["losses"][f"merge:{name}"]["caption"] == pytest.approx(best, abs=1e-4)
    pivot = check["losses"]["pivot"]
    above = sorted(m for m, row in check["losses"].items() if row["kway"] > pivot["kway"])
    assert check["above_pivot"]["kway"] == above
    # the search and the check are timed in stages.json (a search spreads over many cache entries)
    searched = {r["name"]: r["status"] for r in ctx.log.rows if r["stage"] == "select"}
    assert set(searched) == {"ties", "pivotmerge", "VAL check"} and set(searched.values()) == {"ran"}
    again = run(compose_cfg(tmp, tiny_model_cfg, overrides))
    assert {r["status"] for r in again.log.rows if r["stage"] in ("merge", "select")} == {"reused"}


def test_merge_stage_runs_the_subspace_methods_with_their_scale_searched(first_run, tiny_model_cfg):
    tmp, _, _ = first_run
    names = ["tsv_m", "iso_c", "iso_cts", "wudi"]
    ctx = run(compose_cfg(tmp, tiny_model_cfg, [
        "stages=[data,features,pivot,experts,merge]", f"merge=[{','.join(names)}]", "calibration.per_source=4",
        "merge_search.enabled=true", "merge_search.budget=2", "+merge_search.grids.iso_c.alpha=[0.5]"]))
    assert set(ctx.merged) == set(names)
    pivot = ctx.projector(ctx.pivot)
    for name in names:
        merged = ctx.projector(ctx.merged[name])
        assert set(merged) == set(pivot) and all(torch.isfinite(v).all() for v in merged.values())
        diag = json.loads((ctx.merged[name].path / "diagnostics" / "diagnostics.json").read_text())
        assert diag["method"] == name and diag["experts"] == ["digits", "words"]
    selection = json.loads((Path(ctx.output_dir) / "selection_seed0.json").read_text())
    assert [c["options"]["alpha"] for c in selection["iso_c"]["candidates"]] == [1.0, 0.5]


def test_merge_subset_of_experts(first_run, tiny_model_cfg):
    tmp, _, _ = first_run
    ctx = run(compose_cfg(tmp, tiny_model_cfg, ["stages=[data,features,pivot,experts,merge]", "merge=[average]",
                                                "num_experts_merged=1"]))
    merged = ctx.projector(ctx.merged["average"])
    expert = ctx.projector(ctx.experts["digits"])
    assert all(torch.allclose(merged[k], expert[k]) for k in merged)  # averaging one expert returns it
    with pytest.raises(ConfigError, match="num_experts_merged=5"):
        run(compose_cfg(tmp, tiny_model_cfg, ["stages=[data,features,pivot,experts,merge]", "merge=[average]",
                                              "num_experts_merged=5"]))


@pytest.mark.parametrize("guard_se", [0.0, 2.0])
def test_a_guarded_calibration_loss_keeps_pivotmerge_no_worse_than_its_pivot_on_both_losses(first_run, tiny_model_cfg,
                                                                                             guard_se):
    """calibration.loss_kind=kway_guarded through the stage: on the calibration (TRAIN) rows the merged projector
    is no worse than the pivot on the k-way loss and on the caption NLL alike. (The tiny model's unguarded merge
    happens to keep both too; tests/pipeline/test_guarded_loss.py shows the guard binding.)"""
    from pivotmerge.pipeline.merge import make_calibration_loss, make_kway_loss

    tmp, _, _ = first_run
    ctx = run(compose_cfg(tmp, tiny_model_cfg, [
        "stages=[data,features,pivot,experts,merge]", "merge=[pivotmerge]", "calibration.per_source=4",
        "calibration.loss_kind=kway_guarded", f"calibration.guard_se={guard_se}", "merge_diagnostics.lmc=false"]))
    pivot, merged = ctx.projector(ctx.pivot), ctx.projector(ctx.merged["pivotmerge"])
    for make in (make_kway_loss, make_calibration_loss):
        loss = make(ctx, 4, "train")
        assert loss(merged) <= loss(pivot) + 1e-6, make.__name__
    diag = json.loads((ctx.merged["pivotmerge"].path / "diagnostics" / "diagnostics.json").read_text())
    assert diag["alm_search"]["merged_loss"] <= diag["alm_search"]["pivot_loss"]
