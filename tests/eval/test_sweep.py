"""The multirun callback tabulates every job of a sweep, labelling merged rows by their overrides."""
from eval.sweep import SweepTable, job_label, sweep_rows
from tests.helpers.rows import sweep_job, sweep_row


def test_job_label_keeps_the_swept_values():
    assert job_label(["experiment=ablation", "merge.pivotmerge.rank_ratio=0.25"]) == "rank_ratio=0.25"


def test_sweep_table(tmp_path, capsys):
    sweep_job(tmp_path / "0", ["experiment=ablation", "merge.pivotmerge.rank_ratio=0.25"],
              [sweep_row("pivot", 0.3), sweep_row("merge:pivotmerge", 0.5)])
    sweep_job(tmp_path / "1", ["experiment=ablation", "merge.pivotmerge.rank_ratio=0.5"],
              [sweep_row("pivot", 0.3), sweep_row("merge:pivotmerge", 0.7)])
    rows = sweep_rows(tmp_path)
    assert sorted(r["model"] for r in rows) == ["merge:pivotmerge [rank_ratio=0.25]",
                                                 "merge:pivotmerge [rank_ratio=0.5]", "pivot"]

    class Config:
        class hydra:  # noqa: N801 - mimics cfg.hydra.sweep.dir
            class sweep:  # noqa: N801
                dir = str(tmp_path)

    SweepTable().on_multirun_end(Config())
    table = (tmp_path / "sweep_table" / "table.md").read_text()
    assert "rank_ratio=0.25" in table and "rank_ratio=0.5" in table
    assert (tmp_path / "sweep_table" / "table.csv").is_file()


def test_overrides_every_job_shares_do_not_label_rows(tmp_path):
    shared = ["experiment=ablation", "eval.tasks=[pm_mc_*,pm_pope]", "merge.pivotmerge.lam=0.3"]
    sweep_job(tmp_path / "0", shared + ["scenario.pivot.init=warmup"],
              [sweep_row("pivot", 0.3), sweep_row("merge:pivotmerge", 0.5)])
    sweep_job(tmp_path / "1", shared + ["scenario.pivot.init=seeded"],
              [sweep_row("pivot", 0.2), sweep_row("merge:pivotmerge", 0.4)])
    assert sorted(r["model"] for r in sweep_rows(tmp_path)) == [
        "merge:pivotmerge [init=seeded]", "merge:pivotmerge [init=warmup]", "pivot [init=seeded]",
        "pivot [init=warmup]"]
