"""A pipeline run in its own process, for the fault and concurrency tests of tests/pipeline/test_reliability.py.

    python -m tests.helpers.reliability_worker <tmp> <model cfg json> <seconds per step> [override ...]

Runs the stages data..experts on tiny models with the cache under <tmp>/cache; every training step sleeps
<seconds per step> first (so that a test can kill it mid-run or start a second process meanwhile).
Prints one JSON line: {"log": [stage log rows], "projectors": {name: artifact path}}.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    tmp, model_json, delay, *overrides = argv
    from pivotmerge.pipeline.runner import run
    from pivotmerge.training import ProjectorAlignment
    from tests.helpers.compose import compose_cfg

    original = ProjectorAlignment.training_step

    def slow_step(self, batch, index):
        time.sleep(float(delay))
        return original(self, batch, index)

    ProjectorAlignment.training_step = slow_step
    cfg = compose_cfg(Path(tmp), OmegaConf.create(json.loads(model_json)),
                      ["stages=[data,features,pivot,experts]", *overrides])
    ctx = run(cfg)
    projectors = {"pivot": str(ctx.pivot.path), **{f"expert:{k}": str(v.path) for k, v in ctx.experts.items()}}
    print(json.dumps({"log": ctx.log.rows, "projectors": projectors}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
