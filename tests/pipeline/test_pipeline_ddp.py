"""`run.py trainer=ddp` on two CPU (gloo) ranks: the pipeline trains, rank 0 commits each stage once."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO as ROOT
from tests.helpers.tiny_models import build_tiny_models


@pytest.mark.slow   # 50-65 s: the pipeline in two gloo ranks
@pytest.mark.timeout(400)
def test_pipeline_under_ddp_on_cpu(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    model = build_tiny_models(tmp_path / "models")
    overrides = [
        "stages=[data,features,pivot,experts,merge]", "merge=[average]", "logger=none",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.batch_size=4", "trainer.accumulate_grad_batches=1", "trainer.val_samples=4",
        "trainer.checkpoint_every=1", "trainer.progress_bar=false",
        "scenario.sources=[digits]", "data.split.train=24", "data.split.val=8", "data.split.test=8",
        "scenario.pivot.steps=2", "scenario.pivot.samples_per_source=8", "scenario.experts.steps=2",
        f"paths.cache_dir={tmp_path}/cache", f"paths.models_dir={tmp_path}/mcache",
        f"hydra.run.dir={tmp_path}/out",
        "model.vision.kind=hf", f"+model.vision.name_or_path={model['vision']['name_or_path']}",
        "model.vision.feature_dim=24", "model.vision.image_size=32", "model.vision.grid=2",
        "+model.vision.select_layer=-2", "+model.vision.drop_cls=true",
        "model.llm.kind=hf", f"+model.llm.name_or_path={model['llm']['name_or_path']}", "model.system_prompt=null",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1",
           "MASTER_PORT": str(30500 + os.getpid() % 1000)}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "run.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cache = tmp_path / "cache"
    for stage in ("pivot", "expert", "merge"):
        entries = [p for p in (cache / stage).iterdir()]
        assert len(entries) == 1 and not entries[0].name.endswith(".partial"), entries
    metrics = json.loads(next((cache / "expert").iterdir()).joinpath("metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["final_train_loss"] is not None
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert {r["stage"] for r in stages} == {"data", "features", "pivot", "expert", "merge", "lmc"}
