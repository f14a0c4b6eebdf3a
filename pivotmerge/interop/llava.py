"""LLaVA's projector file format, both ways.

LLaVA's stage-1 run saves ``mm_projector.bin``: ``torch.save`` of a flat dict whose keys carry the model
prefix, ``model.mm_projector.0.weight``, ``model.mm_projector.0.bias``, ``model.mm_projector.2.weight``, ...
Stage 2 reads it with ``--pretrain_mm_mlp_adapter``, keeping every key that contains ``mm_projector`` and
stripping everything up to ``mm_projector.``. Our projectors use LLaVA's own module names (``0.weight`` ...),
so the conversion is the prefix (and optionally a dtype).

* ``export_llava(IN, OUT)``: a pivotmerge projector (pivot, expert, merged; safetensors or .bin) ->
  LLaVA ``mm_projector.bin``.
* ``import_llava(IN, OUT)``: a LLaVA projector file, a full LLaVA checkpoint (any keys, ``.bin`` or
  ``.safetensors``, or a checkpoint folder with sharded weights and an index) or a Lightning checkpoint of
  ours -> a plain projector state dict, usable as a pivot or expert by ``pivotmerge merge``.

CLI (pivotmerge/cli/llava.py): ``pivotmerge export-llava IN OUT [--dtype bfloat16]`` and
``pivotmerge import-llava IN OUT``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from pivotmerge.errors import ConfigError
from pivotmerge.io import CheckpointError, load_state_dict, save_state_dict

LLAVA_PREFIX = "model.mm_projector."
_MARKERS = ("mm_projector.", "mllm.projector.")  # LLaVA's module name; ours inside a Lightning checkpoint
_BARE_KEY = re.compile(r"^(\d+\.)?(weight|bias)$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or dtype == "keep" or isinstance(dtype, torch.dtype):
        return dtype if isinstance(dtype, torch.dtype) else None
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)} or 'keep'")
    return DTYPES[dtype]


def _check_projector(state: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k in state if not _BARE_KEY.match(k)]
    if not state or bad:
        raise CheckpointError(f"{where}: not a projector state dict (unexpected key {bad[0]!r}); expected "
                              "LLaVA mm_projector names such as '0.weight', '2.bias'" if bad else
                              f"{where}: no projector weights found")


def to_llava(state: dict[str, torch.Tensor], dtype: str | torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Projector state dict (``0.weight`` ...) -> LLaVA keys (``model.mm_projector.0.weight`` ...)."""
    _check_projector(state, "export")
    target = _dtype(dtype)
    return {LLAVA_PREFIX + k: (v.to(target) if target is not None and v.is_floating_point() else v)
            for k, v in state.items()}


def from_llava(state: dict[str, torch.Tensor], dtype: str | torch.dtype | None = None,
               where: str = "input") -> dict[str, torch.Tensor]:
    """Any state dict holding a projector -> the bare projector (``0.weight`` ...).

    Keys containing ``mm_projector.`` (any prefix: ``model.``, ``base_model.model.model.``, ``module.``) or
    ``mllm.projector.`` are kept with everything up to the marker stripped, exactly as LLaVA's loader does;
    other keys (the LLM, the vision tower) are ignored. A state dict that already is a bare projector passes.
    """
    target = _dtype(dtype)
    for marker in _MARKERS:
        found = {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}
        if found:
            break
    else:
        found = dict(state) if state and all(_BARE_KEY.match(k) for k in state) else {}
    if not found:
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(f"{where}: no 'mm_projector' weights in this checkpoint (keys start: {sample})")
    _check_projector(found, where)
    return {k: (v.to(target) if target is not None and v.is_floating_point() else v).contiguous()
            for k, v in sorted(found.items())}


def _wanted(key: str) -> bool:
    return any(m in key for m in _MARKERS)


def read_projector_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read only what is needed: a file, or a HF checkpoint folder (index JSON -> the shards with the projector)."""
    path = Path(path)
    if path.is_dir():
        for name in ("mm_projector.bin", "mm_projector.safetensors"):
            if (path / name).is_file():
                return read_projector_checkpoint(path / name)
        shards: list[Path] = []
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = path / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text()).get("weight_map", {})
                shards = sorted({path / f for k, f in weight_map.items() if _wanted(k)})
                break
        if not shards:
            shards = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_projector_checkpoint(shard))
        if not state:
            raise CheckpointError(f"{path}: no checkpoint file with projector weights in this folder")
        return state
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                chosen = [k for k in keys if _wanted(k)] or keys  # a bare projector file has no prefix
                return {k: f.get_tensor(k) for k in chosen}
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        try:  # mmap: a 13 GB full checkpoint is not read into memory to take 20 M projector values
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            obj = None
        if obj is None:
            return load_state_dict(path)  # its error message names the problem
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        chosen = {k: v for k, v in tensors.items() if _wanted(k)} or tensors
        return {k: v.clone() for k, v in chosen.items()}
    raise CheckpointError(f"{path}: unsupported extension {path.suffix or '(none)'!r}; use .bin or .safetensors")


def export_llava(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None) -> dict:
    """Write ``dst`` (LLaVA's mm_projector.bin: torch.save of a prefixed flat dict); returns the dict written."""
    state = to_llava(from_llava(load_state_dict(src), where=str(src)), dtype)
    dst = Path(dst)
    if dst.suffix != ".bin":
        raise ConfigError(f"{dst}: LLaVA reads mm_projector.bin (torch.save); give OUT a .bin name")
    save_state_dict(state, dst)
    return state


def import_llava(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None) -> dict:
    """Write ``dst`` (a bare projector, format by extension) from a LLaVA projector file or full checkpoint."""
    state = from_llava(read_projector_checkpoint(src), dtype, where=str(src))
    save_state_dict(state, dst)
    return state
