"""Errors raised by the merging library (all are :class:`pivotmerge.errors.PivotMergeError`)."""

from pivotmerge.errors import ConfigError, DataError, PivotMergeError


class MergeError(PivotMergeError):
    """Base class of merging errors."""


class MergeInputError(MergeError, DataError, ValueError):
    """The state dicts given to a merge method are unusable (keys, shapes, NaN/Inf, too few experts)."""


class MergeConfigError(MergeError, ConfigError, ValueError):
    """A merge method or one of its options is unknown or out of range."""


__all__ = ["MergeError", "MergeInputError", "MergeConfigError"]
