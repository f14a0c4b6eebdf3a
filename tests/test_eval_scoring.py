"""Shared-prefix KV-cache scoring equals one full forward per (item, choice); greedy decoding likewise."""
import torch

from pivotmerge.models import scoring

INSTRUCTIONS = ["Describe the image briefly.", "Is there a cat in the image? Answer yes or no.",
                "What word is written?", "x", "Give a short caption for the image."]
CHOICES = [["a cat", "a dog", "a sign that reads apple", "b"], ["yes", "no"], ["apple", "river", "storm", "piano"],
           ["one", "two", "three"], ["seven", "a handwritten digit eight", "x", "y"]]


def test_kv_cache_scoring_equals_naive(tiny_mllm):
    torch.manual_seed(0)
    features = torch.randn(5, 4, 24)
    fast = scoring.score_choices(tiny_mllm, features, INSTRUCTIONS, CHOICES, batch_size=3, with_counts=True)
    slow = scoring.score_choices_naive(tiny_mllm, features, INSTRUCTIONS, CHOICES, with_counts=True)
    for a, b in zip(fast.logprobs, slow.logprobs):
        assert len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert fast.counts == slow.counts
    # without the end-of-turn token as well
    fast = scoring.score_choices(tiny_mllm, features, INSTRUCTIONS, CHOICES, include_end=False)
    slow = scoring.score_choices_naive(tiny_mllm, features, INSTRUCTIONS, CHOICES, include_end=False)
    assert max(abs(x - y) for a, b in zip(fast, slow) for x, y in zip(a, b)) < 1e-4


def test_yes_no_logits_match_first_token_scores(tiny_mllm):
    torch.manual_seed(1)
    features = torch.randn(3, 4, 24)
    logits = scoring.yes_no_logits(tiny_mllm, features, INSTRUCTIONS[:3])
    ids = [scoring.answer_ids(tiny_mllm, w, include_end=False) for w in ("yes", "no")]
    if all(len(i) == 1 for i in ids):
        ref = scoring.score_choices_naive(tiny_mllm, features, INSTRUCTIONS[:3], [["yes", "no"]] * 3,
                                          include_end=False)
        assert torch.allclose(logits, torch.tensor(ref), atol=1e-4)
    assert logits.shape == (3, 2)


def test_greedy_generate_equals_naive(tiny_mllm):
    for seed in range(2):
        torch.manual_seed(seed)
        features = torch.randn(5, 4, 24) * 5
        fast = scoring.generate(tiny_mllm, features, INSTRUCTIONS, max_new_tokens=5, batch_size=2, return_ids=True)
        slow = scoring.generate_naive(tiny_mllm, features, INSTRUCTIONS, max_new_tokens=5, return_ids=True)
        assert fast == slow
