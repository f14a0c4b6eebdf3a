"""Fast scoring of answer continuations over an MLLM: shared-prefix KV cache, batched choices.

Every prompt goes through `MLLM.encode_text`, so scoring sees exactly the token layout of training:
    [chat prefix][visual tokens]["\\n" + instruction + assistant header][answer + end-of-turn]

`score_choices` runs the shared prefix (chat prefix + visual tokens + instruction + the answer tokens that
all of the item's choices begin with) ONCE per item with `use_cache=True`, then expands the cache to one row per
choice and scores all choices of all items of the batch in a second forward over the (short) answer tokens
only. Prefixes are right-padded: padding slots stay inside the cache but are masked out, and position ids of
the answer tokens continue from each row's
own prefix length, so there is never a fully masked attention row (no NaN from left padding) and the
result equals one full forward per (item, choice) (`score_choices_naive`, the test/benchmark reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ChoiceScores:
    logprobs: list[list[float]]   # summed log-probability of each choice's tokens
    counts: list[list[int]]       # number of scored tokens of each choice
    greedy: list[list[bool]] | None = None   # whether greedy decoding would produce the choice


def answer_ids(mllm, answer: str, include_end: bool = True) -> list[int]:
    """The answer's token ids exactly as `encode_text(instruction, answer)` appends them."""
    text = answer + (mllm.prompt.answer_end if include_end else "")
    return mllm.tokenizer(text, add_special_tokens=False).input_ids


def _prefix_forward(mllm, features: torch.Tensor, instructions: list[str], extra: list[list[int]] | None = None):
    """One forward over [prefix][visual][instruction][extra tokens] (right-padded).

    Returns (cache, hidden states, last valid hidden [B, H], valid lengths [B], attention mask, offset);
    `hidden[:, j]` is the hidden state of sequence position `j + offset` (the chat prefix comes from
    `MLLM.head_kv`, so its positions have no hidden state here).
    """
    encoded = [mllm.encode_text(instruction) for instruction in instructions]
    if extra is not None:
        encoded = [(ids + list(more), start) for (ids, start), more in zip(encoded, extra)]
    batch = mllm.collate_text(encoded)
    device = mllm.prefix_ids.device
    inputs, mask = mllm.embed(features.to(device), batch["text_ids"].to(device), batch["text_mask"].to(device))
    lengths = mask.sum(dim=1)                                    # valid tokens per row
    rows = inputs.shape[0]
    offset = mllm.num_head_tokens
    out = mllm.forward_after_head(inputs, mask)
    hidden = out.last_hidden_state
    last = hidden[torch.arange(rows, device=device), lengths - 1 - offset]   # [B, H]
    return out.past_key_values, hidden, last, lengths, mask, offset


def _common_prefix(token_lists: list[list[int]]) -> int:
    """Length of the token prefix shared by every list, leaving each at least one token of its own."""
    shortest = min(len(t) for t in token_lists)
    n = 0
    while n < shortest - 1 and all(t[n] == token_lists[0][n] for t in token_lists):
        n += 1
    return n


def _logprobs_of(mllm, hidden: torch.Tensor, targets: torch.Tensor, with_greedy: bool = False):
    logits = mllm.llm.get_output_embeddings()(hidden).float()
    logp = -F.cross_entropy(logits, targets, reduction="none")
    if with_greedy:
        return logp, logits.argmax(dim=-1) == targets
    return logp


@torch.no_grad()
def score_choices(mllm, features: torch.Tensor, instructions: list[str], choices: list[list[str]], *,
                  include_end: bool = True, batch_size: int = 16, with_counts: bool = False):
    """Summed log-prob of each choice given (image, instruction); the prefix is computed once per item.

    Returns list[list[float]] (or `ChoiceScores` with token counts when `with_counts`).
    """
    if not (features.shape[0] == len(instructions) == len(choices)):
        raise ValueError(f"features ({features.shape[0]}), instructions ({len(instructions)}) and choices "
                         f"({len(choices)}) must have one entry per item")
    logprobs: list[list[float]] = []
    counts: list[list[int]] = []
    greedy: list[list[bool]] = []
    for start in range(0, len(instructions), batch_size):
        stop = start + batch_size
        lp, ct, gr = _score_batch(mllm, features[start:stop], instructions[start:stop], choices[start:stop],
                                  include_end)
        logprobs += lp
        counts += ct
        greedy += gr
    return ChoiceScores(logprobs, counts, greedy) if with_counts else logprobs


def _score_batch(mllm, features, instructions, choices, include_end):
    device = mllm.prefix_ids.device
    per_item = [[answer_ids(mllm, choice, include_end) for choice in item] for item in choices]
    if any(len(t) == 0 for item in per_item for t in item):
        raise ValueError("an empty answer continuation cannot be scored")
    # Options of one item usually share a caption template ("a handwritten digit ..."): those tokens join the
    # item's prefix pass, so they are scored once per item instead of once per option. Their log-prob is
    # the same for every option, so each option's total is still the sum over all of its own tokens.
    shared = [item[0][:_common_prefix(item)] for item in per_item]
    cache, hidden, last, lengths, prefix_mask, offset = _prefix_forward(mllm, features, instructions, extra=shared)
    shared_lp = torch.zeros(len(choices), device=device)
    shared_miss = torch.zeros(len(choices), dtype=torch.long, device=device)
    if any(shared):
        rows_s = torch.tensor([i for i, t in enumerate(shared) for _ in t], dtype=torch.long, device=device)
        steps = torch.tensor([j for t in shared for j in range(len(t))], dtype=torch.long, device=device)
        start = lengths[rows_s] - torch.tensor([len(shared[i]) for i in rows_s.tolist()], device=device)
        targets = torch.tensor([tok for t in shared for tok in t], dtype=torch.long, device=device)
        lp, hit = _logprobs_of(mllm, hidden[rows_s, start - 1 + steps - offset], targets, with_greedy=True)
        shared_lp.index_add_(0, rows_s, lp)
        shared_miss.index_add_(0, rows_s, (~hit).long())
    n_choices = torch.tensor([len(c) for c in choices], device=device)
    if int(n_choices.min()) == int(n_choices.max()):
        cache.batch_repeat_interleave(int(n_choices[0]))
    else:
        cache.batch_select_indices(torch.repeat_interleave(torch.arange(len(choices), device=device), n_choices))
    rows = torch.repeat_interleave(torch.arange(len(choices), device=device), n_choices)
    tokens = [t[len(shared[i]):] for i, item in enumerate(per_item) for t in item]
    width = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), width), int(mllm.tokenizer.pad_token_id or 0), dtype=torch.long, device=device)
    answer_mask = torch.zeros((len(tokens), width), dtype=torch.long, device=device)
    for r, t in enumerate(tokens):
        ids[r, :len(t)] = torch.tensor(t, device=device)
        answer_mask[r, :len(t)] = 1
    # first own answer token: predicted by the last valid prefix position, the same for all of an item's
    # choices, so the vocabulary-wide log-softmax runs once per item, not once per choice
    first_logits = mllm.llm.get_output_embeddings()(last).float()
    first = torch.log_softmax(first_logits, dim=-1)[rows, ids[:, 0]]
    first_greedy = first_logits.argmax(dim=-1)[rows] == ids[:, 0]
    totals = first + shared_lp[rows]
    misses = (~first_greedy).long() + shared_miss[rows]
    if width > 1:
        mask = torch.cat([prefix_mask[rows], answer_mask], dim=1)
        position_ids = lengths[rows].unsqueeze(1) + torch.arange(width, device=device).unsqueeze(0)
        # the last answer token predicts nothing we score: feed tokens 0..width-2
        out = mllm.llm.base_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                  position_ids=position_ids[:, :-1], past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state                           # [R, width-1, H]
        valid = answer_mask[:, 1:].bool()
        token_lp, token_greedy = _logprobs_of(mllm, hidden[valid], ids[:, 1:][valid], with_greedy=True)
        totals.index_add_(0, valid.nonzero()[:, 0], token_lp)
        misses.index_add_(0, valid.nonzero()[:, 0], (~token_greedy).long())
    token_counts = answer_mask.sum(dim=1) + torch.tensor([len(shared[i]) for i in rows.tolist()], device=device)
    logprobs, counts, greedy, offset = [], [], [], 0
    for n in n_choices.tolist():
        logprobs.append(totals[offset:offset + n].tolist())
        counts.append(token_counts[offset:offset + n].tolist())
        greedy.append((misses[offset:offset + n] == 0).tolist())
        offset += n
    return logprobs, counts, greedy


@torch.no_grad()
def score_choices_naive(mllm, features: torch.Tensor, instructions: list[str], choices: list[list[str]], *,
                        include_end: bool = True, with_counts: bool = False):
    """Reference: one full forward per (item, choice), through `MLLM.answer_logprobs`."""
    device = mllm.prefix_ids.device
    logprobs, counts = [], []
    for i, (instruction, item) in enumerate(zip(instructions, choices)):
        row_lp, row_ct = [], []
        for choice in item:
            prompt_ids, _ = mllm.encode_text(instruction)
            ids = prompt_ids + answer_ids(mllm, choice, include_end)
            batch = mllm.collate_text([(ids, len(prompt_ids))])
            total, count = mllm.answer_logprobs(features[i:i + 1].to(device),
                                                **{k: v.to(device) for k, v in batch.items()})
            row_lp.append(float(total[0]))
            row_ct.append(int(count[0]))
        logprobs.append(row_lp)
        counts.append(row_ct)
    return ChoiceScores(logprobs, counts) if with_counts else logprobs


@torch.no_grad()
def yes_no_logits(mllm, features: torch.Tensor, instructions: list[str], yes: str = "yes", no: str = "no"):
    """[B, 2] log-probabilities of the first token of `yes` / `no` as the answer (one prefix forward)."""
    _, _, last, _, _, _ = _prefix_forward(mllm, features, instructions)
    logp = torch.log_softmax(mllm.llm.get_output_embeddings()(last).float(), dim=-1)
    ids = [answer_ids(mllm, yes, include_end=False)[0], answer_ids(mllm, no, include_end=False)[0]]
    return logp[:, ids]


def _stop_token_ids(mllm) -> set[int]:
    stops = set()
    for text in (mllm.prompt.answer_end, mllm.tokenizer.eos_token):
        if text:
            ids = mllm.tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) == 1:
                stops.add(ids[0])
    if mllm.tokenizer.eos_token_id is not None:
        stops.add(int(mllm.tokenizer.eos_token_id))
    return stops


@torch.no_grad()
def generate(mllm, features: torch.Tensor, instructions: list[str], max_new_tokens: int = 16,
             until: list[str] | None = None, batch_size: int = 16, return_ids: bool = False):
    """Greedy decoding of the answer (KV cache, batched); stops at end-of-turn/EOS or any `until` string.

    Returns the decoded answers (stripped, cut at the first `until` string), or the raw token ids.
    """
    outputs: list = []
    for start in range(0, len(instructions), batch_size):
        outputs += _generate_batch(mllm, features[start:start + batch_size],
                                   instructions[start:start + batch_size], max_new_tokens, until or [], return_ids)
    return outputs


def _generate_batch(mllm, features, instructions, max_new_tokens, until, return_ids=False):
    device = mllm.prefix_ids.device
    cache, _, last, lengths, mask, _ = _prefix_forward(mllm, features, instructions)
    stops = _stop_token_ids(mllm)
    batch = len(instructions)
    generated = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    hidden = last
    for step in range(max_new_tokens):
        next_ids = mllm.llm.get_output_embeddings()(hidden).argmax(dim=-1)       # [B]
        for b in range(batch):
            if done[b]:
                continue
            token = int(next_ids[b])
            if token in stops:
                done[b] = True
                continue
            generated[b].append(token)
            if until:
                text = mllm.tokenizer.decode(generated[b], skip_special_tokens=True)
                if any(u and u in text for u in until):
                    done[b] = True
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
        position_ids = (lengths + step).unsqueeze(1)
        out = mllm.llm.base_model(input_ids=next_ids.unsqueeze(1), attention_mask=mask, position_ids=position_ids,
                                  past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1]
    if return_ids:
        return generated
    texts = []
    for tokens in generated:
        text = mllm.tokenizer.decode(tokens, skip_special_tokens=True)
        for u in until:
            if u and u in text:
                text = text.split(u)[0]
        texts.append(text.strip())
    return texts


@torch.no_grad()
def generate_naive(mllm, features: torch.Tensor, instructions: list[str], max_new_tokens: int = 16,
                   return_ids: bool = False):
    """Reference greedy decoding: a full forward per new token, one item at a time (tests only)."""
    device = mllm.prefix_ids.device
    stops = _stop_token_ids(mllm)
    texts = []
    for i, instruction in enumerate(instructions):
        ids, _ = mllm.encode_text(instruction)
        new: list[int] = []
        for _ in range(max_new_tokens):
            text_ids = torch.tensor([ids + new], device=device)
            inputs, mask = mllm.embed(features[i:i + 1].to(device), text_ids, torch.ones_like(text_ids))
            hidden = mllm.llm.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state[:, -1]
            token = int(mllm.llm.get_output_embeddings()(hidden).argmax(dim=-1)[0])
            if token in stops:
                break
            new.append(token)
        if return_ids:
            texts.append(new)
            continue
        texts.append(mllm.tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts
