"""Faults and parallel runs: SIGKILL mid-training, two processes on one cache key, every kind of damaged cache
entry, bit-identical cold runs, and bad configs rejected by the preflight before anything runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from pivotmerge.pipeline.runner import run
from tests.helpers import REPO as ROOT
from tests.helpers.compose import compose_cfg

TRAIN_STAGES = "stages=[data,features,pivot,experts]"


def worker(tmp: Path, model_cfg, delay: float, *overrides: str) -> subprocess.Popen:
    model_json = json.dumps(OmegaConf.to_container(model_cfg, resolve=True))
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.reliability_worker", str(tmp), model_json, str(delay),
                             *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def finish(process: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def projector(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "projector.safetensors"))


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


# ---- SIGKILL mid-training ---------------------------------------------------------------------------
@pytest.mark.slow   # ~80 s: worker processes killed and resumed
def test_sigkilled_training_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_model_cfg):
    steps = ["scenario.experts.steps=6", "trainer.checkpoint_every=1"]
    killed = worker(tmp_path / "killed", tiny_model_cfg, 0.4, *steps)
    partial = tmp_path / "killed" / "cache" / "expert"

    def checkpoint_step() -> int:
        for path in partial.glob("*.partial/checkpoints/last.ckpt"):
            try:   # Lightning writes checkpoints atomically: a file that exists is complete
                return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
            except Exception:
                pass
        return -1

    deadline = time.time() + 240
    while time.time() < deadline and checkpoint_step() < 2:   # kill mid-expert, past its second checkpoint
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 2 <= checkpoint_step() < 6, "the kill did not land inside an expert's training"

    resumed = finish(worker(tmp_path / "killed", tiny_model_cfg, 0.0, *steps))
    clean = finish(worker(tmp_path / "clean", tiny_model_cfg, 0.0, *steps))
    expert_runs = [r for r in resumed["log"] if r["stage"] == "expert"]
    resumed_any = any(json.loads((Path(r["path"]) / "metrics.json").read_text()).get("resumed")
                      for r in expert_runs if r["status"] == "ran")
    assert resumed_any, "no expert resumed from the killed run's checkpoint"
    assert set(resumed["projectors"]) == set(clean["projectors"])
    for name in clean["projectors"]:
        assert_same(projector(resumed["projectors"][name]), projector(clean["projectors"][name]))
    assert not list(partial.glob("*.partial"))


# ---- two processes on one cache key -----------------------------------------------------------------
@pytest.mark.slow   # ~60 s: two worker processes
def test_two_processes_on_one_cache_key_train_once(tmp_path, tiny_model_cfg):
    first, second = (worker(tmp_path, tiny_model_cfg, 0.3) for _ in range(2))
    results = [finish(first), finish(second)]
    for stage in ("data", "features", "pivot", "expert"):
        for name in {r["name"] for r in results[0]["log"] if r["stage"] == stage}:
            statuses = sorted(next(r["status"] for r in res["log"] if r["stage"] == stage and r["name"] == name)
                              for res in results)
            assert statuses == ["ran", "reused"], (stage, name, statuses)
    assert results[0]["projectors"] == results[1]["projectors"]
    for stage in ("pivot", "expert"):
        folders = [p for p in (tmp_path / "cache" / stage).iterdir() if p.is_dir()]
        assert all(not p.name.endswith(".partial") for p in folders)
        assert len(folders) == len({r["key"] for r in results[0]["log"] if r["stage"] == stage})


# ---- damaged cache entries of every kind, and bit-identical cold runs -------------------------------------
FULL = ["stages=[data,features,pivot,experts,merge,eval,report]", "merge=[task_arithmetic,ties]",
        "eval.tasks=[pm_mc_*,pm_pope]", "eval.limit=6", "eval.workers=1"]


@pytest.fixture(scope="module")
def two_cold_runs(tmp_path_factory, tiny_model_cfg):
    runs = []
    for name in ("a", "b"):
        tmp = tmp_path_factory.mktemp(f"cold-{name}")
        cfg = compose_cfg(tmp, tiny_model_cfg, FULL)
        runs.append((tmp, cfg, run(cfg)))
    return runs


@pytest.mark.slow   # the two_cold_runs fixture: ~50 s, two full runs
def test_two_cold_runs_give_byte_identical_tables(two_cold_runs):
    tables = [(Path(cfg.paths.output_dir) / "report" / "table.csv").read_bytes() for _, cfg, _ in two_cold_runs]
    assert tables[0] == tables[1] and tables[0].count(b"\n") >= 4


def _damage(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if len(data) > 64 else data + b"x")


DAMAGE = {   # stage folder -> a file inside the entry to damage
    "data": "dataset/**/*.arrow", "features": "train.safetensors", "pivot": "projector.safetensors",
    "expert": "projector.safetensors", "merge": "projector.safetensors", "eval": "results.json",
    "eval_suite": "*.parquet",
}


@pytest.mark.slow   # uses the two_cold_runs fixture
@pytest.mark.parametrize("stage", sorted(DAMAGE))
def test_damaged_entry_is_moved_aside_and_rebuilt(two_cold_runs, stage, capfd):
    tmp, cfg, _ = two_cold_runs[0]
    cache = Path(cfg.paths.cache_dir)
    entry = next(p for p in sorted((cache / stage).iterdir()) if p.is_dir() and "." not in p.name)
    target = next(iter(sorted(entry.glob(DAMAGE[stage]))))
    _damage(target)
    table = Path(cfg.paths.output_dir) / "report" / "table.csv"
    before = table.read_bytes()
    ctx = run(cfg)
    err = capfd.readouterr().err
    assert f"{entry} is unusable" in err and "moved aside" in err
    assert list((cache / stage).glob(f"{entry.name}.corrupt-*"))
    assert any(r["key"] == entry.name and r["status"] == "ran" for r in ctx.log.rows) or stage in ("eval_suite",)
    assert (entry / "manifest.json").is_file()                  # rebuilt in place
    assert table.read_bytes() == before                         # and to the same numbers


def test_unreadable_checkpoint_is_moved_aside_and_training_restarts(tmp_path, tiny_model_cfg, capfd):
    from pivotmerge.artifacts import content_key  # noqa: F401 - the key is read back from the log

    cfg = compose_cfg(tmp_path, tiny_model_cfg, [TRAIN_STAGES])
    clean = run(cfg)
    expert = next(iter(clean.experts.values()))
    state = projector(expert.path)
    # turn the finished entry back into a half-done one whose checkpoint was cut by a kill
    partial = expert.path.with_name(expert.path.name + ".partial")
    expert.path.rename(partial)
    (partial / "checkpoints").mkdir()
    (partial / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02truncated")
    again = run(cfg)
    assert "unreadable checkpoint" in capfd.readouterr().err
    assert_same(projector(again.experts[next(iter(clean.experts))].path), state)


def test_damaged_converted_model_is_reconverted(tmp_path, monkeypatch, capfd):
    from pivotmerge.models import llm

    conversions = []

    def fake_convert(target: Path) -> None:   # the real conversion takes ~30 s: the slow smoke test runs it
        from pivotmerge.artifacts import write_manifest

        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"weights" * 100)
        write_manifest(target)
        conversions.append(target)

    monkeypatch.setattr(llm, "_convert_smollm2_into", fake_convert)
    folder = llm.convert_smollm2(tmp_path)
    assert llm.convert_smollm2(tmp_path) == folder and len(conversions) == 1      # reused when intact
    _damage(folder / "model.safetensors")
    assert llm.convert_smollm2(tmp_path) == folder and len(conversions) == 2      # rebuilt when damaged
    assert "moved aside" in capfd.readouterr().err
    assert len(list(tmp_path.glob("smollm2-135m-instruct.corrupt-*"))) == 1


def test_cache_keys_carry_library_versions(monkeypatch):
    from pivotmerge import artifacts

    before = artifacts.content_key("expert", {"a": 1})
    monkeypatch.setattr(artifacts, "library_version", lambda name: "0.0-other" if name == "torch" else "x")
    assert artifacts.content_key("expert", {"a": 1}) != before


# ---- the preflight ----------------------------------------------------------------------------------------
BAD_CONFIGS = [   # (override, what the one-line message must name)
    ("seed=abc", "config seed='abc' must be an integer"),
    ("seeds=[0,x]", "non-integer seed"),
    ("scenario.experts.steps=0", "config scenario.experts.steps=0 must be >= 1"),
    ("scenario.pivot.steps=0", "scenario.pivot.steps=0 must be >= 1"),
    ("merge.ties.density=1.5", "merge.ties: ties: option density=1.5"),
    ("eval.batch_size=0", "eval.batch_size=0 must be >= 1"),
    ("trainer.lr=0", "trainer.lr=0 must be > 0"),
    ("trainer.batch_size=2.5", "trainer.batch_size=2.5 must be an integer"),
    ("trainer.precision=fp8", "trainer.precision='fp8' must be one of"),
    ("eval.tasks=[pm_nope]", "names 'pm_nope', which the embedded suite does not have"),
    ("num_experts_merged=9", "num_experts_merged=9 exceeds"),
    ("scenario.sources=[digits,nope]", "names ['nope'], which data=embedded does not define"),
    ("stages=[data,train]", "unknown stage(s) ['train']"),
    ("model.vision.grid=0", "model.vision.grid=0 must be >= 1"),
    ("merge.pivotmerge.filter=weird", "option filter='weird'"),
    ("eval.workers=0", "eval.workers=0 must be >= 1"),
    ("calibration.per_source=0", "calibration.per_source=0 must be >= 1"),
    ("calibration.loss_kind=caption", "is the noise margin of the guarded loss; with calibration.loss_kind=caption it"),
]


def _run_py(tmp: Path, override: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", override, "logger=none", f"paths.cache_dir={tmp}/cache",
                           f"hydra.run.dir={tmp}/out"], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow   # 18 run.py processes: minutes on 2 busy cores
def test_bad_configs_are_rejected_before_anything_runs(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: _run_py(tmp_path / str(case[0]), case[1][0]), enumerate(BAD_CONFIGS)))
    for (override, expected), result in zip(BAD_CONFIGS, results):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, (override, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (override, result.stderr[-2000:])
        assert len(errors) == 1 and expected in errors[0], (override, errors)
    assert not any((tmp_path / str(i) / "cache").exists() for i in range(len(BAD_CONFIGS)))


def test_preflight_names_a_package_that_cannot_be_imported(tmp_path, tiny_model_cfg, monkeypatch):
    from pivotmerge import preflight

    cfg = compose_cfg(tmp_path, tiny_model_cfg, [TRAIN_STAGES])
    monkeypatch.setattr(preflight, "required_modules", lambda cfg: [("no_such_package_xyz", "a test")])
    with pytest.raises(preflight.PreflightError, match="'no_such_package_xyz' .*needed for a test.*make setup"):
        preflight.check(cfg)
    assert not (tmp_path / "cache").exists()
