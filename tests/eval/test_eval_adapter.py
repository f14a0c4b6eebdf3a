"""The lmms-eval adapter: images reach the model for every request type; CLI registration; bad projectors."""

import pytest
import torch
from lmms_eval.api.instance import GenerationResult, Instance
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from eval.documents import PRIMARY_METRIC
from eval.lmms_model import MANIFEST, PivotMergeLMM, image_key
from pivotmerge.errors import ConfigError
from tests.helpers import REPO


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, doc):
        self.calls.append(doc["id"])
        return [doc["image"]]


def docs():
    return [{"id": i, "image": Image.new("RGB", (20, 20), (40 * i, 90, 200 - 30 * i))} for i in range(3)]


def meta(doc_id):
    return {"task": "t", "doc_id": doc_id, "repeats": 1}


def make_adapter(tiny_mllm):
    adapter = PivotMergeLMM(mllm=tiny_mllm, batch_size=2, max_new_tokens=3)
    adapter.task_dict = {"t": {"test": docs()}}
    return adapter


def spy_images(monkeypatch, mllm):
    seen = []
    original = mllm.encode_images

    def encode(images):
        seen.extend(image_key(i) for i in images)
        return original(images)

    monkeypatch.setattr(mllm, "encode_images", encode)
    return seen


def test_loglikelihood_passes_images_and_returns_losses(tiny_mllm, monkeypatch):
    adapter = make_adapter(tiny_mllm)
    seen = spy_images(monkeypatch, tiny_mllm)
    visual = Recorder()
    requests = [Instance("loglikelihood", arguments=("Describe the image briefly.", c, visual, d, "t", "test"),
                         idx=j, metadata=meta(d))
                for d in range(3) for j, c in enumerate(["a cat", " a dog", "yes"])]
    out = adapter.loglikelihood(requests)
    assert sorted(set(visual.calls)) == [0, 1, 2]
    assert sorted(seen) == sorted(image_key(d["image"]) for d in docs())   # each image encoded once
    assert all(isinstance(r, GenerationResult) and r.text[0] > 0 and isinstance(r.text[1], bool) for r in out)
    # the loss is -log p of the continuation given the image and instruction (leading space dropped)
    features = adapter._features_for([[docs()[1]["image"]]])[0].unsqueeze(0)
    from pivotmerge.models.scoring import score_choices_naive

    reference = score_choices_naive(tiny_mllm, features, ["Describe the image briefly."], [["a dog"]])[0][0]
    assert out[4].text[0] == pytest.approx(-reference, abs=1e-4)
    # second call: every feature comes from the cache
    seen.clear()
    adapter.loglikelihood(requests[:3])
    assert seen == [] and adapter.features.hits > 0


def test_generate_until_and_multi_round_pass_images(tiny_mllm, monkeypatch):
    adapter = make_adapter(tiny_mllm)
    seen = spy_images(monkeypatch, tiny_mllm)
    visual = Recorder()
    gen = [Instance("generate_until", arguments=("Which digit is this?", {"max_new_tokens": 3, "until": ["\n\n"]},
                                                 visual, d, "t", "test"), idx=0, metadata=meta(d)) for d in range(3)]
    texts = adapter.generate_until(gen)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert sorted(visual.calls) == [0, 1, 2] and len(seen) == 3

    rounds_seen = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        rounds_seen.append((doc["id"], round_idx, len(previous_output)))
        terminal = round_idx >= 2
        return None, f"Round {round_idx}: describe again.", terminal, previous_output, None

    visual = Recorder()
    multi = [Instance("generate_until_multi_round", arguments=("Describe the image briefly.", {"max_new_tokens": 2},
                                                               visual, doc_to_text, d, "t", "test"),
                      idx=0, metadata=meta(d)) for d in range(2)]
    out = adapter.generate_until_multi_round(multi)
    assert [len(r) for r in out] == [2, 2]
    assert sorted(visual.calls) == [0, 1]
    assert rounds_seen == [(0, 1, 1), (0, 2, 2), (1, 1, 1), (1, 2, 2)]


def test_projector_that_does_not_fit_is_a_config_error(tiny_mllm, tmp_path):
    adapter = PivotMergeLMM(mllm=tiny_mllm)
    state = {k: v.clone() for k, v in tiny_mllm.projector.state_dict().items()}
    wrong = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in state.items()}
    with pytest.raises(ConfigError, match="do not fit"):
        adapter.load_projector(wrong)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConfigError, match="do not fit"):
        adapter.load_projector(str(tmp_path / "wrong.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in tiny_mllm.projector.state_dict().items())


def test_cli_registration_resolves(tiny_model_cfg, tiny_mllm, tmp_path):
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    assert MANIFEST.model_id == "pivotmerge"
    assert "pivotmerge" in MODEL_REGISTRY_V2.list_model_names()
    cls = get_model("pivotmerge")
    assert cls is PivotMergeLMM
    # the CLI path: --model_args projector=...,model_config=... (+ batch_size/device from lmms-eval)
    config = tmp_path / "model.yaml"
    OmegaConf.save(tiny_model_cfg, config)
    projector = tmp_path / "projector.safetensors"
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in tiny_mllm.projector.state_dict().items()}
    save_file(state, str(projector))
    lm = cls.create_from_arg_string(f"projector={projector},model_config={config},cache_dir={tmp_path / 'models'}",
                                    {"batch_size": 4, "device": "cpu"})
    assert lm.batch_size_per_gpu == 4 and lm.mllm.vision is not None
    assert all(torch.equal(state[k], v) for k, v in lm.mllm.projector.state_dict().items())
    with pytest.raises(ConfigError, match="no such file"):
        cls.create_from_arg_string("model_config=does_not_exist")


def test_eval_configs_resolve():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        embedded = compose(config_name="config")
        standard = compose(config_name="config", overrides=["eval=lmms_standard"])
    assert embedded.eval.name == "embedded" and embedded.eval.suite.items_per_task >= 200
    assert embedded.eval.report["from"] == "latest"
    assert list(standard.eval.tasks) == ["mme", "pope", "mmbench_en_dev_static", "seedbench", "textvqa_val", "gqa",
                                         "scienceqa_img"]
    from eval.suite import EmbeddedSuite, LmmsTasks, make_pool

    pool = make_pool(standard.eval)
    assert isinstance(pool, LmmsTasks) and set(pool.primary_metrics) == set(standard.eval.tasks)
    pool = make_pool(embedded.eval)
    assert isinstance(pool, EmbeddedSuite) and sorted(pool.kinds) == sorted(PRIMARY_METRIC)
