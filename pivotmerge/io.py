"""Reading and writing state dicts (safetensors or torch pickles, chosen by file extension).

* ``.safetensors``                  -> safetensors
* ``.bin``, ``.pt``, ``.pth``, ``.ckpt`` -> ``torch.load(weights_only=True)`` / ``torch.save``

Writes are atomic: the data goes to a temporary file in the target directory, then ``os.replace``;
on any error the temporary file is removed, so no partial output is ever left behind. A safetensors file
can carry string metadata (``pivotmerge merge`` writes its provenance there; ``read_metadata`` reads it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from pivotmerge.errors import PivotMergeError

SAFETENSORS_EXT = (".safetensors",)
TORCH_EXT = (".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(PivotMergeError):
    """A state-dict file is missing, unreadable, corrupt or of an unsupported format."""


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXT:
        return "safetensors"
    if suffix in TORCH_EXT:
        return "torch"
    raise CheckpointError(
        f"{path}: unsupported extension {suffix or '(none)'!r}; use one of "
        f"{', '.join(SAFETENSORS_EXT + TORCH_EXT)}"
    )


def _reason(e: Exception) -> str:
    """A short reason from a loader exception (torch's weights_only messages are long)."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        tail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = tail[0].strip() if tail and tail[0].strip() else "unsupported content"
        return f"not a plain tensor checkpoint or corrupt: {detail}"
    first = text.split(". ")[0].splitlines()[0] if text else type(e).__name__
    return first


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a flat ``{name: tensor}`` state dict (a ``{'state_dict': {...}}`` wrapper is unwrapped)."""
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a checkpoint: one clear message
        raise CheckpointError(f"{path}: cannot read {kind} state dict ({_reason(e)})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; expected a flat state dict")
    if not obj:
        raise CheckpointError(f"{path}: state dict is empty")
    return dict(obj)


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically write ``state_dict`` to ``path`` (format by extension); returns the path.

    ``metadata`` (string keys and values) goes into the safetensors header; torch pickles have no place for
    it and ignore it.
    """
    path = Path(path)
    kind = _kind(path)
    sd = {}
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor")
        # fresh contiguous copies: safetensors rejects shared/non-contiguous storage
        sd[k] = v.detach().cpu().contiguous().clone()
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"{path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        if kind == "safetensors":
            from safetensors.torch import save_file

            save_file(sd, tmp, metadata=dict(metadata) if metadata else None)
        else:
            torch.save(sd, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, (KeyboardInterrupt, SystemExit, PivotMergeError)):
            raise
        raise CheckpointError(f"{path}: cannot write {kind} state dict ({e})") from e
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for torch pickles or a file without any)."""
    path = Path(path)
    if _kind(path) != "safetensors":
        return {}
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read safetensors header ({_reason(e)})") from e


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["CheckpointError", "load_state_dict", "read_metadata", "save_state_dict", "sha256_file"]
