"""The tiny-model full pipeline (data .. report) whose table must not change under a refactor.

    python tools/tiny_table.py OUT_DIR [--models DIR]

Composes the real Hydra config with the tiny random models of the tests (tests/helpers/tiny_models.py), two
small real sources, two seeds, five merges (two data-free baselines, PivotMerge's two readings - the feature-space one
with alm=data, so the calibration loss swaps projectors - and RegMean) and a few benchmarks of every kind on
`eval.limit` items, runs pivotmerge.pipeline.runner.run with
fresh caches under OUT_DIR, and leaves the run folder at OUT_DIR/out. Compare two runs' report/table.* and
results/results.jsonl byte for byte (`cmp`). `--models`: reuse the tiny model folders of an earlier run
(built there when missing), so that both sides read the very same weights.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = ["stages=[data,features,pivot,experts,merge,eval,report]",
             "merge=[task_arithmetic,ties,pivotmerge_data_free,pivotmerge,regmean]", "merge.pivotmerge.alm=data",
             "seeds=[0,1]",
             "eval.tasks=[pm_cls_*,pm_nll_*,pm_mc_*,pm_pope,pm_mme,pm_open_digits,pm_cross_mc]",
             "eval.limit=6", "eval.workers=1", "eval.bootstrap_iters=0", "calibration.train_rows=16"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from omegaconf import OmegaConf

    from pivotmerge.pipeline.runner import run
    from tests.helpers.compose import compose_cfg
    from tests.helpers.tiny_models import build_tiny_models, tiny_model_dict
    models = args.models or args.out / "models"
    if not (models / "llm" / "config.json").is_file():
        build_tiny_models(models)
    model_cfg = OmegaConf.create(tiny_model_dict(models))
    run(compose_cfg(args.out, model_cfg, OVERRIDES))


if __name__ == "__main__":
    main()
