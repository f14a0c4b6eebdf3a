"""What a merge method declares about itself, once: its options (kind and range), its contract, the option a
search varies, and what the pipeline must supply (calibration statistics, the Fisher, a calibration loss).

A method is a pure function under the :func:`merge_method` decorator::

    @merge_method("ties", options={"density": fraction(), "scope": choice(TIES_SCOPES), "lam": number()},
                  scale="lam", one_expert={"density": 1.0}, identical="mean")
    def ties_merge(pivot, experts, o, *, diagnostics=None):   # o.density, o.scope, o.lam: already checked
        ...

The option *values* (their defaults) live only in ``conf/merge/<name>.yaml``; the spec holds their kinds and
ranges, and every option check is generated from it. The decorated name is what the YAML's ``_target_`` names:
it takes ``(pivot, experts, **options, diagnostics=None, calibration=None, calibration_loss=None)``, checks the
options, refuses inputs the method does not take, and calls the function with the checked options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pivotmerge.merging.checks import check_bool, check_choice, check_fraction, check_int, check_number
from pivotmerge.merging.errors import MergeConfigError

#: what callers may hand a method besides its options (each only where the spec says the method takes it)
EXTRAS = ("diagnostics", "calibration", "calibration_loss")


# ------------------------------------------------------------------------------------------- option kinds
@dataclass(frozen=True)
class Option:
    """The kind and range of one option; :meth:`check` returns the value checked (and normalised)."""

    check_value: Callable[[str, str, Any], Any]
    describe: str

    def check(self, method: str, name: str, value: Any) -> Any:
        return self.check_value(method, name, value)


def number(minimum: float | None = None, *, exclusive: bool = False) -> Option:
    """A finite float (ints accepted), optionally >= (or >) ``minimum``."""
    bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum}"
    return Option(lambda m, n, v: check_number(m, n, v, minimum=minimum, exclusive_minimum=exclusive),
                  f"number{bound}")


def fraction(*, low_open: bool = False, high_open: bool = False) -> Option:
    """A float in [0, 1] (open ends on request)."""
    return Option(lambda m, n, v: check_fraction(m, n, v, low_open=low_open, high_open=high_open),
                  "fraction in " + ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]"))


def integer(minimum: int | None = None) -> Option:
    return Option(lambda m, n, v: check_int(m, n, v, minimum=minimum),
                  "integer" + ("" if minimum is None else f" >= {minimum}"))


def flag() -> Option:
    return Option(check_bool, "true or false")


def choice(values: Sequence[str]) -> Option:
    values = tuple(values)
    return Option(lambda m, n, v: check_choice(m, n, v, values), " | ".join(values))


def weight_interval() -> Option:
    """Two numbers [lo, hi] with 0 <= lo <= hi, returned as a list of floats."""
    def check(method: str, name: str, value: Any) -> list[float]:
        try:
            lo, hi = (float(x) for x in value)
        except (TypeError, ValueError) as e:
            raise MergeConfigError(f"{method}: {name} must be two numbers [lo, hi], got {value!r}") from e
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise MergeConfigError(f"{method}: {name}={[lo, hi]} must satisfy 0 <= lo <= hi")
        return [lo, hi]

    return Option(check, "[lo, hi] with 0 <= lo <= hi")


# ------------------------------------------------------------------------------------------- the spec
class Options(Mapping[str, Any]):
    """A method's checked options, read as attributes (``o.lam``) or as a mapping, in the spec's order."""

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("merge options are read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Options({self._values!r})"


#: "always", "never", or a predicate over the checked options (PivotMerge needs statistics in one reading only)
Condition = bool | Callable[[Options], bool]


@dataclass(frozen=True)
class Contract:
    """Properties of a merge method that ``tests/merging/test_merge_contract.py`` checks, beyond the ones every
    method must have (dtype kept, inputs untouched, deterministic, zero task vectors give the pivot, clean
    option errors, CLI round trip).

    * ``scale``: the option that multiplies the whole merged update (lam, alpha), if any.
    * ``one_expert``: options (on top of the defaults) under which a single expert gives exactly
      pivot + scale * tau; None where that is not the method's definition (e.g. Iso-C flattens tau's spectrum).
    * ``identical``: K copies of one expert give the same update as that expert alone (``'mean'``), K times
      it (``'sum'``), or nothing simpler (None: the result need only be finite).
    * ``symmetric``: options under which the result does not depend on the experts' order (``{}``: always).
    * ``cli``: options the command line needs, which has no calibration loss (``{}``: the defaults run).
    """

    scale: str | None = None
    one_expert: Mapping[str, Any] | None = None
    identical: str | None = None
    symmetric: Mapping[str, Any] = field(default_factory=dict)
    cli: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """Everything declared about a merge method (see the module docstring).

    ``search``: the option a scale search varies (``merge_search.scale_values``); the contract's scale unless
    given. ``statistics`` / ``calibration_loss``: whether the method takes each expert's calibration statistics /
    a calibration loss at all, and (a :data:`Condition`) under which options it needs them. ``fisher`` (a
    :data:`Condition`): when its statistics must hold the Fisher. ``check``: rules across options (one option's
    range depending on another's value), run after every option is checked on its own.
    """

    name: str
    options: Mapping[str, Option]
    contract: Contract = Contract()
    search: str | None = None
    statistics: Condition = False
    fisher: Condition = False
    calibration_loss: Condition = False
    check: Callable[[str, Options], None] | None = None

    @property
    def takes(self) -> frozenset[str]:
        """The :data:`EXTRAS` the method accepts."""
        takes = {"diagnostics"}
        if self.statistics is not False:
            takes.add("calibration")
        if self.calibration_loss is not False:
            takes.add("calibration_loss")
        return frozenset(takes)

    def checked(self, given: Mapping[str, Any]) -> Options:
        """The options checked one by one (the first bad one raises MergeConfigError naming it)."""
        unknown, missing = sorted(set(given) - set(self.options)), [o for o in self.options if o not in given]
        if unknown or missing:
            parts = ([f"unknown option(s) {', '.join(unknown)}"] if unknown else []) + (
                [f"missing option(s) {', '.join(missing)}"] if missing else [])
            raise MergeConfigError(f"{self.name}: {'; '.join(parts)}; its options are "
                                   f"{', '.join(sorted(self.options)) or '(none)'}")
        o = Options({name: option.check(self.name, name, given[name]) for name, option in self.options.items()})
        if self.check is not None:
            self.check(self.name, o)
        return o

    def needs_statistics(self, options: Mapping[str, Any]) -> bool:
        return _holds(self.statistics, self.checked(options))

    def needs_fisher(self, options: Mapping[str, Any]) -> bool:
        return _holds(self.fisher, self.checked(options))

    def needs_calibration_loss(self, options: Mapping[str, Any]) -> bool:
        return _holds(self.calibration_loss, self.checked(options))


def _holds(condition: Condition, options: Options) -> bool:
    return condition if isinstance(condition, bool) else bool(condition(options))


def merge_method(name: str, *, options: Mapping[str, Option], scale: str | None = None,
                 one_expert: Mapping[str, Any] | None = None, identical: str | None = None,
                 symmetric: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None,
                 search: str | None = None, statistics: Condition = False, fisher: Condition = False,
                 calibration_loss: Condition = False, check: Callable[[str, Options], None] | None = None):
    """Declare a merge method (see the module docstring); the result is what a YAML's ``_target_`` names."""
    if identical not in (None, "mean", "sum"):
        raise ValueError(f"identical must be 'mean', 'sum' or None, got {identical!r}")
    contract = Contract(scale, one_expert, identical, dict(symmetric or {}), dict(cli or {}))
    named = [scale, search, *(one_expert or {}), *(symmetric or {}), *(cli or {})]
    strays = sorted({n for n in named if n is not None and n not in options})
    if strays:
        raise ValueError(f"{name}: the spec names {strays}, which are not among its options {sorted(options)}")
    spec = MethodSpec(name, dict(options), contract, search or scale, statistics, fisher, calibration_loss, check)

    def deco(fn: Callable) -> Callable:
        def method(pivot, experts, **given):
            extras = {k: given.pop(k) for k in EXTRAS if k in given}
            refused = sorted(k for k in extras if k not in spec.takes)
            if refused:
                raise MergeConfigError(f"merge method {name!r} does not take {', '.join(refused)}")
            return fn(pivot, experts, spec.checked(given), **extras)

        method.__name__, method.__qualname__, method.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        method.__module__, method.spec, method.function = fn.__module__, spec, fn
        return method

    return deco


def spec_of(fn: Callable) -> MethodSpec:
    """The spec of a decorated merge function (or a partial of one), or MergeConfigError."""
    spec = getattr(getattr(fn, "func", fn), "spec", None)
    if not isinstance(spec, MethodSpec):
        raise MergeConfigError(f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', fn)} is not a merge "
                               "method: declare it with @merge_method (pivotmerge/merging/spec.py)")
    return spec


__all__ = ["EXTRAS", "Contract", "MethodSpec", "Option", "Options", "choice", "flag", "fraction", "integer",
           "merge_method", "number", "spec_of", "weight_interval"]
