"""Content-addressed, atomically written stage outputs.

Each stage output lives in `<cache>/<stage>/<key>/`, where `key` hashes the resolved sub-config that
determines it plus the stage's code version. It is written into `<key>.partial/` and renamed into place
only once complete, with a manifest of file sizes and SHA-256 digests. A killed run leaves only a
`.partial` folder (training stages resume from the Lightning checkpoint inside it); a truncated or
corrupted entry is detected on load and reported with the folder to delete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pivotmerge.errors import CacheError

# Bump a stage's version when its code changes what it writes: old entries then stop matching.
STAGE_VERSIONS = {"data": 1, "features": 1, "pivot": 1, "expert": 1, "joint": 1, "merge": 1, "select": 1, "eval": 1, "eval_suite": 1}
MANIFEST = "manifest.json"


def to_plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def content_key(stage: str, spec: dict) -> str:
    payload = json.dumps({"stage": stage, "version": STAGE_VERSIONS[stage], "spec": to_plain(spec)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    reused: bool


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.partial"

    def exists(self, stage: str, key: str) -> bool:
        return (self.folder(stage, key) / MANIFEST).is_file()

    def begin(self, stage: str, key: str) -> Path:
        """The staging folder for a new entry (kept across a crash so that training can resume)."""
        staging = self.partial(stage, key)
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self, stage: str, key: str, spec: dict, keep: tuple[str, ...] | None = None) -> Path:
        """Write the manifest and move the staging folder into place atomically."""
        staging = self.partial(stage, key)
        files = {}
        for path in sorted(staging.rglob("*")):
            rel = path.relative_to(staging).as_posix()
            if not path.is_file() or rel == MANIFEST:
                continue
            if keep is not None and not any(rel == k or rel.startswith(k.rstrip("/") + "/") for k in keep):
                path.unlink()
                continue
            files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"stage": stage, "key": key, "spec": to_plain(spec), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        for leftover in [p for p in staging.iterdir() if p.is_dir() and not any(p.rglob("*"))]:
            leftover.rmdir()
        final = self.folder(stage, key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def verify(self, stage: str, key: str, deep: bool = True) -> Path:
        """Check every file of an entry against its manifest; raise CacheError naming the fix."""
        folder = self.folder(stage, key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"cache entry {folder} has no readable manifest ({exc}); delete that folder "
                             "and run again to rebuild it") from exc
        for rel, meta in manifest["files"].items():
            path = folder / rel
            problem = None
            if not path.is_file():
                problem = "is missing"
            elif path.stat().st_size != meta["bytes"]:
                problem = f"is truncated ({path.stat().st_size} of {meta['bytes']} bytes)"
            elif deep and _sha256(path) != meta["sha256"]:
                problem = "is corrupt (checksum mismatch)"
            if problem:
                raise CacheError(f"cached file {path} {problem}: delete {folder} and run again to rebuild "
                                 f"the '{stage}' stage")
        return folder
