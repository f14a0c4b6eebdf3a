"""What code made an output: the package version and the git commit of the checkout (run_info.json, the
provenance that `pivotmerge merge` writes into a merged file)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version(root: Path = REPO_ROOT) -> str:
    """Short commit of the checkout at `root` (+ '-dirty' with uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pivotmerge")
    except PackageNotFoundError:
        return "unknown"


def version_string() -> str:
    """'pivotmerge 0.1.0 (f4b8f87)'."""
    return f"pivotmerge {package_version()} ({code_version()})"
