"""Smoke test on the REAL embedded models: SmolLM2-135M dequantised from the wheel's GGUF (into a fresh models
folder), the ImageNet EfficientNet-Lite0 tower, a few training steps and a few items through lmms-eval.

Slow (about 2-4 minutes on 2 cores: the GGUF conversion alone takes ~40 s); `make test` runs it (CI),
`make test-fast` skips it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import CONF
from tests.helpers.compose import compose_cfg

pytestmark = pytest.mark.slow


def test_real_embedded_models_train_merge_and_evaluate(tmp_path):
    from hydra import compose, initialize_config_dir

    from pivotmerge.pipeline.runner import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        embedded = compose(config_name="config").model
    cfg = compose_cfg(tmp_path, embedded, [
        "scenario.sources=[digits,charts]", "data.sources.charts.count=60", "data.split.train=16",
        "data.split.val=6", "data.split.test=6", "scenario.pivot.steps=2", "scenario.experts.steps=2",
        "trainer.batch_size=4", "trainer.val_samples=2", "calibration.per_source=2", "calibration.train_rows=8",
        "calibration.sample_tokens=32", "merge_diagnostics.lmc=false",
        "merge=[task_arithmetic,regmean,pivotmerge]", "eval.tasks=[pm_cls_*,pm_nll_*]", "eval.limit=3",
        "eval.workers=1", "stages=[data,features,pivot,experts,merge,eval,report]"])
    ctx = run(cfg)

    llm = ctx.mllm.llm
    assert type(llm).__name__ == "LlamaForCausalLM" and llm.config.num_hidden_layers == 30
    assert llm.config.hidden_size == 576 and llm.config.vocab_size == 49152           # SmolLM2-135M
    assert (Path(cfg.paths.models_dir) / "smollm2-135m-instruct" / "manifest.json").is_file()
    tokens = embedded.vision.grid ** 2                                               # pooled EfficientNet-Lite0 map
    assert tuple(ctx.features["digits"].features["train"].shape) == (16, tokens, 1280)
    statuses = {(r["stage"], r["name"].split(" ")[0]): r["status"] for r in ctx.log.rows}
    assert statuses[("expert", "charts")] == "ran" and statuses[("merge", "pivotmerge")] == "ran"
    assert {r["stage"] for r in ctx.log.rows} >= {"stats", "merge", "eval"}
    rows = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "results" / "results.jsonl").read_text()
            .splitlines()]
    models = {r["model"] for r in rows}
    assert models == {"pivot", "expert:digits", "expert:charts", "merge:task_arithmetic", "merge:regmean",
                      "merge:pivotmerge"}
    cls = [r for r in rows if r["benchmark"].startswith("pm_cls_") and r["primary"]]
    assert cls and all(0.0 <= r["value"] <= 1.0 and len(r["items"]) == 3 for r in cls)
    nll = [r for r in rows if r["benchmark"].startswith("pm_nll_") and r["primary"]]
    assert nll and all(r["value"] > 0 for r in nll)
    assert (Path(cfg.paths.output_dir) / "report" / "table.md").is_file()
