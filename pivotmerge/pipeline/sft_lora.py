"""`sft.llm=lora`: LoRA adapters (peft) on the shared LLM for the length of one instruction tuning.

The pipeline shares one MLLM between stages and models, so the adapters are attached for one training run
and taken off afterwards (the LLM's own weights are never changed); their trained weights are saved beside the
projector as `lora.safetensors` in the `sft/<key>` entry, whose manifest keeps the recipe: the evaluation
attaches the same adapters with those weights for that model only (`saved_adapter`, `LoraRecipe.applied`).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pivotmerge.errors import ConfigError

LORA_FILE = "lora.safetensors"
ADAPTER = "sft"
# The linear layers of the Llama-family decoders this project loads (SmolLM2, Qwen2, Vicuna/LLaVA-1.5): the
# names `sft.lora.target_modules` may use; the preflight refuses any other before a run starts.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraRecipe:
    r: int
    alpha: float
    dropout: float
    lr: float
    target_modules: tuple[str, ...]

    @classmethod
    def from_config(cls, node) -> LoraRecipe:
        return cls(int(node.r), float(node.alpha), float(node.dropout), float(node.lr),
                   tuple(str(m) for m in node.target_modules))

    @contextmanager
    def attached(self, llm: torch.nn.Module) -> Iterator[list[torch.nn.Parameter]]:
        """The LoRA parameters, trainable, while the block runs; the LLM is as before afterwards."""
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=list(self.target_modules), bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)   # the adapters' own init, the same for every projector tuned
            inject_adapter_in_model(config, llm, adapter_name=ADAPTER)
        params = [p for name, p in llm.named_parameters() if "lora_" in name]
        for p in params:
            p.requires_grad_(True)
        try:
            yield params
        finally:
            detach(llm)


    @contextmanager
    def applied(self, llm: torch.nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
        """The LLM with these adapters holding `state` (a tuned model's `lora_state`) for the block, frozen and
        without dropout (evaluation); the LLM is as before afterwards."""
        with self.attached(llm) as params:
            names = {name for name, _ in llm.named_parameters() if "lora_" in name}
            if set(state) != names:
                raise ConfigError(f"saved LoRA weights do not fit the recipe r={self.r}, target_modules="
                                  f"{list(self.target_modules)}: {len(set(state) ^ names)} tensor names differ")
            with torch.no_grad():
                for name, p in llm.named_parameters():
                    if name in state:
                        p.copy_(state[name])
            for p in params:
                p.requires_grad_(False)
            for name, module in llm.named_modules():
                if "lora_dropout" in name:
                    module.eval()
            yield


def saved_adapter(folder: Path) -> tuple[LoraRecipe, dict[str, torch.Tensor]] | None:
    """The recipe and weights of the LoRA adapters an `sft` entry holds; None for a frozen-LLM tuning."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from pivotmerge.artifacts import MANIFEST

    if not (Path(folder) / LORA_FILE).is_file():
        return None
    spec = json.loads((Path(folder) / MANIFEST).read_text())["spec"]
    recipe = LoraRecipe.from_config(OmegaConf.create(spec["recipe"]["lora"]))
    return recipe, load_file(str(Path(folder) / LORA_FILE))


def lora_state(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in llm.named_parameters() if "lora_" in name}


def detach(llm: torch.nn.Module) -> None:
    """Replace every LoRA-wrapped layer by the layer it wraps."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, module) for name, module in llm.named_modules() if isinstance(module, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = llm.get_submodule(parent_name) if parent_name else llm
        setattr(parent, child, module.get_base_layer())
