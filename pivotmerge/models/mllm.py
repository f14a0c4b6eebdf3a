"""The LLaVA-style MLLM: visual tokens from a frozen tower, projected into a frozen LLM's embedding space.

The sequence fed to the LLM is  [chat prefix][visual tokens][instruction + assistant header][answer][pad],
built from the LLM's own chat template so that training and evaluation prompt the model identically. Only
the projector has gradients; the LLM and vision tower are frozen (LLaVA's stage-1 alignment objective).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pivotmerge.errors import ConfigError
from pivotmerge.models.llm import load_language_model
from pivotmerge.models.projector import build_projector, projector_dims

_MARK = "\x00IMAGE\x00"


@dataclass(frozen=True)
class PromptFormat:
    """The chat template split around the image: prefix + <image> + '\\n' + instruction + suffix."""

    prefix: str
    suffix: str
    answer_end: str

    @classmethod
    def from_tokenizer(cls, tokenizer, system: str | None = None) -> PromptFormat:
        if not getattr(tokenizer, "chat_template", None):
            return cls(prefix="", suffix="\n", answer_end=tokenizer.eos_token or "")
        messages = [{"role": "user", "content": _MARK}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prefix, suffix = rendered.split(_MARK)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _MARK}],
                                             tokenize=False)
        answer_end = full.split(_MARK)[-1].rstrip("\n")
        return cls(prefix=prefix, suffix=suffix, answer_end=answer_end)


class MLLM(nn.Module):
    """Frozen LLM + trainable projector over cached visual features.

    The vision tower is optional here: training and evaluation read cached features, and only
    `encode_images` (used on raw images, e.g. by the lmms-eval adapter) needs it.
    """

    def __init__(self, projector: nn.Module, llm: nn.Module, tokenizer, prompt: PromptFormat,
                 vision: nn.Module | None = None, visual_dim: int | None = None):
        super().__init__()
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.vision = vision
        self.projector_kind = "mlp2x_gelu"
        self.visual_dim = visual_dim if visual_dim is not None else projector_dims(projector.state_dict())[0]
        self.llm_dim = int(llm.get_input_embeddings().weight.shape[1])
        in_dim, out_dim = projector_dims(projector.state_dict())
        if out_dim != self.llm_dim:
            raise ConfigError(f"projector output dim {out_dim} does not match the LLM's hidden size "
                              f"{self.llm_dim}: set model.projector to the LLM of model.llm")
        prefix_ids = tokenizer(prompt.prefix, add_special_tokens=False).input_ids
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long), persistent=False)
        # The chat prefix comes before the image, so its keys/values are the same for every sequence and
        # every projector: computed once and reused (a quarter of a training sequence on the embedded model).
        # Off under FSDP, where the LLM's weights only exist inside the wrapped forward.
        self.reuse_head_kv = True
        self._head_kv_cache = None

    # ---- text side -------------------------------------------------------------------------------
    def encode_text(self, instruction: str, answer: str | None = None) -> tuple[list[int], int]:
        """Token ids of everything after the visual tokens, and where the answer starts in them."""
        prompt = "\n" + instruction + self.prompt.suffix
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if answer is None:
            return prompt_ids, len(prompt_ids)
        answer_ids = self.tokenizer(answer + self.prompt.answer_end, add_special_tokens=False).input_ids
        return prompt_ids + answer_ids, len(prompt_ids)

    def collate_text(self, encoded: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """Right-pad token ids; labels are the answer tokens only (-100 elsewhere)."""
        length = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), length), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        labels = torch.full((len(encoded), length), -100, dtype=torch.long)
        for row, (tokens, answer_start) in enumerate(encoded):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
            labels[row, answer_start:len(tokens)] = torch.tensor(tokens[answer_start:])
        return {"text_ids": ids, "text_mask": mask, "labels": labels}

    # ---- model side ------------------------------------------------------------------------------
    def check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 3 or features.shape[-1] != self.visual_dim:
            raise ConfigError(
                f"visual features of shape {tuple(features.shape)} do not fit the projector's input dim "
                f"{self.visual_dim}: the vision tower (model.vision) and model.projector disagree, or the "
                "feature cache was built by another vision tower")

    def embed(self, features: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor):
        """(inputs_embeds, attention_mask) for [prefix][projected visual tokens][text]."""
        self.check_features(features)
        embedding = self.llm.get_input_embeddings()
        batch = features.shape[0]
        dtype = embedding.weight.dtype
        visual = self.projector(features.to(dtype))
        prefix = embedding(self.prefix_ids).unsqueeze(0).expand(batch, -1, -1)
        text = embedding(text_ids)
        inputs = torch.cat([prefix, visual, text], dim=1)
        head = torch.ones(batch, prefix.shape[1] + visual.shape[1], dtype=text_mask.dtype,
                          device=text_mask.device)
        return inputs, torch.cat([head, text_mask], dim=1)

    @property
    def num_head_tokens(self) -> int:
        return int(self.prefix_ids.numel())

    def head_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer of the chat prefix, computed once per (device, dtype)."""
        key = (str(self.prefix_ids.device), str(self.llm.dtype), tuple(self.prefix_ids.tolist()))
        if self._head_kv_cache is None or self._head_kv_cache[0] != key:
            with torch.no_grad():
                out = self.llm.base_model(input_ids=self.prefix_ids.unsqueeze(0), use_cache=True)
            self._head_kv_cache = (key, [(layer.keys, layer.values) for layer in out.past_key_values.layers])
        return self._head_kv_cache[1]

    def head_cache(self, rows: int):
        """A fresh DynamicCache holding the chat prefix for `rows` sequences (None without a prefix)."""
        if not self.num_head_tokens:
            return None
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.head_kv()):
            cache.update(keys.expand(rows, -1, -1, -1).contiguous(), values.expand(rows, -1, -1, -1).contiguous(),
                         layer)
        return cache

    def forward_after_head(self, inputs: torch.Tensor, mask: torch.Tensor):
        """The LLM's output over `embed`'s output minus the chat prefix, whose keys/values come from
        `head_kv` (its cache holds prefix + these positions, for scoring continuations)."""
        start = self.num_head_tokens
        rows = inputs.shape[0]
        position_ids = torch.arange(start, inputs.shape[1], device=inputs.device).unsqueeze(0).expand(rows, -1)
        return self.llm.base_model(inputs_embeds=inputs[:, start:], attention_mask=mask, position_ids=position_ids,
                                   past_key_values=self.head_cache(rows), use_cache=True)

    def hidden_states(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Last hidden states of `embed`'s output and the sequence position of their first row.

        With `reuse_head_kv` the chat prefix is read from `head_kv` instead of being run again: the
        result equals the full forward (tests/models/test_models.py), minus the prefix positions.
        """
        if not (self.reuse_head_kv and self.num_head_tokens):
            return self.llm.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state, 0
        return self.forward_after_head(inputs, mask).last_hidden_state, self.num_head_tokens

    def answer_logprobs(self, features, text_ids, text_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of the labelled tokens: (sum per row [B], token count per row [B]).

        The LM head runs on labelled positions only: with a 49k vocabulary, that saves ~10% of the step.
        """
        inputs, mask = self.embed(features, text_ids, text_mask)
        hidden, start = self.hidden_states(inputs, mask)
        offset = inputs.shape[1] - text_ids.shape[1] - start
        # hidden state at position t predicts token t+1
        text_hidden = hidden[:, offset - 1:-1]
        selected = labels != -100
        logits = self.llm.get_output_embeddings()(text_hidden[selected]).float()
        token_logp = -F.cross_entropy(logits, labels[selected], reduction="none")
        rows = selected.nonzero()[:, 0]
        sums = torch.zeros(labels.shape[0], device=logits.device).index_add_(0, rows, token_logp)
        return sums, selected.sum(dim=1)

    def caption_loss(self, features, text_ids, text_mask, labels) -> torch.Tensor:
        """Mean next-token negative log-likelihood over all answer tokens of the batch."""
        sums, counts = self.answer_logprobs(features, text_ids, text_mask, labels)
        return -sums.sum() / counts.sum().clamp_min(1)

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        if self.vision is None:
            raise ConfigError("this MLLM was built without a vision tower; pass build_mllm(..., vision=True)")
        return self.vision.encode_images(images)


@contextmanager
def projector_swapped(mllm: MLLM, state: dict[str, torch.Tensor]):
    """`mllm` with `state` loaded into its projector for the block; the previous weights come back after."""
    original = {k: v.detach().clone() for k, v in mllm.projector.state_dict().items()}
    load_projector_state(mllm.projector, state)
    try:
        yield mllm
    finally:
        mllm.projector.load_state_dict(original)


def build_mllm(model_cfg, cache_dir, *, projector_state: dict | None = None, with_vision: bool = False,
               seed: int = 0) -> MLLM:
    """Assemble the MLLM from `cfg.model`; a fresh projector is seeded, or loaded from `projector_state`."""
    from pivotmerge.models.vision import build_vision_tower

    llm, tokenizer = load_language_model(model_cfg.llm, cache_dir)
    vision = build_vision_tower(model_cfg.vision) if with_vision else None
    visual_dim = int(model_cfg.vision.feature_dim)
    llm_dim = int(llm.get_input_embeddings().weight.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = build_projector(model_cfg.projector.kind, visual_dim, llm_dim)
    if projector_state is not None:
        load_projector_state(projector, projector_state)
    prompt = PromptFormat.from_tokenizer(tokenizer, system=model_cfg.get("system_prompt"))
    mllm = MLLM(projector, llm, tokenizer, prompt, vision=vision, visual_dim=visual_dim)
    mllm.projector_kind = str(model_cfg.projector.kind)
    return mllm


def projector_mismatch(projector: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` cannot be loaded into `projector` (other names or shapes); None when it fits."""
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        return f"projector weights do not fit model.projector: expected {expected}, got {given}"
    return None


def load_projector_state(projector: nn.Module, state: dict[str, torch.Tensor]) -> None:
    problem = projector_mismatch(projector, state)
    if problem:
        raise ConfigError(problem)
    projector.load_state_dict(state)
