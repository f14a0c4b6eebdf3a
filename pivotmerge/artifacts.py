"""Content-addressed, atomically written stage outputs.

Each stage output lives in `<cache>/<stage>/<key>/`, where `key` hashes the resolved sub-config that
determines it plus the stage's code version. It is written into `<key>.partial/` and renamed into place
only once complete, with a manifest of file sizes and SHA-256 digests. A killed run leaves only a
`.partial` folder (training stages resume from the Lightning checkpoint inside it).

Safe under faults and parallel runs:
* `claim(stage, key)` holds a file lock per key while an entry is built: two processes (a joblib sweep, a
  SLURM array, two terminals) never build into the same folder - the second waits, then reuses.
* every entry is checked against its manifest before it is reused; a truncated, corrupt or manifest-less
  entry is moved aside (`<key>.corrupt-<time>`) with one warning line and rebuilt.
* keys include the versions of the libraries a stage's output depends on (`STAGE_LIBRARIES`), so an
  upgrade never silently serves results computed by another version.
* a file-system fault while an entry is claimed (disk full, permission, read-only, a file removed by a
  concurrent `make clean-cache`) is one `StageIOError` line naming the entry; it stays `.partial`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pivotmerge.errors import CacheError, StageIOError

# Bump a stage's version when its code changes what it writes: old entries then stop matching.
STAGE_VERSIONS = {"data": 2, "features": 1, "pivot": 1, "expert": 1, "joint": 1, "merge": 1, "select": 1, "eval": 2,
                  "eval_suite": 2, "stats": 1, "fisher": 1, "lmc": 1,
                  "sft": 1}
BUILTIN_KINDS = frozenset(STAGE_VERSIONS)   # before any stage declares its own (`register_kind`)
MANIFEST = "manifest.json"
# Distributions whose version shapes each stage's output (part of its key).
STAGE_LIBRARIES = {
    "data": ("datasets", "pillow", "numpy", "scikit-learn", "matplotlib"),
    "features": ("torch", "pillow", "numpy", "efficientnet-lite-pytorch", "transformers"),
    "pivot": ("torch", "transformers", "lightning"),
    "expert": ("torch", "transformers", "lightning"),
    "joint": ("torch", "transformers", "lightning"),
    "sft": ("torch", "transformers", "lightning", "peft"),
    "merge": ("torch",),
    "select": ("torch", "transformers"),
    "stats": ("torch", "transformers"),
    "lmc": ("torch", "transformers"),
    "fisher": ("torch", "transformers"),
    "eval": ("torch", "transformers", "lmms-eval", "datasets"),
    "eval_suite": ("datasets", "pyarrow", "lmms-eval"),
}


@cache
def library_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def to_plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class CacheKind:
    """A kind of cache entry a stage declares (pipeline/stage.py: `Stage.caches`): bump `version` when the code
    changes what it writes; `libraries`: the distributions whose versions shape it."""

    version: int
    libraries: tuple[str, ...] = ()


def register_kind(kind: str, spec: CacheKind) -> None:
    """Make `kind` a cache entry kind (the built-in stages' kinds are the tables above)."""
    known = (STAGE_VERSIONS.get(kind), STAGE_LIBRARIES.get(kind))
    if known != (None, None) and known != (spec.version, tuple(spec.libraries)):
        raise CacheError(f"cache entry kind {kind!r} is declared twice, differently: {known} and {spec}")
    STAGE_VERSIONS[kind], STAGE_LIBRARIES[kind] = spec.version, tuple(spec.libraries)


def content_key(stage: str, spec: dict) -> str:
    libraries = {name: library_version(name) for name in STAGE_LIBRARIES[stage]}
    payload = json.dumps({"stage": stage, "version": STAGE_VERSIONS[stage], "libraries": libraries,
                          "spec": to_plain(spec)}, sort_keys=True, default=str)
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


def write_manifest(folder: Path, extra: dict | None = None, keep: tuple[str, ...] | None = None) -> dict:
    """Record size and SHA-256 of every file under `folder` (files outside `keep` are deleted first)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == MANIFEST:
            continue
        if keep is not None and not any(rel == k or rel.startswith(k.rstrip("/") + "/") for k in keep):
            path.unlink()
            continue
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {**(extra or {}), "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def folder_problem(folder: Path, deep: bool = True) -> str | None:
    """Why `folder` does not match its manifest (None when it does)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"it has no readable manifest ({type(exc).__name__})"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{rel} is truncated ({path.stat().st_size} of {meta['bytes']} bytes)"
        if deep and _sha256(path) != meta["sha256"]:
            return f"{rel} is corrupt (checksum mismatch)"
    return None


def quarantine(folder: Path, reason: str) -> Path:
    """Move a bad cache folder aside (kept for inspection, never reused) with one warning line."""
    aside = folder.with_name(f"{folder.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(folder, aside)
    print(f"[   cache] WARNING: {folder} is unusable ({reason}): moved aside to {aside.name}; rebuilding it",
          file=sys.stderr, flush=True)
    return aside


@contextmanager
def key_lock(lock_path: Path, what: str) -> Iterator[None]:
    """An inter-process lock; says once that it waits when another process holds it."""
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[   cache] {what} is being built by another process: waiting for it", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._verified: set[tuple[str, str]] = set()

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.partial"

    def exists(self, stage: str, key: str) -> bool:
        """A complete, intact entry exists. A damaged one is moved aside (and reported), so it is rebuilt."""
        if (stage, key) in self._verified and (self.folder(stage, key) / MANIFEST).is_file():
            return True
        folder = self.folder(stage, key)
        if not folder.exists():
            return False
        problem = folder_problem(folder)
        if problem is not None:
            quarantine(folder, problem)
            return False
        self._verified.add((stage, key))
        return True

    @contextmanager
    def claim(self, stage: str, key: str, *, lock: bool = True) -> Iterator[Path | None]:
        """Exclusive right to build `stage/key`: yields None when an intact entry exists (reuse it), else the
        staging folder to fill before `commit`. `lock=False` for processes that share a builder's claim
        (the non-zero ranks of a multi-GPU training run). An OSError inside becomes a StageIOError naming the
        entry."""
        entry = self.folder(stage, key)
        try:
            if self.exists(stage, key):
                yield None
                return
            entry = self.partial(stage, key)
            if not lock:
                yield self.begin(stage, key)
                return
            with key_lock(self.root / ".locks" / stage / f"{key}.lock", f"{stage}/{key}"):
                yield None if self.exists(stage, key) else self.begin(stage, key)
        except OSError as exc:
            # disk full, permission, read-only file system, a file removed under us: one line (the runner adds
            # the stage). Only `commit` makes an entry complete, so what was being built stays `.partial`.
            raise StageIOError(exc, str(entry)) from exc

    def entry(self, stage: str, spec: dict, build: Callable[[Path], None], *, keep: tuple[str, ...] | None = None,
              builder: bool = True) -> Artifact:
        """The entry of `stage` for `spec`: reused when intact, else `build(staging)` fills the staging folder
        and it is committed. `builder=False`: another process (rank 0 of a multi-process training run) claims
        and commits it; this one only builds alongside."""
        key = content_key(stage, spec)
        with self.claim(stage, key, lock=builder) as staging:
            if staging is None:
                return Artifact(stage, key, self.folder(stage, key), reused=True)
            build(staging)
            folder = self.commit(stage, key, spec, keep=keep) if builder else self.folder(stage, key)
            return Artifact(stage, key, folder, reused=False)

    def begin(self, stage: str, key: str) -> Path:
        """The staging folder for a new entry (kept across a crash so that training can resume)."""
        staging = self.partial(stage, key)
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self, stage: str, key: str, spec: dict, keep: tuple[str, ...] | None = None) -> Path:
        """Write the manifest and move the staging folder into place atomically."""
        staging = self.partial(stage, key)
        write_manifest(staging, {"stage": stage, "key": key, "spec": to_plain(spec)}, keep)
        for leftover in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(leftover.iterdir()):
                leftover.rmdir()
        final = self.folder(stage, key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        self._verified.add((stage, key))
        return final

    def verify(self, stage: str, key: str, deep: bool = True) -> Path:
        """Check every file of an entry against its manifest; raise CacheError naming the fix."""
        folder = self.folder(stage, key)
        if (stage, key) in self._verified and (folder / MANIFEST).is_file():
            return folder
        problem = folder_problem(folder, deep=deep)
        if problem is not None:
            raise CacheError(f"cache entry {folder} is unusable: {problem}; run again to rebuild it (a damaged "
                             "entry is moved aside automatically)")
        self._verified.add((stage, key))
        return folder
