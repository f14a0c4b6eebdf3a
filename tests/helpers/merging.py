"""Tests merge through the one call path, :func:`pivotmerge.merging.merge`, with the options written as
keywords (like Hydra overrides): ``merge("ties", pivot, experts, lam=0.5, calibration=stats)``."""
from pivotmerge.merging import merge as merge_call

#: keywords that are inputs of the call, not options of the method (``calibration``: the statistics)
INPUTS = {"calibration": "statistics", "calibration_loss": "calibration_loss", "diagnostics": "diagnostics",
          "align": "align"}


def merge(method, pivot, experts, **keywords):
    """``merge_call(method, pivot, experts, options, **inputs)`` with options and inputs given as keywords."""
    inputs = {INPUTS[k]: keywords.pop(k) for k in list(keywords) if k in INPUTS}
    return merge_call(method, pivot, experts, keywords, **inputs)


__all__ = ["merge"]
