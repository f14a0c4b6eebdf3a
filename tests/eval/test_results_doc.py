"""docs/results.md and the README's results block are generated from results stores alone."""
import json

import pytest

from experiments.results_doc import README_BEGIN, README_END, main
from tests.helpers.rows import known_rows


def _store(outputs, experiment, run, rows):
    folder = outputs / experiment / run / "results"
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_doc_and_readme_come_from_the_newest_store(tmp_path):
    outputs = tmp_path / "outputs"
    old = [dict(r, value=0.0) for r in known_rows()]
    _store(outputs, "paper_table", "2026-01-01_00-00-00", old)
    _store(outputs, "paper_table", "2026-01-02_00-00-00", known_rows())
    (outputs / "paper_table" / "2026-01-01_00-00-00" / "heldout_loss.md").write_text("| model | x |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{README_BEGIN}\nstale\n{README_END}\n\ntail\n")
    main(["--outputs", str(outputs), "--multirun", str(tmp_path / "none"),
          "--doc", str(tmp_path / "docs" / "results.md"), "--readme", str(readme)])
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "## paper_table" in doc and "2026-01-02_00-00-00" in doc
    assert "| merge:pivotmerge | **71.0 (sd 1.4)** |" in doc   # seeds 0/1 of the newest store, not zeros
    assert "merge:pivotmerge ranks 1 of 1" in doc and "| model | x |" in doc
    assert (tmp_path / "docs" / "figures" / "paper_table.png").stat().st_size > 0
    text = readme.read_text()
    assert "stale" not in text and text.endswith("\n\ntail\n") and "**71.0 (sd 1.4)**" in text


def test_signal_checks_flag_flat_columns_and_experts_that_do_not_lead():
    from eval.table import build_table
    from experiments.results_doc import signal_checks
    from tests.helpers.rows import result_row

    rows = []
    for model, digits, words, open_ in (("pivot", 0.25, 0.30, 0.0), ("expert:digits", 0.9, 0.2, 0.0),
                                        ("expert:words", 0.2, 0.25, 0.0), ("merge:ties", 0.5, 0.4, 0.0)):
        rows += [result_row(model, "pm_mc_digits", digits), result_row(model, "pm_mc_words", words),
                 result_row(model, "pm_open_words", open_, metric="exact_match")]
    lines = signal_checks(build_table(rows))
    assert any(line.startswith("No signal") and "pm_open_words" in line and "pm_mc" not in line for line in lines)
    assert any("expert:words does not lead" in line and "below merge:ties 40.0" in line for line in lines)
    assert not any("expert:digits does not lead" in line for line in lines)


def test_findings_state_gaps_in_table_units_and_spot_identical_rows():
    from eval.table import build_table
    from experiments.results_doc import findings
    from tests.helpers.rows import result_row

    rows = []
    for model, digits, words in (("pivot", 0.25, 0.25), ("expert:digits", 0.60, 0.20), ("expert:words", 0.20, 0.50),
                                 ("merge:ties", 0.40, 0.30), ("merge:pivotmerge", 0.33, 0.32),
                                 ("merge:pm_all_off", 0.40, 0.30)):
        rows += [result_row(model, "pm_mc_digits", digits), result_row(model, "pm_mc_words", words)]
    lines = findings(build_table(rows))
    # averages 35.0 (ties, pm_all_off) and 32.5 (pivotmerge): gaps in points of the table, not x100
    assert any("merge:pivotmerge ranks 3 of 3" in line and "2.5 points behind" in line
               and "vs TIES: -2.5 points" in line for line in lines), lines
    assert any(line == "merge:ties and merge:pm_all_off score identically on every benchmark." for line in lines)
    assert any("best (or tied best) merge on 1 of 2 benchmarks" in line and "pm_mc_words" in line for line in lines)
    assert any(line.startswith("One seed:") for line in lines)


def test_sweep_sections_name_the_swept_option_and_keep_only_the_newest_sweep(tmp_path):
    import yaml

    from tests.helpers.rows import sweep_job, sweep_row

    def sweep(run, values, scores):
        folder = tmp_path / "multirun" / "ablation" / run
        task = ["experiment=ablation", "merge.pivotmerge.lam=0.3", f"merge.pivotmerge.rank_ratio={','.join(values)}"]
        for index, (value, score) in enumerate(zip(values, scores)):
            sweep_job(folder / str(index), ["experiment=ablation", "merge.pivotmerge.lam=0.3",
                                            f"merge.pivotmerge.rank_ratio={value}"],
                      [sweep_row("pivot", 0.3), sweep_row("merge:pivotmerge", score)])
        (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
        (folder / "sweep_table").mkdir()
        (folder / "sweep_table" / "table.md").write_text("callback table\n")

    sweep("2026-01-01_00-00-00", ["0.1", "0.9"], [0.0, 0.0])
    sweep("2026-01-02_00-00-00", ["0.25", "0.75"], [0.5, 0.2])
    doc = tmp_path / "docs" / "results.md"
    main(["--outputs", str(tmp_path / "none"), "--multirun", str(tmp_path / "multirun"), "--doc", str(doc),
          "--readme", str(tmp_path / "no_readme.md")])
    text = doc.read_text()
    assert text.count("## Sweep: merge.pivotmerge.rank_ratio") == 1 and "2026-01-02_00-00-00" in text
    assert ("`python run.py -m experiment=ablation merge.pivotmerge.lam=0.3 "
            "merge.pivotmerge.rank_ratio=0.25,0.75`") in text
    assert "rank_ratio=0.25] is best (50.0)" in text and "a spread of 30.0 points" in text
    assert "1 of 2 settings average above the pivot (30.0)" in text


def test_a_list_value_is_not_a_sweep():
    from experiments.results_doc import _is_sweep

    assert _is_sweep("0.25,0.5") and _is_sweep("similar,diverse")
    assert not _is_sweep("[pm_mc_*,pm_pope]") and not _is_sweep("0.3") and not _is_sweep("'a,b'")
    assert _is_sweep("[a,b],[c]")


def test_selection_summary_shows_searched_options_and_grid_edges():
    from experiments.results_doc import selection_summary

    def entry(chosen_lam, lams):
        return {"chosen": {"density": 0.2, "lam": chosen_lam},
                "candidates": [{"options": {"density": 0.2, "lam": lam}, "val_loss": 1.0} for lam in lams]}

    assert selection_summary(entry(0.3, [1.0, 0.3, 0.5])) == "`lam=0.3 (edge of the grid)`"
    assert selection_summary(entry(0.5, [1.0, 0.3, 0.5])) == "`lam=0.5`"
    assert selection_summary({"chosen": {}, "candidates": [{"options": {}, "val_loss": 1.0}]}) == \
        "(one candidate: nothing searched)"


def test_configured_seeds_come_from_the_experiment_configs():
    """A store with fewer seeds than its experiment runs is flagged partial: the seeds are read from conf/."""
    from experiments.results_doc import configured_seeds

    assert configured_seeds("paper_table") == [0, 1, 2]
    assert configured_seeds("pivotmerge_vs_ties") == [0]
    assert configured_seeds("no_such_experiment") == [0]


def test_findings_count_a_win_over_the_pivot_only_beyond_both_intervals():
    from eval.table import build_table
    from experiments.results_doc import findings
    from tests.helpers.rows import result_row

    def row(model, correct):   # 200 items, `correct` of them right
        items = [1.0] * correct + [0.0] * (200 - correct)
        return dict(result_row(model, "pm_cls_digits", correct / 200), items=items)

    # pivot 25 %; a merge 2 points above it (inside the intervals), one 30 points above (clear of them)
    lines = findings(build_table([row("pivot", 50), row("merge:ties", 54), row("merge:pivotmerge", 110)]))
    assert "The pivot averages 25.0; 2 of 2 merges average higher, 1 beyond both 95 % intervals " \
           "(merge:pivotmerge)." in lines, lines


def _regime_rows(shift: float) -> list[dict]:
    """Per-item rows of one regime: pivot, joint, an expert per source and two merges on two in-source tasks."""
    from tests.helpers.rows import result_row

    rows = []
    scores = {"pivot": 0.3, "joint": 0.9, "expert:digits": 0.9, "expert:words": 0.9, "merge:ties": 0.5,
              "merge:pivotmerge": 0.6 + shift}
    for model, score in scores.items():
        for source in ("digits", "words"):
            items = [1.0 if i < round(40 * score) else 0.0 for i in range(40)]
            row = result_row(model, f"pm_cls_{source}", sum(items) / 40)
            rows.append({**row, "metric": "acc", "primary": True, "items": items})
    return rows


def test_regime_map_section_and_readme_block_come_from_the_regime_stores(tmp_path):
    from experiments.results_doc import REGIMES_BEGIN, REGIMES_END

    outputs = tmp_path / "outputs"
    run = outputs / "regime_map" / "2026-01-03_00-00-00"
    for regime, shift in (("chance", 0.0), ("general", -0.25)):
        folder = run / "regimes" / regime / "results"
        folder.mkdir(parents=True)
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _regime_rows(shift)))
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text("# Results\n\n## paper_table\n\nkept from an earlier machine\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{REGIMES_BEGIN}\nstale\n{REGIMES_END}\n")
    main(["--outputs", str(outputs), "--multirun", str(tmp_path / "none"), "--doc", str(doc), "--readme", str(readme)])
    text = doc.read_text()
    assert "## Where each method works (regime_map)" in text
    assert "## paper_table\n\nkept from an earlier machine" in text   # a store not on this machine is kept
    assert "| Model | chance | general |" in text
    assert "| merge:pivotmerge | 60.0 ±" in text and "| merge:pivotmerge | 66.7 ±" in text   # 60 of joint's 90
    assert "`chance`: best merge merge:pivotmerge" in text and "tied-best" in text
    assert "`general`: best merge merge:ties" in text and "below merge:ties beyond the paired interval" in text
    assert "the paper's ordering does not hold here" in text
    assert (tmp_path / "docs" / "figures" / "regime_map.png").stat().st_size > 1000
    assert "stale" not in readme.read_text() and "| Model | chance | general |" in readme.read_text()


def test_pivotmerge_ablations_leave_its_rank_and_are_reported_as_paired_differences():
    """A variant of PivotMerge (merge_variants base: pivotmerge) is not a rival: scoring above PivotMerge, it
    must neither take the best-merge line nor push PivotMerge's rank down; its difference is its own table."""
    from eval.regime_map import ablations_of, build_regime_map, rivals
    from eval.regime_map import to_markdown as map_markdown
    from tests.helpers.rows import result_row

    rows = _regime_rows(0.0)
    for source in ("digits", "words"):   # the ablation gets 32 of 40 right where PivotMerge gets 24
        items = [1.0] * 32 + [0.0] * 8
        rows.append({**result_row("merge:pm_no_x", f"pm_cls_{source}", 0.8), "metric": "acc", "primary": True,
                     "items": items})
    ablations = ablations_of({"pm_no_x": {"base": "pivotmerge", "alm": "off"}, "ties_dense": {"base": "ties"}})
    assert ablations == ["merge:pm_no_x"]
    regime_map = build_regime_map({"chance": rows}, ablations=ablations)
    assert rivals(regime_map, "chance") == ["merge:ties", "merge:pivotmerge"]
    standing = regime_map.standing["chance"]
    assert (standing.rank, standing.merges, standing.better) == (1, 2, [])
    difference, lo, hi = regime_map.ablation[("merge:pm_no_x", "chance")]
    assert difference == -20.0 and hi < 0      # 60 % - 80 %, beyond the paired interval
    assert "| pm_no_x | -20.0 [" in map_markdown(regime_map)


def test_val_check_table_counts_merges_above_the_pivot(tmp_path):
    """The VAL table reads the merge stage's val_check_seed<n>.json: PivotMerge's loss minus the pivot's, and how
    many rival merges (its own ablations left out) are above the pivot - per seed, per loss kind."""
    import json

    from eval.regime_map import build_regime_map, read_val_checks
    from eval.regime_map import to_markdown as map_markdown

    losses = {"pivot": {"caption": 0.5, "kway": 1.0}, "merge:pivotmerge": {"caption": 0.45, "kway": 1.25},
              "merge:ties": {"caption": 0.75, "kway": 0.5}, "merge:pm_no_x": {"caption": 9.0, "kway": 9.0}}
    (tmp_path / "val_check_seed1.json").write_text(json.dumps({"rows_per_source": 4, "losses": losses}))
    checks = read_val_checks(tmp_path)
    assert list(checks) == [1]
    regime_map = build_regime_map({"chance": _regime_rows(0.0)}, ablations=["merge:pm_no_x"],
                                  val={"chance": checks, "not_run": {}})
    text = map_markdown(regime_map)
    assert "| chance | 1 | -0.0500 | 1 of 2 | +0.2500 | 1 of 2 |" in text
    assert build_regime_map({"chance": _regime_rows(0.0)}).val == {}
    assert "VAL losses" not in map_markdown(build_regime_map({"chance": _regime_rows(0.0)}))


def test_a_section_says_when_its_pivotmerge_rows_are_not_todays_default(tmp_path):
    """The default reading changes between runs: a run's section names the reading it ran, and flags it when
    conf/merge/pivotmerge.yaml has moved on since."""
    from omegaconf import OmegaConf

    from experiments.results_doc import ROOT, pivotmerge_reading, unknown_reading

    today = OmegaConf.load(ROOT / "conf" / "merge" / "pivotmerge.yaml")
    calibration = OmegaConf.load(ROOT / "conf" / "config.yaml").calibration
    loss_kind = calibration.loss_kind
    assert pivotmerge_reading(OmegaConf.create({})) == []
    current = pivotmerge_reading(OmegaConf.create({"merge": {"pivotmerge": today}, "calibration": calibration}))
    assert current[0].startswith("PivotMerge in this run: sdf_space=") and "not today's default" not in current[0]
    assert f"loss_kind={loss_kind}" in current[0]
    older = OmegaConf.merge(today, {"consensus": "energy_mean", "alm": "data"})
    flagged = pivotmerge_reading(OmegaConf.create({"merge": {"pivotmerge": older}, "calibration": calibration}))[0]
    assert f"not today's default** (consensus={today.consensus}, alm={today.alm})" in flagged
    other_loss = pivotmerge_reading(OmegaConf.create({"merge": {"pivotmerge": today}, "calibration": OmegaConf.merge(
        calibration, {"loss_kind": "caption"})}))[0]
    assert f"not today's default** (loss_kind={loss_kind})" in other_loss
    # a kept section (its store elsewhere) written before loss_kind was recorded: parsed back and flagged
    from experiments.results_doc import reflagged_reading
    written = current[0].split(", loss_kind=")[0] + "."
    reflagged = reflagged_reading(f"## t\n\n{written}\n\n| merge:pivotmerge | 1 |\n")
    assert ("not today's default" in reflagged) == (loss_kind != "kway")
    assert reflagged_reading(f"## t\n\n{current[0]}\n") == f"## t\n\n{current[0]}\n"   # today's: untouched
    assert reflagged_reading(flagged) == flagged   # flagged once: the same flag again, not two
    kept = "## paper_table\n\nCommand: `x`  \nResults store: `y`\n\n| merge:pivotmerge | 1 |\n"
    marked = unknown_reading(kept)   # a section kept from a store not on this machine
    assert marked.startswith("## paper_table\n\nCommand: `x`  \nResults store: `y`\n\nPivotMerge in this run: not")
    assert marked.endswith("| merge:pivotmerge | 1 |\n") and unknown_reading(marked) == marked


def test_a_readme_block_without_its_store_says_its_reading_is_not_recorded(tmp_path):
    from experiments.results_doc import README_BEGIN, README_END, UNKNOWN_READING, mark_readme_reading_unknown

    readme = tmp_path / "README.md"
    block = "Latest `paper_table` table.\n\n| merge:pivotmerge | 1 |\n"
    readme.write_text(f"intro\n{README_BEGIN}\n{block}{README_END}\nend\n")
    assert mark_readme_reading_unknown(readme)
    text = readme.read_text()
    assert f"Latest `paper_table` table.\n\n{UNKNOWN_READING}\n\n| merge:pivotmerge | 1 |\n{README_END}\nend" in text
    assert not mark_readme_reading_unknown(readme) and readme.read_text() == text   # once


def test_an_archived_run_regenerates_the_doc_without_its_outputs_folder(tmp_path):
    """archive_run copies the stores the doc is generated from (no wandb, no models); the doc then comes from the
    archive alone, as on a clean clone, and the newer of two runs wins whichever root holds it."""
    import shutil

    from experiments.archive_run import archive

    run = tmp_path / "outputs" / "regime_map" / "2026-01-03_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("regimes: {chance: {}}\n")
    folder = run / "regimes" / "chance"
    (folder / "results").mkdir(parents=True)
    (folder / "results" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _regime_rows(0.0)))
    losses = {"pivot": {"caption": 0.5, "kway": 1.0}, "merge:pivotmerge": {"caption": 0.4, "kway": 0.5}}
    (folder / "val_check_seed0.json").write_text(json.dumps({"losses": losses}))
    (run / "regime_times.json").write_text("[]")
    (folder / "wandb").mkdir()
    (folder / "wandb" / "stages.json").write_text("{}")
    stores = tmp_path / "stores"
    target = archive(run, stores)
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == [".hydra/config.yaml", "regime_times.json", "regimes/chance/results/results.jsonl",
                    "regimes/chance/val_check_seed0.json"]
    shutil.rmtree(tmp_path / "outputs")
    doc = tmp_path / "docs" / "results.md"
    readme = tmp_path / "README.md"
    readme.write_text("no blocks\n")
    main(["--outputs", str(tmp_path / "outputs"), "--outputs", str(stores), "--multirun", str(tmp_path / "none"),
          "--doc", str(doc), "--readme", str(readme)])
    text = doc.read_text()
    assert "| Model | chance |" in text and "| merge:pivotmerge | 60.0 ±" in text
    assert "| chance | 0 | -0.1000 |" in text   # the VAL check came along
    with pytest.raises(SystemExit, match="not a run folder"):
        archive(folder.parent, stores)
    empty = tmp_path / "outputs" / "regime_map" / "2026-01-04_00-00-00"
    (empty / ".hydra").mkdir(parents=True)
    (empty / ".hydra" / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit, match="no results store yet"):
        archive(empty, stores)
