"""One exception family for every user-facing failure.

Every error the project raises on purpose (bad input, bad configuration, unreadable file) derives from
`PivotMergeError`, so `run.py` and the `pivotmerge` CLI catch it and print one clear message naming the
problem and the fix, without a traceback. Sub-packages may define finer subclasses next to their code.
"""


class PivotMergeError(Exception):
    """Base class of all deliberate pivotmerge errors (user-facing, message is the explanation)."""


class ConfigError(PivotMergeError):
    """A configuration value is unknown, out of range or inconsistent with another one."""


class DataError(PivotMergeError):
    """A data source is empty, corrupt or does not match what the config expects."""


class MissingDependencyError(PivotMergeError):
    """An optional package (or a pretrained weight file shipped in a package) is not installed."""


class CacheError(PivotMergeError):
    """A cached artifact is truncated or corrupt."""


class StageIOError(PivotMergeError):
    """A file-system fault (disk full, permission, read-only file system, a file removed under the run) while
    a stage ran. Complete cache entries are committed atomically, so the entry being built stays `.partial`
    (never reused) and the next run continues from the last complete one."""

    def __init__(self, cause: OSError, entry: str | None = None, stage: str | None = None):
        super().__init__(cause, entry, stage)
        self.cause, self.entry, self.stage = cause, entry, stage

    def __str__(self) -> str:
        where = f"stage {self.stage or '?'}" + (f", entry {self.entry}" if self.entry else "")
        cause = " ".join(str(self.cause).split()) or "no detail"
        kept = " (left .partial, never reused)" if str(self.entry).endswith(".partial") else ""
        return (f"{where}{kept}: {type(self.cause).__name__}: {cause}; free space or fix the path, then run again: "
                "it continues from the last complete entry")


__all__ = ["CacheError", "ConfigError", "DataError", "MissingDependencyError", "PivotMergeError", "StageIOError"]
