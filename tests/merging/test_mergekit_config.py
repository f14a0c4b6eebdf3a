"""`pivotmerge merge --config` on mergekit configs, unchanged: each merge equals mergekit's arithmetic.

The configs are written here in the manner of mergekit's documented examples (base listed without
parameters, per-model `weight`/`density`, global `parameters`, `dtype`). The reference below is mergekit's
documented per-tensor rule, written from the formula: delta_i = w_i * sparsify(tau_i, d_i); with a sign
election only entries agreeing with sign(sum_i delta_i) count; normalize divides by the (agreeing) weights;
theta = base + lambda * mixed. `linear` is sum_j w_j theta_j / sum_j w_j."""

from __future__ import annotations

import json

import pytest
import torch

from pivotmerge.cli import main
from pivotmerge.io import load_state_dict, read_metadata, save_state_dict
from tests.helpers.merging import merge
from tests.helpers.tiny_models import llava_projectors


@pytest.fixture()
def ckpts(tmp_path):
    base, experts = llava_projectors(seed=1, d_in=6, width=16)
    save_state_dict(base, tmp_path / "base.safetensors")
    for i, e in enumerate(experts):
        save_state_dict(e, tmp_path / f"expert_{i}.safetensors")
    return tmp_path, base, experts


def reference(base, models, weights, *, density=1.0, sparsify=None, elect=False, normalize=False, lam=1.0):
    out = {}
    for k, b in base.items():
        deltas = []
        for m, w in zip(models, weights):
            tau = m[k] - b
            if sparsify == "magnitude" and density < 1:
                keep = torch.zeros(tau.numel(), dtype=torch.bool)
                keep[tau.abs().flatten().topk(int(density * tau.numel())).indices] = True
                tau = tau * keep.reshape(tau.shape)
            deltas.append(w * tau)
        deltas = torch.stack(deltas)
        w = torch.tensor(weights).reshape(-1, *[1] * b.dim())
        if elect:
            majority = torch.where(deltas.sum(0) >= 0, 1.0, -1.0)
            agree = (deltas.sign() == majority).float()
            mixed, divisor = (deltas * agree).sum(0), (w * agree).sum(0)
            divisor[divisor == 0] = 1
        else:
            mixed, divisor = deltas.sum(0), w.sum(0).expand_as(b).clone()
            divisor[divisor.abs() < 1e-8] = 1
        out[k] = b + lam * (mixed / divisor if normalize else mixed)
    return out


def run(d, text, *extra):
    (d / "mergekit.yml").write_text(text)
    rc = main(["merge", "--config", str(d / "mergekit.yml"), "--out", str(d / "merged.safetensors"), *extra])
    assert rc == 0
    return load_state_dict(d / "merged.safetensors"), read_metadata(d / "merged.safetensors")


def close(got, ref, atol=1e-5):
    assert set(got) == set(ref)
    for k in ref:
        assert torch.allclose(got[k].float(), ref[k].float(), atol=atol), k


def test_ties_normalized_equal_weights(ckpts, capsys):
    d, base, experts = ckpts
    got, meta = run(d, """\
models:
  - model: base.safetensors
    # no parameters necessary for the base model
  - model: expert_0.safetensors
    parameters:
      density: 0.5
      weight: 0.5
  - model: expert_1.safetensors
    parameters:
      density: 0.5
      weight: 0.5
  - model: expert_2.safetensors
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: base.safetensors
parameters:
  normalize: true
  int8_mask: true
dtype: float32
""")
    close(got, reference(base, experts, [0.5] * 3, density=0.5, sparsify="magnitude", elect=True, normalize=True))
    assert json.loads(meta["pivotmerge.options"]) == dict(density=0.5, scope="tensor", sign="sum", combine="mean",
                                                          lam=1.0)
    assert "mergekit config, merge_method ties -> ties" in json.loads(meta["pivotmerge.inputs"])["origin"]
    assert "from a mergekit config" in capsys.readouterr().out


def test_ties_unnormalized_per_model_weights_and_global_density(ckpts):
    d, base, experts = ckpts
    got, _ = run(d, """\
merge_method: ties
base_model: base.safetensors
models:
  - model: expert_0.safetensors
    parameters: {weight: 1.0}
  - model: expert_1.safetensors
    parameters: {weight: 0.5}
  - model: expert_2.safetensors
    parameters: {weight: -0.3}
parameters:
  density: 0.7
  normalize: false
  lambda: 0.9
""")
    close(got, reference(base, experts, [1.0, 0.5, -0.3], density=0.7, sparsify="magnitude", elect=True, lam=0.9))


def test_task_arithmetic_weights_and_lambda(ckpts):
    d, base, experts = ckpts
    got, meta = run(d, """\
merge_method: task_arithmetic
base_model: base.safetensors
models:
  - model: expert_0.safetensors
    parameters:
      weight: 0.7
  - model: expert_1.safetensors
    parameters:
      weight: 0.3
parameters:
  lambda: 0.8
dtype: float32
""")
    close(got, reference(base, experts[:2], [0.7, 0.3], lam=0.8))
    inputs = json.loads(meta["pivotmerge.inputs"])
    assert [e["weight"] for e in inputs["experts"]] == [0.7, 0.3] and inputs["dtype"] == "float32"


def test_task_arithmetic_equal_weights_fold_into_lam(ckpts):
    d, base, experts = ckpts
    got, meta = run(d, """\
merge_method: task_arithmetic
base_model: base.safetensors
models:
  - {model: expert_0.safetensors, parameters: {weight: 0.4}}
  - {model: expert_1.safetensors, parameters: {weight: 0.4}}
  - {model: expert_2.safetensors, parameters: {weight: 0.4}}
""")
    close(got, reference(base, experts, [0.4] * 3))
    assert json.loads(meta["pivotmerge.options"]) == {"lam": 0.4}
    assert all(e["weight"] == 1.0 for e in json.loads(meta["pivotmerge.inputs"])["experts"])


def test_linear_weighted_average_without_a_base(ckpts):
    d, base, experts = ckpts
    got, meta = run(d, """\
models:
  - model: expert_0.safetensors
    parameters:
      weight: 2.0
  - model: expert_1.safetensors
    parameters:
      weight: 1.0
  - model: expert_2.safetensors
    parameters:
      weight: 1.0
merge_method: linear
dtype: float32
""")
    ref = {k: (2 * experts[0][k] + experts[1][k] + experts[2][k]) / 4 for k in base}
    close(got, ref)
    assert meta["pivotmerge.method"] == "average"


def test_linear_equal_weights_is_average_and_out_dtype(ckpts):
    d, base, experts = ckpts
    got, meta = run(d, """\
models:
  - {model: expert_0.safetensors, parameters: {weight: 1.0}}
  - {model: expert_1.safetensors, parameters: {weight: 1.0}}
merge_method: linear
out_dtype: bfloat16
""")
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    close(got, merge("average", base, experts[:2]), atol=5e-2)


def test_dare_linear_without_drop_equals_reference(ckpts):
    d, base, experts = ckpts
    got, _ = run(d, """\
merge_method: dare_linear
base_model: base.safetensors
models:
  - {model: expert_0.safetensors, parameters: {weight: 0.6, density: 1.0}}
  - {model: expert_1.safetensors, parameters: {weight: 0.2, density: 1.0}}
parameters:
  normalize: true
""")
    close(got, reference(base, experts[:2], [0.6, 0.2], normalize=True))


def test_dare_ties_maps_density_weights_and_seed(ckpts):
    d, base, experts = ckpts
    text = """\
models:
  - model: base.safetensors
  - model: expert_0.safetensors
    parameters:
      density: 0.53
      weight: 0.4
  - model: expert_1.safetensors
    parameters:
      density: 0.53
      weight: 0.3
  - model: expert_2.safetensors
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: base.safetensors
parameters:
  int8_mask: true
dtype: float32
random_seed: 7
"""
    got, meta = run(d, text)
    options = json.loads(meta["pivotmerge.options"])
    assert options == dict(p=pytest.approx(0.47), seed=7, density=1.0, scope="tensor", sign="sum", combine="sum",
                           lam=1.0)
    # mergekit scales each dropped task vector by its weight; ours scales before the drop (same masks)
    scaled = [{k: base[k] + w * (e[k] - base[k]) for k in base} for e, w in zip(experts, (0.4, 0.3, 0.3))]
    close(got, merge("dare_ties", base, scaled, **options))
    # without the drop, the sign election and the weights are mergekit's
    got, _ = run(d, text.replace("0.53", "1.0"), "--force")
    close(got, reference(base, experts, [0.4, 0.3, 0.3], elect=True))


def test_rescale_false_folds_density_into_lam(ckpts):
    d, base, experts = ckpts
    got, meta = run(d, """\
merge_method: dare_linear
base_model: base.safetensors
models:
  - {model: expert_0.safetensors, parameters: {weight: 1.0}}
  - {model: expert_1.safetensors, parameters: {weight: 1.0}}
parameters: {density: 0.5, rescale: false, lambda: 2.0}
""")
    assert json.loads(meta["pivotmerge.options"]) == dict(p=0.5, seed=0, lam=1.0)


_OK = "merge_method: ties\nbase_model: base.safetensors\n"
_MODELS = "models:\n  - {model: expert_0.safetensors, parameters: {weight: 0.5}}\n" \
          "  - {model: expert_1.safetensors, parameters: {weight: 0.5}}\n"


@pytest.mark.parametrize("text,needles", [
    ("merge_method: ties\nslices:\n  - sources:\n    - {model: expert_0.safetensors, layer_range: [0, 2]}\n"
     "base_model: base.safetensors\n", ["'slices'", "not supported"]),
    (_OK + _MODELS + "tokenizer_source: union\n", ["'tokenizer_source'"]),
    (_OK + _MODELS + "chat_template: chatml\n", ["'chat_template'"]),
    (_OK + "models:\n  - {model: expert_0.safetensors, parameters: {weight: [0.2, 0.5, 0.8]}}\n"
     "  - {model: expert_1.safetensors, parameters: {weight: 0.5}}\n", ["models[0].parameters.weight", "gradient"]),
    (_OK + _MODELS + "parameters:\n  density:\n    - {filter: mlp, value: 0.3}\n    - {value: 0.6}\n",
     ["parameters.density", "layer-dependent"]),
    ("merge_method: slerp\nbase_model: base.safetensors\n" + _MODELS, ["slerp", "no pivotmerge equivalent"]),
    (_OK + "models:\n  - {model: expert_0.safetensors, parameters: {weight: 0.7}}\n"
     "  - {model: expert_1.safetensors, parameters: {weight: 0.3}}\n", ["normalize: true", "0.7, 0.3"]),
    (_OK + "models:\n  - {model: expert_0.safetensors, parameters: {weight: 1, density: 0.3}}\n"
     "  - {model: expert_1.safetensors, parameters: {weight: 1, density: 0.6}}\n", ["densities differ"]),
    ("merge_method: ties\n" + _MODELS, ["needs base_model"]),
    (_OK + "models:\n  - {model: expert_0.safetensors}\n  - {model: expert_1.safetensors}\n", ["has no weight"]),
    (_OK + _MODELS + "parameters: {gamma: 0.01}\n", ["parameters.gamma", "merge_method ties"]),
    (_OK + _MODELS + "parameters: {rescale: true}\n", ["rescale: true"]),
    ("merge_method: linear\nmodels:\n  - {model: expert_0.safetensors, parameters: {weight: 1}}\n"
     "  - {model: expert_1.safetensors, parameters: {weight: 1}}\nparameters: {normalize: false}\n",
     ["summing to 1"]),
    ("merge_method: linear\nbase_model: base.safetensors\n" + _MODELS, ["base.safetensors has no weight"]),
    (_OK + _MODELS + "dtype: int8\n", ["dtype 'int8'"]),
    (_OK + _MODELS + "method: ties\n", ["unknown key 'method'"]),
    (_OK + "models:\n  - {model: org/expert-7b+lora}\n  - {model: expert_1.safetensors}\n", ["LoRA"]),
])
def test_unsupported_mergekit_keys_stop_in_one_line(ckpts, capsys, text, needles):
    d, _, _ = ckpts
    (d / "bad.yml").write_text(text)
    rc = main(["merge", "--config", str(d / "bad.yml"), "--out", str(d / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    assert not (d / "o.safetensors").exists()
