import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_cfg(tmp_path_factory):
    """`cfg.model` of a tiny random LLaVA-style MLLM (tiny CLIP tower + tiny Llama) saved on disk."""
    from tests.helpers.tiny_models import tiny_model_cfg as build

    return build(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_mllm(tiny_model_cfg, tmp_path_factory):
    from pivotmerge.models.mllm import build_mllm

    return build_mllm(tiny_model_cfg, tmp_path_factory.mktemp("models-cache"), with_vision=True, seed=0)


def pytest_configure(config):
    # In conftest, not pyproject.toml: editing pyproject.toml makes `make` rebuild the whole .venv.
    config.addinivalue_line("markers", "slow: runs the whole pipeline on tiny models (20 s or more); "
                                       "`make test-fast` skips it")
