"""Console output: our own progress bars say what runs, so the libraries' per-shard bars and notices go; and
the run folder's run.log keeps what the console showed (:func:`run_log`)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path


def quiet_libraries() -> None:
    import logging
    import warnings

    import datasets
    import transformers

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The frozen LLM and vision tower are in eval mode on purpose; the pytree notice is Lightning-internal.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # cursor moves and colours: meaningless in a file


class _Tee(io.TextIOBase):
    """A console stream that also writes to a log file. The file gets the lines as the terminal finally shows
    them: text a carriage return redraws (a terminal progress bar) is replaced, not appended."""

    def __init__(self, console, file):
        self.console, self.file, self._line = console, file, ""

    def write(self, text: str) -> int:
        self.console.write(text)
        for part in re.split(r"(\r|\n)", _ANSI.sub("", text)):
            if part == "\n":
                self.file.write(self._line + "\n")
                self._line = ""
            elif part == "\r":
                self._line = ""
            else:
                self._line += part
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def close_line(self) -> None:
        if self._line:
            self.file.write(self._line + "\n")
            self._line = ""

    def isatty(self) -> bool:   # the progress bars ask the console, not the file
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")


@contextlib.contextmanager
def run_log(path: str | os.PathLike) -> Iterator[Path]:
    """Everything printed to stdout and stderr inside the block also goes to ``path`` (appended: Hydra's own
    logging handler writes to the same run.log), so the run folder keeps what the terminal showed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        out, err = _Tee(sys.stdout, file), _Tee(sys.stderr, file)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = saved
            out.close_line()
            err.close_line()
