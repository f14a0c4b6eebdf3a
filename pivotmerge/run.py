"""The pipeline's command line: `python run.py <overrides>` in a checkout, `pivotmerge-run <overrides>` or
`python -m pivotmerge.run <overrides>` after any install (the configs ship inside the package as
`pkg://pivotmerge.conf`). See the README for experiments, sweeps and scale."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("PIVOTMERGE_HF_OFFLINE", "1"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


def say(exc: Exception) -> None:
    """Every deliberate error ends the same way: one line on stderr (then exit code 2)."""
    try:
        print(f"\nerror: {exc}", file=sys.stderr, flush=True)
    except OSError:   # stderr also goes to run.log, on the disk that may have just filled: the console has the line
        pass


def fail(exc: Exception) -> None:
    say(exc)
    sys.exit(2)


@hydra.main(config_path="pkg://pivotmerge.conf", config_name="config", version_base="1.3")
def run_config(cfg: DictConfig) -> None:
    from pivotmerge.errors import PivotMergeError, StageIOError
    from pivotmerge.logs import run_log
    from pivotmerge.pipeline.runner import run

    error = None
    try:
        with run_log(Path(cfg.paths.output_dir) / "run.log"):   # the run folder keeps what the terminal showed
            try:
                run(cfg)
            except PivotMergeError as exc:
                error = exc
                say(exc)
    except OSError as exc:   # run.log's own disk filled up or vanished: the console has every line
        if error is None:
            error = StageIOError(exc, stage="run log")
            say(error)
    if error is not None:
        sys.exit(2)


def main() -> None:
    """Check the command line's config-group choices (Hydra's error would not list the names that exist), then
    compose and run."""
    from hydra._internal.utils import get_args_parser

    from pivotmerge.errors import PivotMergeError
    from pivotmerge.preflight.groups import check_group_choices

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    if args.config_dir is None and args.config_path is None:   # extra config folders: Hydra checks them
        try:
            check_group_choices(list(args.overrides))
        except PivotMergeError as exc:
            fail(exc)
    run_config()


if __name__ == "__main__":
    main()
