"""Write docs/results.md from the results stores alone: no number in it is typed by hand.

    python experiments/results_doc.py            # newest run of each experiment under outputs/ or docs/stores/
    python experiments/results_doc.py --outputs outputs --doc docs/results.md

outputs/ is not in git and a machine does not outlive a session; `experiments/archive_run.py` copies the stores
of a run into docs/stores/ (in git), so the doc can be regenerated from a clean clone. The newest run (by its
timestamped folder name) of each experiment wins, wherever it lies.

For each experiment it finds (pivotmerge_vs_ties, paper_table, ablation_components, and multirun sweeps
under multirun/), it renders the table with `eval.report`, copies the bar chart into docs/figures/, and
states what the numbers show: the best merged method, where PivotMerge ranks, and its gap to the joint
projector and to each expert - including where it loses.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.plots import plot_bars  # noqa: E402
from eval.regime_map import rivals  # noqa: E402
from eval.stage2 import section as stage2_section  # noqa: E402
from eval.store import read_rows  # noqa: E402
from eval.table import build_table  # noqa: E402
from eval.writers import to_markdown  # noqa: E402
from experiments.archive_run import STORES  # noqa: E402
from pivotmerge.merging.registry import conf_dir  # noqa: E402
from pivotmerge.pipeline.regimes import REGIMES_DIR  # noqa: E402


def make_run_experiment() -> str | None:
    """The experiment `make run` runs, read from the Makefile's run target (not a second copy of it)."""
    lines = (ROOT / "Makefile").read_text().split("\nrun:", 1)[-1].splitlines()
    for line in lines[1:]:
        if not line.startswith("\t"):
            break
        for word in line.split():
            if word.startswith("experiment="):
                return word.split("=", 1)[1]
    return None


def experiments() -> dict[str, str]:
    """experiment name -> the command that runs it, for every config in conf/experiment (make run's first)."""
    make_run = make_run_experiment()
    names = sorted(path.stem for path in (ROOT / "conf" / "experiment").glob("*.yaml"))
    names.sort(key=lambda name: name != make_run)
    return {name: f"python run.py experiment={name}" + ("   # = make run" if name == make_run else "")
            for name in names}


def newest_store(outputs: Path | list[Path], experiment: str) -> Path | None:
    stores = sorted((p for root in _roots(outputs) for p in (root / experiment).glob("*/results/results.jsonl")),
                    key=lambda p: p.parent.parent.name)
    return stores[-1].parent if stores else None


def findings(table) -> list[str]:
    """Plain statements computed from the table (cells are already in display units: % or MME points)."""
    merges = [m for m in table.models if m.startswith("merge:") and table.average.get(m) is not None]
    if not merges:
        return ["No merged projector was evaluated."]
    avg = {m: table.average[m].mean for m in merges}
    ranked = sorted(merges, key=lambda m: -avg[m])
    informative = [b for b in table.benchmarks if b not in flat_columns(table, merges)]
    lines = [f"Best merged projector on the average: **{ranked[0]}** ({avg[ranked[0]]:.1f})."]
    normalized = {m: table.normalized[m].mean for m in merges if table.normalized.get(m) is not None}
    if normalized:
        best_norm = max(normalized, key=normalized.get)
        lines.append(f"Best merged projector on the normalized in-source score: **{best_norm}** "
                     f"({normalized[best_norm]:.1f}% of the experts' own-source accuracy).")
    for name in [m for m in merges if m.split(":", 1)[1].split(" ")[0] == "pivotmerge"]:
        others = [m for m in ranked if m != name]
        text = f"{name} ranks {ranked.index(name) + 1} of {len(ranked)} merged projectors ({avg[name]:.1f})"
        if others:
            delta = avg[name] - avg[others[0]]
            text += f", {abs(delta):.1f} points {'ahead of' if delta > 0 else 'behind'} the best other ({others[0]})"
        ties = [m for m in merges if m.split(":", 1)[1] == "ties"]
        if ties:
            text += f"; vs TIES: {avg[name] - avg[ties[0]]:+.1f} points"
        lines.append(text + ".")
        best_on = [b for b in informative if table.cell(name, b) is not None and all(
            table.cell(o, b) is None or table.cell(name, b).mean >= table.cell(o, b).mean for o in merges)]
        lines.append(f"It is the best (or tied best) merge on {len(best_on)} of {len(informative)} benchmarks "
                     "on which the merges differ" + (f": {', '.join(best_on)}." if best_on else "."))
    lines += identical_rows(table, merges)
    if "joint" in table.models and table.average.get("joint") is not None:
        gap = avg[ranked[0]] - table.average["joint"].mean
        lines.append(f"The joint projector (trained on the union, same budget) averages "
                     f"{table.average['joint'].mean:.1f}; the best merge is {gap:+.1f} points from it.")
    lines += signal_checks(table)
    if single_seed(table):
        lines.append("One seed: with a few hundred items per benchmark, differences of a few points between "
                     "merges are within sampling noise; only several seeds (experiment=paper_table) can separate them.")
    pivot = table.average.get("pivot")
    if pivot is not None:
        above = [m for m in merges if avg[m] > pivot.mean]
        # a higher mean inside the intervals is noise, not a win: count only averages whose interval clears
        # the pivot's
        clear = [m for m in above if None not in (table.average[m].lo, pivot.hi) and table.average[m].lo > pivot.hi]
        lines.append(f"The pivot averages {pivot.mean:.1f}; {len(above)} of {len(merges)} merges average higher, "
                     f"{len(clear)} beyond both 95 % intervals" + (f" ({', '.join(clear)})." if clear else "."))
    return lines


def identical_rows(table, merges) -> list[str]:
    """Merged rows that score exactly alike everywhere (e.g. an ablation that reduces to a baseline)."""
    lines, seen = [], set()
    for i, first in enumerate(merges):
        same = [m for m in merges[i + 1:] if m not in seen and all(
            (table.cell(first, b) is None) == (table.cell(m, b) is None)
            and (table.cell(first, b) is None or table.cell(first, b).mean == table.cell(m, b).mean)
            for b in table.benchmarks)]
        if same:
            seen.update(same)
            lines.append(f"{first} and {', '.join(same)} score identically on every benchmark.")
    return lines


def flat_columns(table, models=None) -> list[str]:
    """Benchmarks on which the given rows (default: all) cannot be told apart."""
    models = table.models if models is None else models
    return [b for b in table.benchmarks
            if len({round(c.mean, 6) for m in models if (c := table.cell(m, b)) is not None}) <= 1]


def single_seed(table) -> bool:
    return all(c.std is None or c.n == 1 for c in table.average.values())


def signal_checks(table) -> list[str]:
    """Where the table cannot tell methods apart, say so instead of letting a column look meaningful."""
    lines = []
    flat = flat_columns(table)
    if flat:
        lines.append(f"No signal: every projector scores the same on {', '.join(flat)}, so "
                     f"{'these columns' if len(flat) > 1 else 'this column'} cannot rank methods at this scale "
                     "(stage-1 alignment on captions only does not teach answering).")
    for bench in table.benchmarks:
        source = bench.removeprefix("pm_mc_") if bench.startswith("pm_mc_") else None
        expert = f"expert:{source}" if source else None
        if expert is None or table.cell(expert, bench) is None:
            continue
        others = [m for m in table.models if m != expert and table.cell(m, bench) is not None]
        best = max(others, key=lambda m: table.cell(m, bench).mean) if others else None
        if best is not None and table.cell(best, bench).mean >= table.cell(expert, bench).mean:
            mine, theirs = table.cell(expert, bench).mean, table.cell(best, bench).mean
            lines.append(f"{expert} does not lead on its own source ({bench}: {mine:.1f}, "
                         f"{'tied with' if theirs == mine else 'below'} {best} {theirs:.1f}).")
    return lines


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def selection_summary(entry: dict) -> str:
    """The searched options' chosen values (those that differ between candidates), flagging grid edges."""
    candidates = [c["options"] for c in entry.get("candidates", [])]
    searched = [k for k in entry["chosen"] if len({json.dumps(c.get(k)) for c in candidates}) > 1]
    if not searched:
        return "(one candidate: nothing searched)"
    shown = []
    for key in searched:
        value = entry["chosen"][key]
        tried = sorted({c[key] for c in candidates if isinstance(c.get(key), (int, float))})
        edge = isinstance(value, (int, float)) and len(tried) > 1 and value in (tried[0], tried[-1])
        shown.append(f"{key}={value}" + (" (edge of the grid)" if edge else ""))
    return "`" + ", ".join(shown) + "`"


def configured_seeds(experiment: str) -> list[int]:
    """The seeds conf/experiment/<experiment>.yaml runs (config.yaml's single seed when it names none)."""
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    seeds = OmegaConf.load(path).get("seeds") if path.is_file() else None
    return [int(s) for s in seeds] if seeds else [int(OmegaConf.load(ROOT / "conf" / "config.yaml").seed)]


def seeds_run_and_missing(experiment: str, rows: list[dict]) -> tuple[list[int], list[int]]:
    """The seeds a results store holds, and those its experiment runs that the store lacks."""
    seeds = sorted({r.get("seed") for r in rows})
    return seeds, [seed for seed in configured_seeds(experiment) if seed not in seeds]


READING_KEYS = ("sdf_space", "consensus", "filter", "filter_threshold", "alm", "weight_range")
LOSS_KIND = "loss_kind"   # calibration.loss_kind: the loss PivotMerge's layer search reads
# calibration keys of the reading, with what a run from before the key was recorded used
CALIBRATION_READING = {LOSS_KIND: "kway", "guard_se": 0.0}


def pivotmerge_reading(resolved) -> list[str]:
    """Which PivotMerge reading a run's rows are, and whether it is still the default (conf/merge/pivotmerge.yaml,
    and the layer search's loss, conf/config.yaml's calibration.loss_kind): the default changes between runs, and
    a section from an older run must say so."""
    from omegaconf import OmegaConf

    pm = (resolved.get("merge") or {}).get("pivotmerge")
    if pm is None:
        return []
    ran = {k: OmegaConf.to_container(pm, resolve=True).get(k) for k in READING_KEYS}
    for key, before in CALIBRATION_READING.items():
        ran[key] = OmegaConf.select(resolved, f"calibration.{key}", default=before)
    return [reading_line(ran) + ".", ""]


def todays_reading() -> dict:
    from omegaconf import OmegaConf

    default = OmegaConf.to_container(OmegaConf.load(conf_dir() / "pivotmerge.yaml"), resolve=True)
    today = {k: default.get(k) for k in READING_KEYS}
    calibration = OmegaConf.load(ROOT / "conf" / "config.yaml").calibration
    today.update({key: calibration[key] for key in CALIBRATION_READING})
    return today


def reading_line(ran: dict) -> str:
    """"PivotMerge in this run: k=v, ..." and, where `ran` is not today's default, what changed since."""
    today = todays_reading()
    line = f"PivotMerge in this run: {', '.join(f'{k}={v}' for k, v in ran.items())}"
    changed = ", ".join(f"{k}={today[k]}" for k in today if str(ran.get(k)) != str(today[k]))
    if changed:
        line += f" - **not today's default** ({changed}): its PivotMerge rows predate it; rerun the command"
    return line


def reflagged_reading(text: str) -> str:
    """A kept section (store not on this machine) re-checked against today's default: its recorded reading line
    is parsed back and flagged if the default moved since it was written."""
    marker = "PivotMerge in this run: "
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.startswith(marker) and "not recorded" not in line:
            recorded = line[len(marker):].split(" - **not today's default**")[0].rstrip(".")
            items = re.split(r", (?=\w+=)", recorded)   # values may hold ", " ([0.0, 1.0])
            pairs = dict(item.split("=", 1) for item in items if "=" in item)
            for key, before in CALIBRATION_READING.items():
                pairs.setdefault(key, before)
            lines[number] = reading_line(pairs) + "."
    return "\n".join(lines)


UNKNOWN_READING = ("PivotMerge in this run: not recorded (its store is not on this machine); its PivotMerge "
                   "rows may predate today's default reading (conf/merge/pivotmerge.yaml) - rerun the command.")


def unknown_reading(text: str) -> str:
    """A kept section (store not on this machine) that never named its PivotMerge reading says so once."""
    if "PivotMerge in this run:" in text or "merge:pivotmerge" not in text:
        return text
    head, _, rest = text.partition("\n\n")
    first, _, body = rest.partition("\n\n")
    return f"{head}\n\n{first}\n\n{UNKNOWN_READING}\n\n{body}"


def section(title: str, command: str, store: Path, figures: Path, slug: str) -> str:
    rows = read_rows([store])
    table = build_table(rows)
    figure = figures / f"{slug}.png"
    plot_bars(table, figure)
    seeds, missing = seeds_run_and_missing(title, rows)
    parts = [f"## {title}", "", f"Command: `{command}`  ", f"Results store: `{_shown(store)}` "
             f"(seeds {seeds}, {len(rows)} rows)", "", *pivotmerge_reading(run_config(store.parent)),
             to_markdown(table), "", f"![{title}](figures/{figure.name})", "", "What it shows:", ""]
    if missing:
        parts.append(f"- **Partial run**: this store holds seeds {seeds} of the {len(seeds) + len(missing)} the "
                     f"experiment runs (seeds {missing} not yet run)"
                     + ("; every ± above is over the items of that one seed." if len(seeds) == 1 else "."))
    parts += [f"- {line}" for line in findings(table)]
    parts += stage2_section(rows, figures, slug)   # experiment=stage2: the ranking before and after tuning
    heldouts = sorted(store.parent.parent.glob("*/heldout_loss.md"), key=lambda p: p.parent.name)
    heldout = heldouts[-1] if heldouts else None
    if heldout is not None:
        parts += ["", f"Held-out caption loss (test split; lower is better; `{_shown(heldout)}`, from "
                  "`python experiments/heldout_loss.py experiment=...`):", "", heldout.read_text()]
    selection = sorted(store.parent.glob("selection_seed*.json"))
    if selection:
        chosen = {path.stem.removeprefix("selection_"): json.loads(path.read_text()) for path in selection}
        parts += ["", "Options selected on the val splits (lowest val caption loss among the same number of "
                  f"candidates per method; {', '.join(p.name for p in selection)}):", ""]
        methods = list(dict.fromkeys(name for per_seed in chosen.values() for name in per_seed))
        for name in methods:
            picks = [f"{seed} {selection_summary(per_seed[name])}" for seed, per_seed in chosen.items()
                     if name in per_seed]
            parts.append(f"- {name}: " + "; ".join(picks))
    return "\n".join(parts) + "\n"


def sweep_overrides(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """(swept, fixed) command-line overrides of a multirun sweep, read from its multirun.yaml."""
    import yaml

    config = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    task = list(config["hydra"]["overrides"]["task"])
    swept = [o for o in task if _is_sweep(o.split("=", 1)[-1])]
    return swept, [o for o in task if o not in swept]


def _is_sweep(value: str) -> bool:
    """Whether Hydra sweeps over this override value (`a,b` yes; the list `[a,b]` no)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([f"x={value}"])[0].is_sweep_override()


def sweep_slug(swept: str) -> str:
    return "sweep_" + "".join(c if c.isalnum() else "_" for c in swept).strip("_")


def newest_sweeps(multirun: Path) -> dict[str, Path]:
    """The newest finished sweep (one with a sweep table) per swept parameter, in the order they ran."""
    found: dict[str, Path] = {}
    for table in sorted(multirun.glob("*/*/sweep_table/table.md"), key=lambda p: p.parent.parent.name):
        sweep_dir = table.parent.parent
        try:
            swept, _ = sweep_overrides(sweep_dir)
        except (OSError, KeyError, TypeError):
            continue
        name = " x ".join(o.split("=", 1)[0] for o in swept) or sweep_dir.name
        found.pop(name, None)
        found[name] = sweep_dir
    return found


def sweep_findings(table, swept: str) -> list[str]:
    """The sweep's spread: best and worst setting on the average and the normalized score."""
    merges = [m for m in table.models if m.startswith("merge:") and table.average.get(m) is not None]
    if len(merges) < 2:
        labelled = [m for m in table.models if m.startswith("merge:")]
        if len(labelled) >= 2:
            return ["The swept settings are scored on different benchmarks (each scenario has its own sources), "
                    "so there is no common average: compare each merge with the pivot and experts of its own "
                    "setting, row by row."]
        return ["Fewer than two swept settings were evaluated."]
    lines = []
    for label, scores in (("average", table.average), ("normalized score", table.normalized)):
        values = {m: scores[m].mean for m in merges if scores.get(m) is not None}
        if len(values) < 2:
            continue
        best, worst = max(values, key=values.get), min(values, key=values.get)
        lines.append(f"On the {label}, {best} is best ({values[best]:.1f}) and {worst} worst "
                     f"({values[worst]:.1f}): a spread of {values[best] - values[worst]:.1f} points.")
    pivot = table.average.get("pivot")
    if pivot is not None:
        beat = sum(table.average[m].mean > pivot.mean for m in merges)
        lines.append(f"{beat} of {len(merges)} settings average above the pivot ({pivot.mean:.1f}).")
    lines += identical_rows(table, merges)
    if single_seed(table):
        lines.append(f"One seed per setting: a spread of a point or two across {swept} is within sampling noise.")
    return lines


def sweep_section(swept: str, sweep_dir: Path, figures: Path) -> str:
    from eval.sweep import sweep_rows

    swept_overrides, fixed = sweep_overrides(sweep_dir)
    table = build_table(sweep_rows(sweep_dir))
    slug = sweep_slug(swept)
    png = sweep_dir / "sweep_table" / "scores.png"
    if png.is_file():
        shutil.copy(png, figures / f"{slug}.png")
    command = "python run.py -m " + " ".join(shlex.quote(o) for o in fixed + swept_overrides)
    parts = [f"## Sweep: {swept}", "", f"Command: `{command}`  ",
             f"Sweep folder: `{_shown(sweep_dir)}` ({len(list(sweep_dir.glob('[0-9]*')))} jobs; table and plot "
             "written by the sweep's own callback from the jobs' results stores)", "", to_markdown(table), ""]
    if png.is_file():
        parts += [f"![{swept}](figures/{slug}.png)", ""]
    parts += ["What it shows:", ""] + [f"- {line}" for line in sweep_findings(table, swept)]
    return "\n".join(parts) + "\n"


README_BEGIN = "<!-- results:begin (written by experiments/results_doc.py) -->"
README_END = "<!-- results:end -->"


def update_readme(readme: Path, experiment: str, command: str, store: Path) -> bool:
    """Replace the README's results block with the latest table of `experiment`."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    rows = read_rows([store])
    seeds, missing = seeds_run_and_missing(experiment, rows)
    partial = f" **Partial: seeds {seeds} only, {missing} not yet run.**" if missing else ""
    block = "\n".join([README_BEGIN, f"Latest `{experiment}` table (`{_shown(store)}`; regenerate it from "
                       f"the store alone with `{command} report.only=true`, run it with `{command}`).{partial}", "",
                       *pivotmerge_reading(run_config(store.parent)), to_markdown(build_table(rows)), README_END])
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + block + rest.split(README_END, 1)[1])
    return True


def mark_readme_reading_unknown(readme: Path) -> bool:
    """The README's results block, when no store on this machine can regenerate it, says once that its
    PivotMerge reading is not recorded (as a kept section of docs/results.md does)."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    block, tail = rest.split(README_END, 1)
    intro, _, table = block.partition("\n\n")
    if "PivotMerge in this run:" in block or "merge:pivotmerge" not in block:
        return False
    readme.write_text(head + README_BEGIN + intro + "\n\n" + UNKNOWN_READING + "\n\n" + table + README_END + tail)
    return True


def old_sections(doc: Path) -> dict[str, str]:
    """The sections of the current doc by title: kept for experiments whose store is not on this machine
    (outputs/ is not in git), so that regenerating one section never deletes the others."""
    if not doc.is_file():
        return {}
    parts = doc.read_text().split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip("\n") + "\n" for part in parts}


def newest_regime_run(outputs: Path | list[Path], experiment: str) -> Path | None:
    """The newest run folder of `experiment` whose regimes hold results."""
    runs = sorted({p.parents[3] for root in _roots(outputs)
                   for p in (root / experiment).glob(f"*/{REGIMES_DIR}/*/results/results.jsonl")},
                  key=lambda p: p.name)
    return runs[-1] if runs else None


def _roots(outputs: Path | list[Path]) -> list[Path]:
    return [Path(outputs)] if isinstance(outputs, (str, Path)) else [Path(p) for p in outputs]


def regime_findings(regime_map) -> list[str]:
    """What the map shows, per regime: the best merges, PivotMerge's standing and whether the paper's ordering
    (PivotMerge above Task Arithmetic, TIES and DARE beyond the paired 95 % intervals) holds."""
    out = []
    paper = [f"merge:{m}" for m in ("task_arithmetic", "ties", "dare_ties")]
    for regime in regime_map.regimes:
        merges = rivals(regime_map, regime)
        if not merges:
            continue
        top = max(merges, key=lambda m: regime_map.accuracy[(m, regime)].mean)
        cell = regime_map.accuracy[(top, regime)]
        line = f"`{regime}`: best merge {top} ({cell.mean:.1f} % mean k-way"
        joint = regime_map.of_joint.get((top, regime))
        line += f", {joint.mean:.0f} % of joint)" if joint is not None else ")"
        standing = regime_map.standing.get(regime)
        if standing is not None:
            line += (f"; PivotMerge ranks {standing.rank} of {standing.merges}"
                     + (" and is tied-best (no merge better beyond the paired 95 % interval)" if standing.tied_best
                        else f", below {', '.join(standing.better)} beyond the paired interval"))
            if standing.vs_pivot is not None:
                d, lo, hi = standing.vs_pivot
                verdict = "above" if lo > 0 else "below" if hi < 0 else "level with"
                line += f"; {verdict} its pivot ({d:+.1f} points, [{lo:+.1f}, {hi:+.1f}])"
            beaten = [m for m in paper if m in standing.worse]
            line += ("; the paper's ordering (PivotMerge > TA, TIES, DARE) holds" if len(beaten) == len(paper)
                     else f"; the paper's ordering does not hold here (beats {len(beaten)} of TA/TIES/DARE "
                     "beyond the interval)")
        out.append(line)
    return out


def regime_section(run_dir: Path, figures: Path, command: str) -> str:

    from eval.regime_map import plot_heatmap
    from eval.regime_map import to_markdown as map_markdown

    resolved = run_config(run_dir)
    names = list(resolved.get("regimes") or {}) or sorted(p.name for p in (run_dir / REGIMES_DIR).iterdir())
    regime_map = regime_map_of(run_dir, names)
    figure = plot_heatmap(regime_map, figures / "regime_map.png")
    missing = [n for n in names if n not in regime_map.regimes]
    parts = ["## Where each method works (regime_map)", "", f"Command: `{command}`  ",
             f"Run folder: `{_shown(run_dir)}` ({len(regime_map.regimes)} of {len(names)} regimes with results"
             + (f"; not yet run: {', '.join(missing)}" if missing else "") + ")", "", map_markdown(regime_map)]
    if figure is not None:
        parts += [f"![regime map](figures/{figure.name})", ""]
    parts += pivotmerge_reading(resolved)
    parts += ["What it shows:", ""] + [f"- {line}" for line in regime_findings(regime_map)]
    return "\n".join(parts) + "\n"


REGIMES_BEGIN = "<!-- regimes:begin (written by experiments/results_doc.py) -->"
REGIMES_END = "<!-- regimes:end -->"


def run_config(run_dir: Path):
    """The config the run composed (regimes, notes, variants, options); empty when the folder has none."""
    from omegaconf import OmegaConf

    config = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.load(config) if config.is_file() else OmegaConf.create({})


def regime_map_of(run_dir: Path, names: list[str]):
    """The regime map of a run folder from its stores, with the notes and ablations of the config it ran."""
    from omegaconf import OmegaConf

    from pivotmerge.pipeline.regimes import load_regime_map

    resolved = run_config(run_dir)

    def plain(key):
        return OmegaConf.to_container(resolved.get(key) or OmegaConf.create({}), resolve=True)

    return load_regime_map(run_dir, names, plain("regime_notes"), plain("merge_variants"))


def update_regime_block(readme: Path, run_dir: Path) -> bool:
    """Replace the README's regime block with the newest regime map (its markdown, from the stores)."""
    from eval.regime_map import to_markdown as map_markdown

    text = readme.read_text()
    if REGIMES_BEGIN not in text or REGIMES_END not in text:
        return False
    names = sorted(p.name for p in (run_dir / REGIMES_DIR).iterdir()
                   if (p / "results" / "results.jsonl").is_file())
    regime_map = regime_map_of(run_dir, names)
    intro = (f"Latest `regime_map` (`{_shown(run_dir)}`; `python run.py experiment=regime_map`, its section in "
             "[docs/results.md](docs/results.md)).")
    block = "\n".join([REGIMES_BEGIN, intro, "", map_markdown(regime_map), REGIMES_END])
    head, rest = text.split(REGIMES_BEGIN, 1)
    readme.write_text(head + block + rest.split(REGIMES_END, 1)[1])
    return True


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--outputs", action="append",
                        help="a folder of run folders by experiment (repeatable; default: outputs/ and docs/stores/)")
    parser.add_argument("--multirun", default=str(ROOT / "multirun"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    outputs = [Path(p) for p in (args.outputs or [ROOT / "outputs", STORES])]
    doc = Path(args.doc)
    figures = doc.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    kept = old_sections(doc)
    commands = experiments()
    for experiment, command in commands.items():
        store = newest_store(outputs, experiment)
        regimes = newest_regime_run(outputs, experiment)
        if store is not None:
            sections.append(section(experiment, command, store, figures, experiment))
        elif regimes is not None:
            sections.append(regime_section(regimes, figures, command))
    sweeps = newest_sweeps(Path(args.multirun))
    for stale in figures.glob("sweep_*.png"):
        if stale.stem not in {sweep_slug(swept) for swept in sweeps}:
            stale.unlink()
    for swept, sweep_dir in sweeps.items():
        sections.append(sweep_section(swept, sweep_dir, figures))
    titles = {text.split("\n", 1)[0][3:].strip() for text in sections}
    sections += [reflagged_reading(unknown_reading(text))   # stores elsewhere
                 for title, text in kept.items() if title not in titles]
    header = ["# Results", "",
              f"Generated by `python experiments/results_doc.py` on {time.strftime('%Y-%m-%d %H:%M')} from the "
              "results stores under `outputs/`, `docs/stores/` and `multirun/`; no number below is typed by hand. "
              "Scores are percentages on the embedded benchmark suite (test splits only), mean ± std over seeds where "
              "there are several. Bold marks the best merged projector per column.", ""]
    if not sections:
        header.append("No results store found yet: run the commands in the README first.")
    doc.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {doc} ({len(sections)} sections)")
    regimes = newest_regime_run(outputs, "regime_map")
    if regimes is not None and update_regime_block(Path(args.readme), regimes):
        print("README regime block: regime_map")
    written = False
    for experiment in ("paper_table", "pivotmerge_vs_ties"):
        store = newest_store(outputs, experiment)
        if store is not None and not written:
            written = update_readme(Path(args.readme), experiment, commands[experiment].split("   #")[0], store)
            if written:
                print(f"README results block: {experiment}")
    if not written and mark_readme_reading_unknown(Path(args.readme)):
        print("README results block: kept, its PivotMerge reading marked as not recorded")
    readme = Path(args.readme)
    if not written and readme.is_file() and reflagged_reading(readme.read_text()) != readme.read_text():
        readme.write_text(reflagged_reading(readme.read_text()))
        print("README results block: kept, its PivotMerge reading flagged against today's default")


if __name__ == "__main__":
    main()
