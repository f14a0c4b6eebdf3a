"""Entry point: `python run.py experiment=pivotmerge_vs_ties` (see README for sweeps and scale)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pivotmerge.errors import PivotMergeError
    from pivotmerge.pipeline.runner import run

    try:
        run(cfg)
    except PivotMergeError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
