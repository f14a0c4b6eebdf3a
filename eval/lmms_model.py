"""The lmms-eval model class: our MLLM with any projector (pivot, an expert, a merged one).

Two ways in:
  * Python API (the pipeline): `PivotMergeLMM(mllm=ctx.mllm)`, switch projectors with `load_projector`, pass
    the instance to `lmms_eval.evaluator.simple_evaluate(model=...)`.
  * lmms-eval's CLI: `lmms-eval --model pivotmerge --model_args projector=P.safetensors,model_config=embedded`
    (registered through the `lmms_eval.models` entry point, which reads `MANIFEST` below).

Requests: `(context, continuation | gen_kwargs, doc_to_visual, doc_id, task, split)`; images come from
`doc_to_visual(self.task_dict[task][split][doc_id])`. The context is the user instruction: it goes through
`MLLM.encode_text`, i.e. the LLM's own chat template exactly as in training; a continuation is the
assistant's answer (leading whitespace, lmms-eval's target delimiter, is dropped) followed by the
end-of-turn token. Two lmms-eval 0.7.x conventions are honoured: loglikelihood results are wrapped in
`GenerationResult(text=(value, is_greedy))`, and the value is a LOSS (-log-prob, lower is better) because
multiple-choice scoring takes argmin.

Visual features are cached by a hash of the decoded image (mode, size, pixels); the pipeline pre-fills the
cache from the cached test features, so the vision tower never runs twice on the same image.
"""
from __future__ import annotations

MODEL_ID = "pivotmerge"
CLASS_PATH = "eval.lmms_model.PivotMergeLMM"


def __getattr__(name):
    # Importing lmms_eval.models (below) builds lmms-eval's model registry, which loads our entry point
    # `eval.lmms_model:MANIFEST` while this module is still half-imported: answer it lazily (PEP 562).
    if name == "MANIFEST":
        from lmms_eval.models.registry_v2 import ModelManifest

        return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
    raise AttributeError(name)


import contextlib  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from lmms_eval.api.instance import GenerationResult  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from lmms_eval.models.registry_v2 import ModelManifest  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pivotmerge.errors import ConfigError  # noqa: E402
from pivotmerge.models import scoring  # noqa: E402

MANIFEST = ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def image_key(image) -> str:
    """Content hash of a decoded image (independent of how it was encoded on disk)."""
    digest = hashlib.sha1()
    digest.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """image hash -> visual tokens [T, D] (CPU tensors)."""

    def __init__(self):
        self._features: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.computed = 0

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, key: str) -> bool:
        return key in self._features

    def prefill(self, images, features: torch.Tensor) -> int:
        if len(images) != features.shape[0]:
            raise ValueError(f"{len(images)} images but {features.shape[0]} feature rows")
        for image, row in zip(images, features):
            self._features[image_key(image)] = row
        return len(images)

    def get(self, key: str) -> torch.Tensor:
        return self._features[key]

    def put(self, key: str, value: torch.Tensor) -> None:
        self._features[key] = value


def load_model_config(model_config):
    """A `cfg.model` from a conf/model name ('embedded'), a YAML path, or a mapping."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(model_config, (dict, DictConfig)):
        return OmegaConf.create(model_config)
    path = Path(str(model_config))
    if not path.suffix:
        from pivotmerge.config import CONF_DIR

        path = CONF_DIR / "model" / f"{model_config}.yaml"
    if not path.is_file():
        raise ConfigError(f"model_config {model_config!r}: no such file ({path}); pass a conf/model name or a "
                          "YAML path holding a cfg.model")
    cfg = OmegaConf.load(path)
    return cfg.model if "model" in cfg and "llm" not in cfg else cfg


@contextlib.contextmanager
def _adapted(mllm, llm_adapter):
    if llm_adapter is None:
        yield
        return
    recipe, weights = llm_adapter
    mllm.reuse_head_kv = False   # the cached chat-prefix keys/values are the frozen LLM's
    with recipe.applied(mllm.llm, weights):
        yield


class PivotMergeLMM(lmms):
    """lmms-eval model: frozen vision tower + (any) projector + frozen LLM."""

    is_simple = True

    def __init__(self, mllm=None, projector=None, model_config: str | None = "embedded", cache_dir=None,
                 batch_size=16, max_new_tokens: int = 16, device: str | None = None, gen_batch_size=64,
                 progress: bool = True, **kwargs):
        super().__init__()
        if mllm is None:
            from pivotmerge.models.mllm import build_mllm

            cfg = load_model_config(model_config)
            cache_dir = cache_dir or os.environ.get("PIVOTMERGE_MODELS", str(Path.cwd() / ".cache" / "models"))
            mllm = build_mllm(cfg, cache_dir, with_vision=True)
        if device and device not in ("cpu", "None"):
            mllm = mllm.to(device)
        self.mllm = mllm.eval()
        self.batch_size_per_gpu = int(batch_size) if batch_size not in (None, "auto") else 16
        # A decoding step carries one token per row, so its cost is mostly fixed (weight reads, per-op
        # overhead) and more rows per step amortise it; prefix passes are compute-bound and keep `batch_size`.
        self.gen_batch_size = max(1, int(gen_batch_size or self.batch_size_per_gpu))
        self.max_new_tokens = int(max_new_tokens)
        self.features = FeatureCache()
        self.progress = progress
        self.projector_name = "seeded"
        if projector is not None:
            self.load_projector(projector)

    # ---- model switching -------------------------------------------------------------------------
    def load_projector(self, projector, name: str | None = None) -> None:
        """Load a projector (state dict or file path) into the MLLM; shape mismatches are a ConfigError."""
        from pivotmerge.io import load_state_dict
        from pivotmerge.models.mllm import load_projector_state

        state = projector
        if isinstance(projector, (str, os.PathLike)):
            state = load_state_dict(projector)
            name = name or str(projector)
        load_projector_state(self.mllm.projector, state)
        self.projector_name = name or "projector"

    @contextlib.contextmanager
    def using_projector(self, state: dict, name: str, llm_adapter=None):
        """Evaluate with `state` in the MLLM's projector inside the block; the previous weights come back after
        (the MLLM is shared with the pipeline's other stages). Shape mismatches are a ConfigError.
        `llm_adapter`: (LoraRecipe, weights) of a model tuned with `sft.llm=lora`, on the LLM for the block."""
        from pivotmerge.models.mllm import projector_swapped

        previous, reuse = self.projector_name, self.mllm.reuse_head_kv
        with projector_swapped(self.mllm, state), _adapted(self.mllm, llm_adapter):
            self.projector_name = name
            try:
                yield self
            finally:
                self.projector_name, self.mllm.reuse_head_kv = previous, reuse

    def clean(self):
        """lmms-eval calls this after every evaluation and would delete the MLLM; the pipeline reuses one
        adapter (and its feature cache) for every model, so nothing is freed here."""

    # ---- visual features -------------------------------------------------------------------------
    def _features_for(self, visual_lists: list[list]) -> list[torch.Tensor]:
        """One [T, D] tensor per request (several images: their tokens concatenated)."""
        keyed = [[image_key(v) for v in visuals] for visuals in visual_lists]
        missing = OrderedDict()
        for visuals, keys in zip(visual_lists, keyed):
            for image, key in zip(visuals, keys):
                if key not in self.features and key not in missing:
                    missing[key] = image
        if missing:
            keys, images = list(missing), list(missing.values())
            for start in range(0, len(images), 64):
                feats = self.mllm.encode_images(images[start:start + 64]).float().cpu()
                for key, row in zip(keys[start:start + 64], feats):
                    self.features.put(key, row)
            self.features.computed += len(images)
        self.features.hits += sum(len(k) for k in keyed) - len(missing)
        out = []
        for keys in keyed:
            if not keys:
                out.append(torch.zeros(0, self.mllm.visual_dim))
            else:
                out.append(torch.cat([self.features.get(k) for k in keys], dim=0))
        return out

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        bad = [type(v).__name__ for v in visuals if not hasattr(v, "tobytes")]
        if bad:
            raise ConfigError(f"task {task!r}: doc_to_visual returned {bad}; the pivotmerge model takes PIL images")
        return list(visuals)

    @staticmethod
    def _batches(indices: list[int], features: list[torch.Tensor], size: int):
        """Batches of request indices whose visual token counts agree (so they stack)."""
        by_len: dict[int, list[int]] = OrderedDict()
        for i in indices:
            by_len.setdefault(features[i].shape[0], []).append(i)
        for group in by_len.values():
            for start in range(0, len(group), size):
                yield group[start:start + size]

    # ---- lmms-eval interface ---------------------------------------------------------------------
    def loglikelihood(self, requests) -> list:
        """Loss (= -summed log-prob) of each continuation; choices of one item share one prefix pass."""
        items: OrderedDict = OrderedDict()   # (task, split, doc_id, context) -> [(request index, continuation)]
        visuals = {}
        for index, request in enumerate(requests):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):   # output_type loglikelihood passes the task's doc_to_target itself
                continuation = str(continuation(self.task_dict[task][split][doc_id]))
            key = (task, split, doc_id, context)
            if key not in items:
                items[key] = []
                visuals[key] = self._visuals(doc_to_visual, doc_id, task, split)
            items[key].append((index, continuation.lstrip()))
        keys = list(items)
        features = self._features_for([visuals[k] for k in keys])
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"loglikelihood [{self.projector_name}]", leave=False,
                   disable=not self.progress)
        for batch in self._batches(list(range(len(keys))), features, self.batch_size_per_gpu):
            feats = torch.stack([features[i] for i in batch])
            instructions = [keys[i][3] for i in batch]
            choices = [[c for _, c in items[keys[i]]] for i in batch]
            scores = scoring.score_choices(self.mllm, feats, instructions, choices, batch_size=len(batch),
                                           with_counts=True)
            for item, logps, greedy in zip(batch, scores.logprobs, scores.greedy):
                for (index, _), logp, is_greedy in zip(items[keys[item]], logps, greedy):
                    results[index] = GenerationResult(text=(-float(logp), bool(is_greedy)))
            bar.update(sum(len(c) for c in choices))
        bar.close()
        return results

    def _gen_settings(self, gen_kwargs) -> tuple[int, list[str]]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        max_new = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
        return max_new, list(until)

    def _generate(self, contexts: list[str], features: list[torch.Tensor], settings: list[tuple]) -> list[str]:
        outputs: list = [None] * len(contexts)
        groups: dict = OrderedDict()
        for i, setting in enumerate(settings):
            groups.setdefault((setting[0], tuple(setting[1])), []).append(i)
        for (max_new, until), indices in groups.items():
            for batch in self._batches(indices, features, self.gen_batch_size):
                texts = scoring.generate(self.mllm, torch.stack([features[i] for i in batch]),
                                         [contexts[i] for i in batch], max_new_tokens=max_new, until=list(until),
                                         batch_size=len(batch))
                for i, text in zip(batch, texts):
                    outputs[i] = text
        return outputs

    def generate_until(self, requests) -> list[str]:
        contexts, visual_lists, settings = [], [], []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            contexts.append(context)
            visual_lists.append(self._visuals(doc_to_visual, doc_id, task, split))
            settings.append(self._gen_settings(gen_kwargs))
        features = self._features_for(visual_lists)
        outputs = []
        bar = tqdm(total=len(requests), desc=f"generate [{self.projector_name}]", leave=False,
                   disable=not self.progress)
        chunk = max(1, self.gen_batch_size * 4)
        for start in range(0, len(requests), chunk):
            stop = start + chunk
            outputs += self._generate(contexts[start:stop], features[start:stop], settings[start:stop])
            bar.update(min(chunk, len(requests) - start))
        bar.close()
        return outputs

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Rounds driven by the task's doc_to_text(doc, previous_output=..., round_idx=...) until terminal."""
        results = []
        for request in tqdm(requests, desc=f"multi-round [{self.projector_name}]", leave=False,
                            disable=not self.progress):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            setting = self._gen_settings(gen_kwargs)
            rounds: list[str] = []
            info = None
            for round_idx in range(32):
                if round_idx > 0:
                    step = doc_to_text(doc, previous_output=rounds, round_idx=round_idx, previous_round_info=info)
                    next_visuals, context, terminal, updated, info = step
                    if updated is not None:
                        rounds = list(updated)
                    if terminal:
                        break
                    if next_visuals:
                        visuals = list(next_visuals) if isinstance(next_visuals, (list, tuple)) else [next_visuals]
                features = self._features_for([visuals])
                rounds.append(self._generate([context], features, [setting])[0])
            results.append(rounds)
        return results
