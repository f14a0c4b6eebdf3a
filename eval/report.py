"""Stage 7 (report): the paper table, plots, report.html and W&B, regenerated from the results store alone.

Where each part lives: the table as data (`build_table`: rows, columns, intervals, retention, paired tests)
in eval/table.py; its text forms in eval/writers.py; the plots in eval/plots.py; report.html in
eval/html_report.py; reading the stores in eval/store.py; the W&B report run in pivotmerge/wandb_logging.py.

`python run.py experiment=... report.only=true` rebuilds everything from an existing store
(`eval.report.from`: latest | all | <path>).
"""
from __future__ import annotations

import time
from pathlib import Path

from eval.store import RESULTS_DIR, find_stores, read_rows
from eval.table import build_table
from eval.writers import to_markdown, write_report
from pivotmerge.errors import ConfigError
from pivotmerge.pipeline.stage import Stage
from pivotmerge.wandb_logging import enabled, log_report_run


def run(ctx) -> None:
    from eval.html_report import write_html_report

    cfg = ctx.cfg
    started = time.perf_counter()
    output_dir = Path(ctx.output_dir)
    report_cfg = cfg.eval.report
    stores = find_stores(report_cfg["from"], output_dir) if cfg.report.only else [output_dir / RESULTS_DIR]
    rows = read_rows(stores)
    if not rows:
        raise ConfigError(f"no results rows in {[str(s) for s in stores]}: run the eval stage first")
    table = build_table(rows, metric=str(report_cfg.table_metric))
    paths = write_report(table, output_dir / "report", plot=bool(report_cfg.plot))
    paths["html"] = write_html_report(table, output_dir, stores, ctx.log.rows)
    print("\n" + to_markdown(table), flush=True)
    print("Report from " + ", ".join(str(s) for s in stores) + ":\n" +
          "\n".join(f"  {kind:>3}: {path}" for kind, path in paths.items()), flush=True)
    ctx.report = {"table": table, "paths": paths, "stores": stores}
    ctx.log.add("report", f"table ({len(table.models)} models x {len(table.benchmarks)} benchmarks)", None,
                time.perf_counter() - started, str(paths["md"]))


def log_lineage(ctx, entries) -> None:
    """The report's W&B run: the table, its files and the results stores it was built from."""
    if enabled(ctx.cfg):
        log_report_run(ctx.cfg, **ctx.report)


STAGE = Stage("report", run, produces={"report": None}, per_seed=False, lineage=log_lineage)
