"""The pipeline's command line: `python run.py <overrides>` in a checkout, `pivotmerge-run <overrides>` or
`python -m pivotmerge.run <overrides>` after any install (the configs ship inside the package as
`pkg://pivotmerge.conf`). See the README for experiments, sweeps and scale."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="pkg://pivotmerge.conf", config_name="config", version_base="1.3")
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
