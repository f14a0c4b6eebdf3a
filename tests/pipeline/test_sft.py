"""Stage 2 after merging (the `sft` stage, experiment=stage2) on tiny models: every projector gets the same
recipe, entries are cached and resume, the VQA benchmarks never show a training image, bad options are one
preflight line."""
import json
from pathlib import Path

import pytest
import torch

from pivotmerge import preflight
from pivotmerge.artifacts import MANIFEST
from pivotmerge.model_id import ModelId
from pivotmerge.pipeline.runner import run
from pivotmerge.preflight.schema import PreflightError
from tests.helpers.compose import compose_cfg

STAGE2 = ["experiment=stage2", "scenario.sources=[digits,easyvqa_shape]", "merge=[ties,pivotmerge]",
          "sft.steps=3", "sft.data.rows_per_source=16", "eval.suite.items_per_task=6", "eval.workers=1",
          "logger=none"]


def _spec(artifact) -> dict:
    return json.loads((artifact.path / MANIFEST).read_text())["spec"]


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory, tiny_model_cfg):
    tmp = tmp_path_factory.mktemp("stage2")
    cfg = compose_cfg(tmp, tiny_model_cfg, STAGE2)
    return tmp, cfg, run(cfg)


@pytest.mark.slow
def test_every_projector_gets_the_identical_recipe(stage2_run):
    _, _, ctx = stage2_run
    assert set(ctx.sft) == {"pivot", "joint", "merge:ties", "merge:pivotmerge"}
    specs = {name: _spec(artifact) for name, artifact in ctx.sft.items()}
    recipes = [spec["recipe"] for spec in specs.values()]
    assert all(recipe == recipes[0] for recipe in recipes)
    assert recipes[0]["steps"] == 3 and recipes[0]["llm"] == "frozen"
    stage1 = ctx.models()
    assert all(specs[name]["projector"] == stage1[name].key for name in ctx.sft)
    # the tuning moved every projector, and each from its own start
    for name, artifact in ctx.sft.items():
        before, after = ctx.projector(stage1[name]), ctx.projector(artifact)
        assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_tuned_models_are_evaluated_on_vqa_beside_stage1(stage2_run):
    from eval.stage2 import analyse
    from eval.store import read_rows

    tmp, cfg, _ = stage2_run
    rows = read_rows([tmp / "out" / "results"])
    models = {row["model"] for row in rows}
    assert {str(ModelId.sft(m)) for m in ("pivot", "joint", "merge:ties", "merge:pivotmerge")} <= models
    benches = {row["benchmark"] for row in rows if row["model"] == "sft:merge:ties"}
    assert {"pm_easyvqa", "pm_vqa_digits", "pm_vqa_easyvqa_shape", "pm_cls_digits"} <= benches
    result = analyse(rows)
    assert result is not None and set(result.methods) == {"pivot", "joint", "merge:ties", "merge:pivotmerge"}
    assert result.reference == "sft:merge:pivotmerge" and len(result.comparisons) == 3


@pytest.mark.slow
def test_sft_is_cached_then_reused(stage2_run, tiny_model_cfg):
    tmp, _, first = stage2_run
    again = run(compose_cfg(tmp, tiny_model_cfg, STAGE2))
    assert {n: a.key for n, a in again.sft.items()} == {n: a.key for n, a in first.sft.items()}
    assert all(a.reused for a in again.sft.values())
    # a different recipe is a new entry for every projector, the stage-1 ones reused
    changed = run(compose_cfg(tmp, tiny_model_cfg, STAGE2 + ["sft.steps=2", "stages=[data,features,pivot,"
                                                                            "experts,merge,sft]"]))
    assert not any(a.reused for a in changed.sft.values()) and changed.pivot.reused


@pytest.mark.slow
def test_vqa_documents_never_use_a_training_image(stage2_run):
    import pyarrow.parquet as pq

    from pivotmerge.pipeline.data import load_dataset_dict

    tmp, _, ctx = stage2_run
    suites = list((tmp / "cache" / "eval_suite").glob("*/pm_vqa_*.parquet"))
    assert {p.stem for p in suites} >= {"pm_vqa_digits", "pm_vqa_easyvqa_shape"}
    for path in suites + list((tmp / "cache" / "eval_suite").glob("*/pm_easyvqa.parquet")):
        source = pq.read_table(path).column("source")[0].as_py()
        splits = load_dataset_dict(ctx.data[source].path)
        train = {row["bytes"] for row in splits["train"].cast_column("image", _raw())["image"]}
        test = {row["bytes"] for row in splits["test"].cast_column("image", _raw())["image"]}
        asked = {image["bytes"] for image in pq.read_table(path).column("image").to_pylist()}
        assert asked and asked <= test and not asked & train


def _raw():
    from datasets import Image

    return Image(decode=False)


@pytest.mark.slow
def test_killed_sft_resumes_from_checkpoint(tiny_model_cfg, tmp_path, monkeypatch):
    from pivotmerge.training import ProjectorAlignment

    overrides = STAGE2 + ["stages=[data,features,pivot,experts,merge,sft]", "merge=[ties]", "sft.models=[merge]"]
    cfg = compose_cfg(tmp_path, tiny_model_cfg, overrides)
    original_step = ProjectorAlignment.training_step

    def dying_step(self, batch, index):
        in_sft = Path(self.trainer.default_root_dir).parent.name == "sft"   # the entry's staging folder
        if self.trainer.global_step == 2 and self.max_steps == 3 and in_sft:
            raise RuntimeError("simulated crash")
        return original_step(self, batch, index)

    monkeypatch.setattr(ProjectorAlignment, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    assert len(list((tmp_path / "cache" / "sft").glob("*.partial/checkpoints/last.ckpt"))) == 1
    monkeypatch.setattr(ProjectorAlignment, "training_step", original_step)
    resumed = run(cfg)
    artifact = resumed.sft["merge:ties"]
    assert json.loads((artifact.path / "metrics.json").read_text())["resumed"] is True
    assert resumed.pivot.reused and not list((tmp_path / "cache" / "sft").glob("*.partial"))


@pytest.mark.parametrize("override, message", [
    ("sft.steps=0", "config sft.steps=0 must be >= 1"),
    ("sft.lora.target_modules=[q_proj,attn_qkv]", "config sft.lora.target_modules=['q_proj', 'attn_qkv'] names "
                                                  "unknown module(s) ['attn_qkv']"),
    ("sft.models=[merges]", "config sft.models=['merges'] names unknown model kind(s) ['merges']"),
    ("sft.lora.target_modules=[]", "config sft.lora.target_modules=[] is empty"),
])
def test_bad_sft_options_fail_in_preflight_with_one_line(tiny_model_cfg, tmp_path, override, message):
    cfg = compose_cfg(tmp_path, tiny_model_cfg, STAGE2 + [override])
    with pytest.raises(PreflightError) as error:
        preflight.check(cfg, packages=False)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_sft_options_are_not_checked_when_the_stage_does_not_run(tiny_model_cfg, tmp_path):
    cfg = compose_cfg(tmp_path, tiny_model_cfg, ["sft.lora.target_modules=[attn_qkv]"])
    preflight.check(cfg, packages=False)


@pytest.mark.slow
def test_lora_tuning_saves_adapters_evaluates_with_them_and_leaves_the_shared_llm_as_it_was(tiny_model_cfg,
                                                                                           tmp_path):
    from safetensors.torch import load_file

    from eval.store import read_rows

    overrides = STAGE2 + ["merge=[ties]", "sft.models=[merge]", "sft.llm=lora", "eval.tasks=[pm_cls_digits]"]
    ctx = run(compose_cfg(tmp_path, tiny_model_cfg, overrides))
    adapters = load_file(str(ctx.sft["merge:ties"].path / "lora.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)   # B starts at 0: it trained
    assert not any("lora_" in k for k in ctx.mllm.llm.state_dict())
    assert not any(p.requires_grad for p in ctx.mllm.llm.parameters())   # frozen again for the next stage
    rows = read_rows([tmp_path / "out" / "results"])
    assert {r["model"] for r in rows} >= {"merge:ties", "sft:merge:ties"}


def test_evaluation_adapters_are_exact_the_llm_unchanged_after(tiny_model_cfg, tmp_path):
    """LoRA applied for an evaluation: zero B is the LLM itself to the bit, trained weights change its output
    by exactly what peft's own forward gives, and the LLM is its frozen self afterwards."""
    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.pipeline.sft_lora import LoraRecipe, lora_state

    cfg = compose_cfg(tmp_path, tiny_model_cfg, [])
    llm = build_mllm(cfg.model, cfg.paths.models_dir).llm.eval()
    recipe = LoraRecipe(r=2, alpha=4.0, dropout=0.5, lr=1e-3, target_modules=("q_proj", "v_proj"))
    tokens = torch.tensor([[1, 5, 7, 2, 9]])
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    plain = llm(tokens).logits
    with recipe.attached(llm):
        trained = {k: torch.randn_like(v) * 0.3 for k, v in lora_state(llm).items()}
        zero = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in trained.items()}
    with recipe.applied(llm, zero):
        assert torch.equal(llm(tokens).logits, plain)
    with recipe.applied(llm, trained):
        adapted = llm(tokens).logits
        assert torch.equal(llm(tokens).logits, adapted)          # dropout 0.5 is off in evaluation
    assert not torch.allclose(adapted, plain)
    with recipe.attached(llm):                                     # the same weights through training's path
        with torch.no_grad():
            for name, p in llm.named_parameters():
                if name in trained:
                    p.copy_(trained[name])
        llm.eval()
        assert torch.allclose(llm(tokens).logits, adapted)
    assert llm.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in llm.state_dict().items())
    with pytest.raises(Exception, match="do not fit the recipe"):
        with recipe.applied(llm, {"nope": torch.zeros(1)}):
            pass
