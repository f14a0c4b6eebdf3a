"""Write docs/results.md from the results stores alone: no number in it is typed by hand.

    python experiments/results_doc.py            # newest run of each experiment under outputs/
    python experiments/results_doc.py --outputs outputs --doc docs/results.md

For each experiment it finds (pivotmerge_vs_ties, paper_table, ablation_components, and multirun sweeps
under multirun/), it renders the table with `eval.report`, copies the bar chart into docs/figures/, and
states what the numbers show: the best merged method, where PivotMerge ranks, and its gap to the joint
projector and to each expert - including where it loses.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.report import build_table, plot_bars, read_rows, to_markdown  # noqa: E402

EXPERIMENTS = {
    "pivotmerge_vs_ties": "python run.py experiment=pivotmerge_vs_ties   # = make run",
    "paper_table": "python run.py experiment=paper_table",
    "ablation_components": "python run.py experiment=ablation_components",
}


def newest_store(outputs: Path, experiment: str) -> Path | None:
    stores = sorted((outputs / experiment).glob("*/results/results.jsonl"), key=lambda p: p.parent.parent.name)
    return stores[-1].parent if stores else None


def findings(table) -> list[str]:
    merges = [m for m in table.models if m.startswith("merge:") and table.average.get(m) is not None]
    if not merges:
        return ["No merged projector was evaluated."]
    avg = {m: table.average[m].mean for m in merges}
    ranked = sorted(merges, key=lambda m: -avg[m])
    lines = [f"Best merged projector on the average: **{ranked[0]}** ({_pct(avg[ranked[0]])})."]
    pm = [m for m in merges if m.split(":", 1)[1].split(" ")[0] == "pivotmerge"]
    for name in pm:
        rank = ranked.index(name) + 1
        others = [m for m in ranked if m != name]
        best_other = others[0] if others else None
        text = f"{name} ranks {rank} of {len(ranked)} merged projectors ({_pct(avg[name])})"
        if best_other:
            delta = avg[name] - avg[best_other]
            verdict = "ahead of" if delta > 0 else "behind"
            text += f", {abs(delta) * 100:.1f} points {verdict} the best other method ({best_other})"
        ties = [m for m in merges if m.split(":", 1)[1] == "ties"]
        if ties:
            delta = avg[name] - avg[ties[0]]
            text += f"; vs TIES: {delta * 100:+.1f} points"
        lines.append(text + ".")
        wins = [b for b in table.benchmarks if table.cell(name, b) is not None and all(
            table.cell(o, b) is None or table.cell(name, b).mean >= table.cell(o, b).mean for o in merges)]
        losses = [b for b in table.benchmarks if b not in wins]
        lines.append(f"It is the best merge on {len(wins)} of {len(table.benchmarks)} benchmarks"
                     + (f" and not on: {', '.join(losses)}." if losses else "."))
    if "joint" in table.models and table.average.get("joint") is not None:
        gap = avg[ranked[0]] - table.average["joint"].mean
        lines.append(f"The joint projector (trained on the union, same budget) averages "
                     f"{_pct(table.average['joint'].mean)}; the best merge is {gap * 100:+.1f} points from it.")
    lines += signal_checks(table)
    if table.average.get("pivot") is not None:
        lines.append(f"The pivot averages {_pct(table.average['pivot'].mean)}; "
                     f"{sum(avg[m] > table.average['pivot'].mean for m in merges)} of {len(merges)} merges beat it.")
    return lines


def signal_checks(table) -> list[str]:
    """Where the table cannot tell methods apart, say so instead of letting a column look meaningful."""
    lines = []
    flat = [b for b in table.benchmarks
            if len({round(c.mean, 6) for m in table.models if (c := table.cell(m, b)) is not None}) == 1]
    if flat:
        lines.append(f"No signal: every projector scores the same on {', '.join(flat)}, so these columns cannot "
                     "rank methods at this scale (stage-1 alignment on captions only does not teach answering).")
    for bench in table.benchmarks:
        source = bench.removeprefix("pm_mc_") if bench.startswith("pm_mc_") else None
        expert = f"expert:{source}" if source else None
        if expert is None or table.cell(expert, bench) is None:
            continue
        others = [m for m in table.models if m != expert and table.cell(m, bench) is not None]
        best = max(others, key=lambda m: table.cell(m, bench).mean) if others else None
        if best is not None and table.cell(best, bench).mean >= table.cell(expert, bench).mean:
            lines.append(f"{expert} does not lead on its own source ({bench}: "
                         f"{_pct(table.cell(expert, bench).mean)} vs {best} {_pct(table.cell(best, bench).mean)}).")
    return lines


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}" if value <= 1.5 else f"{value:.1f}"


def section(title: str, command: str, store: Path, figures: Path, slug: str) -> str:
    rows = read_rows([store])
    table = build_table(rows)
    figure = figures / f"{slug}.png"
    plot_bars(table, figure)
    seeds = sorted({r.get("seed") for r in rows})
    parts = [f"## {title}", "", f"Command: `{command}`  ", f"Results store: `{_shown(store)}` "
             f"(seeds {seeds}, {len(rows)} rows)", "", to_markdown(table), "",
             f"![{title}](figures/{figure.name})", "", "What it shows:", ""]
    parts += [f"- {line}" for line in findings(table)]
    heldouts = sorted(store.parent.parent.glob("*/heldout_loss.md"), key=lambda p: p.parent.name)
    heldout = heldouts[-1] if heldouts else None
    if heldout is not None:
        parts += ["", f"Held-out caption loss (test split; lower is better; `{_shown(heldout)}`, from "
                  "`python experiments/heldout_loss.py experiment=...`):", "", heldout.read_text()]
    selection = sorted(store.parent.glob("selection_seed*.json"))
    if selection:
        chosen = json.loads(selection[0].read_text())
        parts += ["", f"Options selected on the val splits ({selection[0].name}, same budget per method):", ""]
        parts += [f"- {name}: `{entry['chosen']}`" for name, entry in chosen.items()]
    return "\n".join(parts) + "\n"


README_BEGIN = "<!-- results:begin (written by experiments/results_doc.py) -->"
README_END = "<!-- results:end -->"


def update_readme(readme: Path, experiment: str, command: str, store: Path) -> bool:
    """Replace the README's results block with the latest table of `experiment`."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    table = build_table(read_rows([store]))
    block = "\n".join([README_BEGIN, f"Latest `{experiment}` table (`{_shown(store)}`; regenerate it from "
                       f"the store alone with `{command} report.only=true`, run it with `{command}`):", "",
                       to_markdown(table), README_END])
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + block + rest.split(README_END, 1)[1])
    return True


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--outputs", default=str(ROOT / "outputs"))
    parser.add_argument("--multirun", default=str(ROOT / "multirun"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    outputs, doc = Path(args.outputs), Path(args.doc)
    figures = doc.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    for experiment, command in EXPERIMENTS.items():
        store = newest_store(outputs, experiment)
        if store is not None:
            sections.append(section(experiment, command, store, figures, experiment))
    for sweep_table in sorted(Path(args.multirun).glob("*/*/sweep_table/table.md")):
        sweep_dir = sweep_table.parent.parent
        overrides = sorted({line for job in sweep_dir.glob("*/.hydra/overrides.yaml")
                            for line in job.read_text().splitlines() if "experiment=" not in line})
        slug = f"sweep_{sweep_dir.parent.name}_{sweep_dir.name}"
        png = sweep_table.parent / "scores.png"
        if png.is_file():
            shutil.copy(png, figures / f"{slug}.png")
        sections.append(f"## Sweep {sweep_dir.parent.name} ({sweep_dir.name})\n\nJobs: "
                        f"{', '.join(o.strip('- ') for o in overrides)}\n\n{sweep_table.read_text()}\n"
                        + (f"\n![sweep](figures/{slug}.png)\n" if png.is_file() else ""))
    header = ["# Results", "",
              f"Generated by `python experiments/results_doc.py` on {time.strftime('%Y-%m-%d %H:%M')} from the "
              "results stores under `outputs/` and `multirun/`; no number below is typed by hand. Scores are "
              "percentages on the embedded benchmark suite (test splits only), mean ± std over seeds where "
              "there are several. Bold marks the best merged projector per column.", ""]
    if not sections:
        header.append("No results store found yet: run the commands in the README first.")
    doc.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {doc} ({len(sections)} sections)")
    for experiment in ("paper_table", "pivotmerge_vs_ties"):
        store = newest_store(outputs, experiment)
        if store is not None:
            if update_readme(Path(args.readme), experiment, EXPERIMENTS[experiment].split("   #")[0], store):
                print(f"README results block: {experiment}")
            break


if __name__ == "__main__":
    main()
