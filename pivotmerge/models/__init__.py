"""The LLaVA-style MLLM: frozen vision tower -> projector -> frozen language model."""
from pivotmerge.models.llm import load_language_model
from pivotmerge.models.mllm import MLLM, build_mllm
from pivotmerge.models.projector import build_projector, projector_dims
from pivotmerge.models.vision import VisionTower, build_vision_tower

__all__ = [
    "MLLM", "VisionTower", "build_mllm", "build_projector", "build_vision_tower", "load_language_model",
    "projector_dims",
]
