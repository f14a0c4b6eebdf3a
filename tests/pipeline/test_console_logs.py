"""Logs that read well in a file: a training bar becomes a line every 10 % when stdout is not a terminal, and
the run folder's run.log keeps what the console showed, without carriage-return redraws."""
from __future__ import annotations

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from pivotmerge.logs import run_log
from pivotmerge.training import StageProgressBar


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def train(steps: int, bar: StageProgressBar) -> None:
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar], num_sanity_val_steps=0)
    trainer.fit(Tiny(), data)


def test_progress_is_a_line_every_ten_percent_when_stdout_is_a_file(capfd):
    assert not sys.stdout.isatty()   # pytest captures: the default picks lines by itself
    bar = StageProgressBar("expert digits", every_s=3600)
    assert bar.lines
    train(40, bar)
    out = capfd.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("expert digits: ")]
    assert [line.split()[3] for line in lines] == [f"{s}/40" for s in range(4, 41, 4)], lines
    assert "(100%)" in lines[-1] and ", loss " in lines[-1] and "elapsed" in lines[-1]


def test_progress_also_every_n_seconds(capfd):
    train(5, StageProgressBar("pivot", lines=True, percent=100, every_s=0))
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("pivot: ")]
    assert len(lines) == 5


def test_run_log_keeps_what_the_console_showed(tmp_path, capsys):
    log = tmp_path / "run" / "run.log"
    log.parent.mkdir()
    log.write_text("[2026-01-01][numexpr][INFO] - NumExpr defaulting to 2 threads.\n")  # Hydra's handler's line
    with run_log(log):
        print("[    data] digits                       ran      3.1s")
        sys.stdout.write("bar  10%\rbar  50%\rbar 100%\n")     # a terminal bar redrawn in place
        sys.stdout.write("\x1b[Acolour \x1b[1mbold\x1b[0m\n")
        print("| Model | cls_digits |", flush=True)
        print("error: something to say", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    shown = capsys.readouterr()
    assert "bar  10%\rbar  50%" in shown.out and "error: something" in shown.err   # the console is unchanged
    assert sys.stdout is not None and not hasattr(sys.stdout, "close_line")      # streams restored
    assert log.read_text().splitlines() == [
        "[2026-01-01][numexpr][INFO] - NumExpr defaulting to 2 threads.",
        "[    data] digits                       ran      3.1s",
        "bar 100%",
        "colour bold",
        "| Model | cls_digits |",
        "error: something to say",
        "no newline at the end",
    ]
