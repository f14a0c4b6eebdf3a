"""What the token layout after the image costs a training step: today's layout vs two shorter ones, in one run.

Training and scoring run the frozen LLM over everything after the cached chat prefix, so the tokens there set
the price of both. Layouts (batch 16, real caption templates of the default sources, one visual token):

* current      - [visual]["\\n" + instruction + assistant header][caption + end]   (what the pipeline does)
* instr_first  - the instruction moved into the cached chat prefix (LLaVA's pretraining data also puts it
                 there for half of its samples): [visual][assistant header][caption + end]
* label_only   - instr_first with the caption reduced to the label: [visual][assistant header][label + end]

Each figure is the frozen LLM's forward + backward to its inputs (the projector's share is negligible),
median of the repetitions, layouts interleaved so that a busy machine slows them alike. The two shorter
layouts are NOT implemented in the pipeline: they change what the experts learn and need the recipe
searched again (docs/method.md); this measures what they would buy.

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
    instruction = str(OmegaConf.load(ROOT / "conf" / "eval" / "embedded.yaml").suite.instruction)
    pairs = []   # (caption, label) cycling through sources, templates and labels
    for source, labels in EXAMPLE_LABELS.items():
        templates = OmegaConf.load(ROOT / "conf" / "data" / "source" / f"{source}.yaml").caption_templates
        pairs += [(t.format(label=label), label) for t in templates for label in labels]
    pairs = [pairs[(i * 7) % len(pairs)] for i in range(args.batch)]

    def ids(text):
        return mllm.tokenizer(text, add_special_tokens=False).input_ids

    end, suffix = mllm.prompt.answer_end, mllm.prompt.suffix
    layouts = {"current": [ids("\n" + instruction + suffix) + ids(c + end) for c, _ in pairs],
               "instr_first": [ids(suffix) + ids(c + end) for c, _ in pairs],
               "label_only": [ids(suffix) + ids(label + end) for _, label in pairs]}
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
    current = statistics.median(times["current"])
    print(f"\nbatch {args.batch}, {torch.get_num_threads()} threads, frozen LLM fwd + bwd after the chat prefix")
    print(f"{'layout':<13}{'tokens':>7}{'s/step':>9}{'vs current':>12}")
    for name in layouts:
        step = statistics.median(times[name])
        rows.append({"layout": name, "tokens_after_prefix": lengths[name], "step_s": round(step, 3),
                     "speedup_vs_current": round(current / step, 2)})
        print(f"{name:<13}{lengths[name]:>7}{step:>9.3f}{current / step:>11.2f}x")
    out = ROOT / "bench" / "results" / "prompt_layout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "layouts": rows}, indent=2))


if __name__ == "__main__":
    main()
