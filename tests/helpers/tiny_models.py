"""Tiny random-weight models of the real classes, saved to disk and loaded through the real code path.

A byte-level BPE tokenizer trained in milliseconds on the project's own phrases, a 2-layer Llama and a
2-layer CLIP vision tower: the same `kind: hf` loaders that take Vicuna/CLIP at scale load these.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = [
    "a handwritten digit zero one two three four five six seven eight nine",
    "an emoji in the category smiley face person animal or plant food or drink flag object symbol activity",
    "a white silhouette of a bear bird cat cow dog elephant giraffe horse sheep zebra",
    "a sign that reads apple river storm piano tiger cloud bread stone light green ocean chair",
    "Describe the image briefly. What is shown in this image? Give a short caption for the image.",
    "Is there a in the image? Answer yes or no. What word is written? Answer with one word.",
    "yes no Yes No A B C D",
]


def build_tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


def build_tiny_models(root: Path, seed: int = 0) -> dict:
    """Write tiny LLM + vision tower folders under `root`; return a `cfg.model`-shaped dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(root / "llm")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, tie_word_embeddings=True,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.bos_token_id))
    llm.save_pretrained(root / "llm")
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=32, patch_size=8))
    vision.save_pretrained(root / "vision")
    (root / "vision" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "crop_size": 32}))
    return tiny_model_dict(root)


def tiny_model_dict(root: Path) -> dict:
    """cfg.model of the tiny models saved under `root` by build_tiny_models."""
    return {
        "name": "tiny",
        "vision": {"kind": "hf", "name_or_path": str(root / "vision"), "feature_dim": 24, "image_size": 32,
                   "grid": 2, "feature_norm": "layernorm", "select_layer": -2, "drop_cls": True},
        "projector": {"kind": "mlp2x_gelu"},
        "llm": {"kind": "hf", "name_or_path": str(root / "llm"), "dtype": "float32"},
        "system_prompt": None,
    }


def tiny_model_cfg(root: Path):
    return OmegaConf.create(build_tiny_models(root))


def llava_projectors(seed: int, d_in: int, width: int, experts: int = 3):
    """A pivot mlp2x_gelu projector under LLaVA's key names and `experts` random experts around it (the merge
    CLI's and the mergekit configs' test checkpoints)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pivot = {"model.mm_projector.0.weight": torch.randn(width, d_in, generator=g),
             "model.mm_projector.0.bias": torch.randn(width, generator=g),
             "model.mm_projector.2.weight": torch.randn(width, width, generator=g),
             "model.mm_projector.2.bias": torch.randn(width, generator=g)}
    return pivot, [{k: v + torch.randn(v.shape, generator=g) for k, v in pivot.items()} for _ in range(experts)]
