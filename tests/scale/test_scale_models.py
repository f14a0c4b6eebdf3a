"""Real-scale model configs resolve through Hydra; Hub names fail offline with a clear error; SigLIP works."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pivotmerge.errors import ConfigError
from tests.helpers import CONF


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_llava15_7b_config_resolves():
    model = _compose("model=llava15_7b").model
    assert model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert (model.vision.feature_dim, model.vision.image_size, model.vision.grid) == (1024, 336, None)
    assert model.vision.select_layer == -2 and model.vision.drop_cls is True
    assert model.vision.feature_norm == "none"
    assert model.llm.name_or_path == "lmsys/vicuna-7b-v1.5" and model.llm.dtype == "bfloat16"
    assert model.projector.kind == "mlp2x_gelu"


def test_siglip_qwen_config_resolves():
    model = _compose("model=siglip_qwen05b").model
    assert model.vision.drop_cls is False and model.vision.feature_dim == 768
    assert list(model.vision.image_mean) == [0.5, 0.5, 0.5]
    assert model.llm.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("name", ["llava15_7b", "siglip_qwen05b"])
def test_hub_names_need_network(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is found locally
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    from pivotmerge.models.llm import load_language_model
    from pivotmerge.models.vision import build_vision_tower

    model = _compose(f"model={name}").model
    with pytest.raises(ConfigError, match="needs network access"):
        build_vision_tower(model.vision)
    with pytest.raises(ConfigError, match="needs network access"):
        load_language_model(model.llm, tmp_path / "models")


def test_siglip_tower_keeps_every_patch(tmp_path):
    """A tiny SigLIP (no CLS) through the same `kind: hf` path: 4x4 patches -> 16 tokens, SigLIP stats."""
    from PIL import Image
    from transformers import SiglipConfig, SiglipModel

    from pivotmerge.models.vision import build_vision_tower

    SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8))).save_pretrained(tmp_path / "siglip")
    cfg = OmegaConf.create({**OmegaConf.to_container(_compose("model=siglip_qwen05b").model.vision),
                            "name_or_path": str(tmp_path / "siglip"), "feature_dim": 24, "image_size": None})
    tower = build_vision_tower(cfg)
    assert tower.encode_images([Image.new("RGB", (40, 30), (10, 200, 30))]).shape == (1, 16, 24)
    assert tower.mean.flatten().tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("data", ["cc12m", "llava558k"])
def test_real_data_configs_compose_with_the_k4_scenario(data, monkeypatch):
    from pivotmerge.pipeline.data import instructions

    monkeypatch.setenv("CC12M_SHARDS", "/x/{00000..00009}.tar")
    monkeypatch.setenv("LLAVA_PRETRAIN", "/y")
    cfg = _compose(f"data={data}", "scenario=cc12m_k4", "trainer=ddp", "model=llava15_7b")
    assert list(cfg.scenario.sources) == ["d0", "d1", "d2", "d3"]
    assert sorted(cfg.data.sources) == list(cfg.scenario.sources)
    sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
    assert [s["domain"] for s in sources.values()] == ["d0", "d1", "d2", "d3"]
    assert len({s["name"] for s in sources.values()}) == 4
    assert instructions(cfg)[0] == "Describe the image briefly." and len(instructions(cfg)) == 3   # inherited
    if data == "cc12m":
        assert sources["d2"]["shards"] == "/x/{00000..00009}.tar"
    else:
        assert sources["d1"]["domain_index"] == "/y/domains/k4/domains.json"
        assert sources["d1"]["json_path"] == "/y/blip_laion_cc_sbu_558k.json"


def test_local_parallel_launcher_extends_joblib():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_extends_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.max_num_timeout) == (1, 1, 3)
