"""What the token layout after the image costs a training step: the default against the layouts it replaced.

Training and scoring run the frozen LLM over everything after the cached chat prefix, so the tokens there set
the price of both. Layouts (batch 16, one visual token):

* round4     - [visual]["\\n" + instruction + assistant header][templated caption + end]: the recipe until
               2026-12-02 ("a handwritten digit {label}", ...; docs/method.md, round 4)
* round5     - the same with the caption reduced to the label (docs/method.md, round 5)
* default    - what the pipeline does now: conf/data/embedded.yaml's instruction (none) and the sources'
               caption templates (the label): [visual]["\\n" + assistant header][label + end]

Each figure is the frozen LLM's forward + backward to its inputs (the projector's share is negligible),
median of the repetitions, layouts interleaved so that a busy machine slows them alike.

    python bench/bench_prompt_layout.py [--reps 5] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# The recipe before 2026-12-02 (first template of each source, first instruction), kept here to price it.
ROUND4_INSTRUCTION = "Describe the image briefly."
ROUND4_TEMPLATES = {"digits": "a handwritten digit {label}", "emoji": "an emoji in the category {label}",
                    "animals": "a white silhouette of a {label}", "charts": "a {label} of some data"}
EXAMPLE_LABELS = {"digits": ["seven", "three"], "emoji": ["food or drink", "flag"],
                  "animals": ["horse", "cat"], "charts": ["bar chart", "pie chart"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from pivotmerge.models.mllm import build_mllm

    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "embedded.yaml")
    mllm = build_mllm(model_cfg, ROOT / ".cache" / "models", seed=0)
    data_cfg = OmegaConf.load(ROOT / "conf" / "data" / "embedded.yaml")
    instruction = str(data_cfg.instructions[0])
    rows = []   # (source, label) cycling through sources and labels
    for source, labels in EXAMPLE_LABELS.items():
        rows += [(source, label) for label in labels]
    rows = [rows[(i * 7) % len(rows)] for i in range(args.batch)]

    def ids(text):
        return mllm.tokenizer(text, add_special_tokens=False).input_ids

    def caption(source, label):
        template = OmegaConf.load(ROOT / "conf" / "data" / "source" / f"{source}.yaml").caption_templates[0]
        return template.format(label=label)

    end, suffix = mllm.prompt.answer_end, mllm.prompt.suffix
    layouts = {"round4": [ids("\n" + ROUND4_INSTRUCTION + suffix) + ids(ROUND4_TEMPLATES[s].format(label=label) + end)
                          for s, label in rows],
               "round5": [ids("\n" + ROUND4_INSTRUCTION + suffix) + ids(label + end) for _, label in rows],
               "default": [ids("\n" + instruction + suffix) + ids(caption(s, label) + end) for s, label in rows]}
    embedding = mllm.llm.get_input_embeddings()
    width = embedding.weight.shape[1]
    times = {name: [] for name in layouts}
    lengths = {}
    for rep in range(args.reps + 1):
        for name, rows in layouts.items():
            length = max(len(r) for r in rows)
            text = torch.zeros(len(rows), length, dtype=torch.long)
            mask = torch.zeros(len(rows), mllm.num_head_tokens + 1 + length, dtype=torch.long)
            mask[:, :mllm.num_head_tokens + 1] = 1
            for i, r in enumerate(rows):
                text[i, :len(r)] = torch.tensor(r)
                mask[i, mllm.num_head_tokens + 1:mllm.num_head_tokens + 1 + len(r)] = 1
            visual = torch.randn(len(rows), 1, width, requires_grad=True)
            with torch.no_grad():
                words = embedding(text)
            inputs = torch.cat([visual, words], dim=1)
            start = time.perf_counter()
            mllm.forward_after_head(inputs, mask).last_hidden_state.float().pow(2).mean().backward()
            if rep:   # the first round warms up
                times[name].append(time.perf_counter() - start)
            lengths[name] = 1 + length
    rows = []
    reference = statistics.median(times["round4"])
    print(f"\nbatch {args.batch}, {torch.get_num_threads()} threads, frozen LLM fwd + bwd after the chat prefix")
    print(f"{'layout':<13}{'tokens':>7}{'s/step':>9}{'vs round4':>12}")
    for name in layouts:
        step = statistics.median(times[name])
        rows.append({"layout": name, "tokens_after_prefix": lengths[name], "step_s": round(step, 3),
                     "speedup_vs_round4": round(reference / step, 2)})
        print(f"{name:<13}{lengths[name]:>7}{step:>9.3f}{reference / step:>11.2f}x")
    out = ROOT / "bench" / "results" / "prompt_layout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "layouts": rows}, indent=2))


if __name__ == "__main__":
    main()
