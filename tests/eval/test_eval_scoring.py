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


TEMPLATED = ["a handwritten digit seven", "a handwritten digit two", "a handwritten digit eight"]


def _naive_greedy(mllm, features, instruction, choice):
    """Whether greedy decoding reproduces every token of `choice` (one full forward)."""
    prompt_ids, _ = mllm.encode_text(instruction)
    answer = scoring.answer_ids(mllm, choice)
    text_ids = torch.tensor([prompt_ids + answer])
    inputs, mask = mllm.embed(features, text_ids, torch.ones_like(text_ids))
    logits = mllm.llm(inputs_embeds=inputs, attention_mask=mask).logits[0]
    start = inputs.shape[1] - len(answer)
    return bool((logits[start - 1:-1].argmax(dim=-1) == torch.tensor(answer)).all())


def test_shared_choice_prefix_is_scored_once_and_exactly(tiny_mllm):
    # options sharing a template (folded into the prefix pass), one option a prefix of another, two identical
    # options (each keeps at least its last token), and an item whose options share nothing
    instructions = ["Describe the image briefly."] * 4
    choices = [TEMPLATED, ["a sign that reads apple", "a sign that reads apple pie"], ["same", "same"],
               ["yes", "no"]]
    torch.manual_seed(3)
    features = torch.randn(4, 4, 24)
    fast = scoring.score_choices(tiny_mllm, features, instructions, choices, batch_size=4, with_counts=True)
    slow = scoring.score_choices_naive(tiny_mllm, features, instructions, choices, with_counts=True)
    assert fast.counts == slow.counts
    for a, b in zip(fast.logprobs, slow.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert fast.logprobs[2][0] == fast.logprobs[2][1]
    for i, item in enumerate(choices):
        assert fast.greedy[i] == [_naive_greedy(tiny_mllm, features[i:i + 1], instructions[i], c) for c in item]
    # the greedy continuation itself is flagged greedy, also when its first tokens are folded
    greedy_ids = scoring.generate(tiny_mllm, features[:1], instructions[:1], max_new_tokens=4, return_ids=True)[0]
    text = tiny_mllm.tokenizer.decode(greedy_ids)
    if greedy_ids and tiny_mllm.tokenizer(text, add_special_tokens=False).input_ids == greedy_ids:
        flags = scoring.score_choices(tiny_mllm, features[:1], instructions[:1], [[text, text + " zz"]],
                                      include_end=False, with_counts=True).greedy[0]
        assert flags[0] is True


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
