"""trainer=ddp on CPU: two gloo ranks train a few steps and end with identical projector weights."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import REPO

WORKER = REPO / "tests" / "helpers" / "scale_ddp_worker.py"


@pytest.mark.slow   # ~27 s: two gloo ranks
def test_ddp_two_cpu_ranks_end_identical(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(29500 + os.getpid() % 1000), "PL_DISABLE_FORK": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "models"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [tmp_path / "rank0.safetensors", tmp_path / "rank1.safetensors"]
    assert all(f.is_file() for f in files), sorted(p.name for p in tmp_path.iterdir())
    rank0, rank1 = (load_file(str(f)) for f in files)
    assert sorted(rank0) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    with safe_open(str(files[0]), "pt") as f:
        meta = f.metadata()
    assert meta["world_size"] == "2" and meta["global_step"] == "3"
    assert torch.isfinite(torch.tensor(float(meta["loss"])))
    # it trained: the weights moved away from rank 0's seeded start
    from pivotmerge.models.projector import build_projector

    torch.manual_seed(0)
    start = build_projector("mlp2x_gelu", 24, 32).state_dict()
    assert not torch.equal(start["0.weight"], rank0["0.weight"])
