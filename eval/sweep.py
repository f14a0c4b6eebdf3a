"""A Hydra callback that ends a multirun sweep with one table over all of its jobs.

Each job writes its own results store; merged rows are renamed by the job's overrides (e.g.
`merge:pivotmerge [rank_ratio=0.25]`), rows that do not depend on the swept value (pivot, experts) are
kept once per (model, benchmark, metric, seed). Configure with `hydra.callbacks.sweep_table._target_`.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from pivotmerge.model_id import kind_of

_SKIP = ("experiment=", "hydra/launcher=")


def job_label(overrides: list[str]) -> str:
    kept = []
    for override in overrides:
        if override.startswith(_SKIP) or "=" not in override:
            continue
        key, value = override.split("=", 1)
        kept.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(kept)


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """Rows of every job's store; swept rows are labelled by the overrides that differ between jobs."""
    from eval.store import read_rows

    jobs = []
    for job in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir()), key=lambda p: p.name):
        store = job / "results"
        if not (store / "results.jsonl").is_file():
            continue
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = (yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None) or []
        jobs.append((store, overrides))
    # An override every job shares (a fixed lam, a task list) names no row: the sweep's command shows it.
    common = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    rows, seen = [], set()
    for store, overrides in jobs:
        varying = [o for o in overrides if o not in common]
        label = job_label(varying)
        for row in read_rows([store]):
            kind = kind_of(row["model"])
            if kind == "merge" and label:
                row = {**row, "model": f"{row['model']} [{label}]"}
            elif kind in ("pivot", "expert", "joint") and label and any(
                    o.split("=")[0] in ("scenario", "scenario.pivot.init", "seed") for o in varying):
                row = {**row, "model": f"{row['model']} [{label}]"}
            key = (row["model"], row["benchmark"], row["metric"], row.get("seed"))
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
    return rows


class SweepTable(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from eval.table import build_table
        from eval.writers import to_markdown, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir)
        if not rows:
            print(f"[sweep] no results stores under {sweep_dir}: nothing to tabulate")
            return
        table = build_table(rows)
        paths = write_report(table, sweep_dir / "sweep_table")
        print("\n" + to_markdown(table))
        print(f"[sweep] table over {len(set(r['model'] for r in rows))} rows: " +
              ", ".join(str(p) for p in paths.values()))
