"""The MLLM assembles, encodes prompts with the chat template, and its loss is a real next-token loss."""
import pytest
import torch
from PIL import Image

from pivotmerge.errors import ConfigError
from pivotmerge.models.projector import build_projector, projector_dims


def test_projector_names_match_llava():
    assert sorted(build_projector("mlp2x_gelu", 8, 4).state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert sorted(build_projector("linear", 8, 4).state_dict()) == ["bias", "weight"]
    deep = build_projector("mlp3x_gelu", 8, 4).state_dict()
    assert projector_dims(deep) == (8, 4) and "4.weight" in deep
    with pytest.raises(ConfigError, match="unknown projector kind"):
        build_projector("transformer", 8, 4)


def test_tiny_mllm_loss_and_gradients(tiny_mllm):
    images = [Image.new("RGB", (40, 40), (i * 60, 30, 200 - i * 50)) for i in range(3)]
    features = tiny_mllm.encode_images(images)
    assert features.shape == (3, 4, 24)  # 4x4 patch grid pooled to 2x2
    encoded = [tiny_mllm.encode_text("Describe the image briefly.", c)
               for c in ["a cat", "a dog", "a sign that reads apple"]]
    batch = tiny_mllm.collate_text(encoded)
    # labels cover exactly the answer tokens (caption + end-of-turn)
    for (ids, start), labels in zip(encoded, batch["labels"]):
        assert labels[labels != -100].tolist() == ids[start:]
    loss = tiny_mllm.caption_loss(features, **batch)
    vocab = tiny_mllm.llm.config.vocab_size
    assert 0.5 * torch.log(torch.tensor(float(vocab))) < loss < 3 * torch.log(torch.tensor(float(vocab)))
    loss.backward()
    grads = [p.grad for p in tiny_mllm.projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in tiny_mllm.llm.parameters())
    tiny_mllm.projector.zero_grad(set_to_none=True)


def test_caption_loss_matches_full_logits(tiny_mllm):
    """The LM-head-on-answers-only shortcut equals the loss from the model's full logits."""
    torch.manual_seed(0)
    features = torch.randn(2, 4, 24)
    batch = tiny_mllm.collate_text([tiny_mllm.encode_text("Describe.", "a bird"),
                                    tiny_mllm.encode_text("Describe.", "an emoji in the category flag")])
    with torch.no_grad():
        ours = tiny_mllm.caption_loss(features, **batch)
        inputs, mask = tiny_mllm.embed(features, batch["text_ids"], batch["text_mask"])
        logits = tiny_mllm.llm(inputs_embeds=inputs, attention_mask=mask).logits
        head = inputs.shape[1] - batch["labels"].shape[1]
        labels = torch.cat([torch.full((2, head), -100), batch["labels"]], dim=1)
        reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_reusing_the_chat_prefix_cache_changes_neither_loss_nor_gradients(tiny_mllm):
    """Training reads the chat prefix's keys/values from a cache: same loss and projector gradients."""
    assert tiny_mllm.num_head_tokens > 0
    torch.manual_seed(1)
    features = torch.randn(3, 4, 24)
    batch = tiny_mllm.collate_text([tiny_mllm.encode_text("Describe.", c) for c in ["a cat", "a red bird", "b"]])
    results = []
    for reuse in (False, True):
        tiny_mllm.reuse_head_kv = reuse
        tiny_mllm.projector.zero_grad(set_to_none=True)
        loss = tiny_mllm.caption_loss(features, **batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in tiny_mllm.projector.parameters()]))
    tiny_mllm.projector.zero_grad(set_to_none=True)
    (loss_full, grads_full), (loss_cached, grads_cached) = results
    assert torch.allclose(loss_full, loss_cached, atol=1e-6)
    for full, cached in zip(grads_full, grads_cached):
        assert full.abs().sum() > 0
        assert torch.allclose(full, cached, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in tiny_mllm.llm.parameters())


def test_feature_dim_mismatch_is_a_clear_error(tiny_mllm):
    batch = tiny_mllm.collate_text([tiny_mllm.encode_text("Describe.", "a cat")])
    with pytest.raises(ConfigError, match="do not fit the projector"):
        tiny_mllm.caption_loss(torch.randn(1, 4, 25), **batch)


def test_fold_batchnorm_keeps_the_output_and_removes_every_conv_bn_pair():
    from torch import nn

    from pivotmerge.models.vision import fold_batchnorm

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8)),
                          nn.BatchNorm2d(8))   # a BN after a BN is not a conv+BN pair: it stays
    for bn in [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = block(x)
        assert fold_batchnorm(block) == 2
        assert torch.allclose(block(x), expected, atol=1e-5)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 1
