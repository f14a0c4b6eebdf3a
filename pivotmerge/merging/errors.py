"""Errors raised by the merging library."""

from pivotmerge.errors import PivotMergeError


class MergeError(PivotMergeError):
    """Base class of merging errors."""


class MergeInputError(MergeError, ValueError):
    """The state dicts given to a merge method are unusable (keys, shapes, NaN/Inf, too few experts)."""


class MergeConfigError(MergeError, ValueError):
    """A merge method or one of its options is unknown or out of range."""


__all__ = ["MergeError", "MergeInputError", "MergeConfigError"]
