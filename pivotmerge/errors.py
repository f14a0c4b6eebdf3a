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


__all__ = ["CacheError", "ConfigError", "DataError", "MissingDependencyError", "PivotMergeError"]
