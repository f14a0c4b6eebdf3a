"""Copy what docs/results.md is generated from out of a run folder into docs/stores/ (in git).

    python experiments/archive_run.py outputs/regime_map/2026-12-04_15-28-12
    python experiments/results_doc.py            # then regenerates from outputs/ and docs/stores/ alike

outputs/ is not in git and the cache is not either; a long run (the regime map) outlives the machine it ran
on. Its stores - the per-item results, the VAL checks and option searches, the composed config, the stage
timings - are a few hundred KB, so they are kept beside the doc that cites them and the doc regenerates from
a clean clone. Models and features are not copied: re-running is the only way to get those back.
Run it again on the same folder as results land: files are overwritten, never merged.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORES = ROOT / "docs" / "stores"
# what experiments/results_doc.py and eval/regime_map.py read from a run folder, and the stage timings
KEPT = (".hydra/config.yaml", "**/results/results.jsonl", "**/val_check_seed*.json", "**/selection_seed*.json",
        "**/heldout_loss.md", "**/stages.json", "regime_times.json")
SKIPPED_DIRS = {"wandb", "wandb-cache", ".cache"}
MAX_FILE_BYTES = 5_000_000   # a store larger than this is not a store: refuse rather than bloat git


def archived_files(run_dir: Path) -> list[Path]:
    files = {p for pattern in KEPT for p in run_dir.glob(pattern) if p.is_file()}
    return sorted(p for p in files if not SKIPPED_DIRS & set(p.relative_to(run_dir).parts))


def archive(run_dir: Path, stores: Path = STORES) -> Path:
    """Copies the run's stores to <stores>/<experiment>/<run>/ (same layout); returns that folder."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise SystemExit(f"error: {run_dir} is not a run folder (no .hydra/config.yaml)")
    files = archived_files(run_dir)
    if not any(p.name == "results.jsonl" for p in files):
        raise SystemExit(f"error: {run_dir} has no results store yet (no results/results.jsonl)")
    too_big = [p for p in files if p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise SystemExit(f"error: {too_big[0]} is {too_big[0].stat().st_size / 1e6:.1f} MB, over the "
                         f"{MAX_FILE_BYTES / 1e6:.0f} MB a store may have")
    target = Path(stores) / run_dir.parent.name / run_dir.name
    for path in files:
        out = target / path.relative_to(run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
    size = sum(p.stat().st_size for p in files)
    print(f"archived {len(files)} files ({size / 1e3:.0f} KB) of {run_dir} to {target}")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder: outputs/<experiment>/<timestamp>")
    parser.add_argument("--stores", type=Path, default=STORES)
    args = parser.parse_args(argv)
    archive(args.run_dir, args.stores)


if __name__ == "__main__":
    sys.exit(main())
