"""The report is a pure function of the results store: known rows render a known table (golden files)."""
import json
import os

import pytest
from omegaconf import OmegaConf

from eval.store import find_stores, read_rows
from eval.table import build_table
from eval.writers import MISSING, to_csv, to_latex, to_markdown, write_report
from pivotmerge.errors import ConfigError
from tests.helpers import GOLDEN
from tests.helpers.rows import known_rows


@pytest.mark.parametrize("kind,writer", [("md", to_markdown), ("csv", to_csv), ("tex", to_latex)])
def test_known_rows_render_golden_table(kind, writer):
    text = writer(build_table(known_rows()))
    golden = GOLDEN / f"report_table.{kind}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_table_semantics():
    table = build_table(known_rows())
    assert table.models == ["pivot", "expert:digits", "expert:words", "merge:average", "merge:pivotmerge"]
    assert table.benchmarks[:2] == ["pm_mc_digits", "pm_mc_words"]
    cell = table.cell("merge:pivotmerge", "pm_mc_digits")
    assert cell.mean == pytest.approx(71.0) and cell.std == pytest.approx(1.41421356, abs=1e-6) and cell.n == 2
    assert table.cell("pivot", "pm_mc_digits").mean == pytest.approx(27.0 / 2 + 27.0 / 2)  # latest row wins
    assert table.cell("merge:average", "pm_pope") is None                # missing, never 0
    assert table.cell("merge:average", "Average") is None                # average over a gap is a gap
    # normalized: per seed, mean over sources of model score / expert's mean score
    norm = table.cell("merge:pivotmerge", "Norm.")
    # the reference is the expert's mean over seeds
    ref_d, ref_w = (90 + 92) / 2, (80 + 82) / 2
    expected = [100 * (70 / ref_d + 60 / ref_w) / 2, 100 * (72 / ref_d + 62 / ref_w) / 2]
    assert norm.mean == pytest.approx(sum(expected) / 2)
    assert table.best["pm_mc_digits"] == {"merge:pivotmerge"}
    md = to_markdown(table)
    assert MISSING in md and "**71.0 (sd 1.4)**" in md
    average_row = next(line for line in md.splitlines() if line.startswith("| merge:average |"))
    assert average_row.split(" | ")[3] == MISSING and "| 0.0" not in average_row


def test_report_files_and_store_lookup(tmp_path):
    exp = tmp_path / "outputs" / "exp"
    for name, rows in (("2026-01-01_00-00-00", known_rows()[:10]), ("2026-01-02_00-00-00", known_rows())):
        store = exp / name / "results"
        store.mkdir(parents=True)
        (store / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    current = exp / "2026-01-03_00-00-00"
    stores = find_stores("latest", current)
    assert stores == [exp / "2026-01-02_00-00-00" / "results"]
    assert len(find_stores("all", current)) == 2
    assert find_stores(str(exp / "2026-01-01_00-00-00"), current) == [exp / "2026-01-01_00-00-00" / "results"]
    with pytest.raises(ConfigError, match="no results.jsonl"):
        find_stores(str(tmp_path / "nowhere"), current)
    with pytest.raises(ConfigError, match="no results store"):
        find_stores("latest", tmp_path / "x" / "y")
    paths = write_report(build_table(read_rows(stores)), tmp_path / "report")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["tex"].read_text().startswith("\\begin{tabular}") and "\\toprule" in paths["tex"].read_text()


def test_plots_draw_intervals_that_leave_out_their_point_estimate(tmp_path):
    """A percentile interval of a ratio can leave out its point estimate, and a mean over seeds can sit a
    rounding error outside the pooled interval (a 2-seed regime map stopped on `'xerr' must not contain
    negative values`): the plots draw such whiskers between their own ends instead of failing."""
    import dataclasses

    from eval.plots import plot_bars, plot_retention

    table = build_table(known_rows())
    retained = [m for m in table.models if table.retention.get(m) is not None and m != "pivot"]
    assert len(retained) >= 2
    first, second = (table.retention[m] for m in retained[:2])
    table.summaries["Retention"][retained[0]] = dataclasses.replace(first, lo=first.mean - 5,
                                                                    hi=first.mean - 1e-12)
    table.summaries["Retention"][retained[1]] = dataclasses.replace(second, lo=second.mean + 3,
                                                                    hi=second.mean + 9)
    bench = table.benchmarks[0]
    model = next(m for m in table.models if (m, bench) in table.cells)
    table.cells[(model, bench)] = dataclasses.replace(table.cells[(model, bench)], lo=1.0, hi=2.0)
    assert plot_retention(table, tmp_path / "retention.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_bars(table, tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


def test_wandb_offline_run_holds_the_table_and_says_where(tmp_path, capsys, monkeypatch):
    from pivotmerge.wandb_logging import configure_wandb_env, log_report_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({"experiment_name": "t", "seed": 0, "logger": {"wandb": {
        "enabled": True, "mode": "offline", "project": "pivotmerge", "entity": None, "group": "t",
        "dir": str(tmp_path)}}})
    configure_wandb_env(cfg)
    table = build_table(known_rows())
    paths = write_report(table, tmp_path / "report", plot=False)
    log_report_run(cfg, table, paths)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    logged = json.loads(next((runs[0] / "files" / "media" / "table").glob("results_*.table.json")).read_text())
    rows = {row[0]: dict(zip(logged["columns"], row)) for row in logged["data"]}
    assert rows["merge:pivotmerge"]["pm_mc_digits"] == pytest.approx(71.0)   # mean of seeds 0 and 1, in %
    assert rows["merge:average"]["pm_pope"] is None                          # missing stays missing, not 0
    out = capsys.readouterr().out
    assert "W&B:" in out and "wandb sync" in out


def test_units_are_named_in_the_store_and_the_csv():
    from eval.store import results_rows

    lmms = {"results": {"pm_mc_digits": {"alias": "pm_mc_digits", "acc,none": 0.5, "acc_stderr,none": 0.1},
                        "pm_mme": {"mme_score,none": 150.0, "acc,none": 0.6}}}
    meta = {"pm_mc_digits": {"primary": "acc"}, "pm_mme": {"primary": "mme_score"}}
    rows = results_rows(lmms, model="pivot", run="r", seed=0, experiment="t", task_meta=meta)
    assert {(r["benchmark"], r["metric"]): r["unit"] for r in rows} == {
        ("pm_mc_digits", "acc"): "fraction", ("pm_mme", "mme_score"): "score", ("pm_mme", "acc"): "fraction"}
    header = to_csv(build_table(known_rows())).splitlines()[0].split(",")
    assert {"pm_mc_digits_pct", "pm_pope_pct_std", "pm_mme_score", "Average_pct", "Norm._pct"} <= set(header)
