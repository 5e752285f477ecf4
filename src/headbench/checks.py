"""Checks of option values, shared by every options object (`config.CompareConfig`,
`train.TrainConfig`, ...): each returns the value parsed, or raises a one-line `HeadbenchError`
naming the parameter (`param=`), which the CLI turns into its flag.

    >>> whole("3", "seeds", 1), numbers("1e-4,1e-2", "weight_decays", float, 0)
    (3, (0.0001, 0.01))
"""
from __future__ import annotations

from typing import Any, Iterable

from .errors import HeadbenchError


def items(value: str | int | float | Iterable | None) -> list[str]:
    """A comma list (or a sequence) as its non-empty stripped strings."""
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        value = str(value).split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def numbers(value: Any, param: str, kind: type = int, low: float | None = None,
            example: str = "", high: float | None = None) -> tuple:
    """A comma list of numbers of `kind`, each ≥ `low` (and ≤ `high`), as a tuple."""
    parts = items(value)
    try:
        values = tuple(kind(p) for p in parts)
    except (ValueError, OverflowError):
        values = None
    if values is None or any(not _within(v, low, high) for v in values):
        word = "whole numbers" if kind is int else "numbers"
        bound = _bounds(low, high)
        raise HeadbenchError(f"{param} takes comma-separated {word}{bound}"
                             + (f", e.g. {example}" if example else "")
                             + f" (got {','.join(parts) or value!r})", param=param)
    return values


def whole(value: Any, param: str, low: int | None = None, none_ok: bool = False,
          high: int | None = None) -> int | None:
    """`value` as an int (≥ `low`, ≤ `high`); a float or string must hold a whole number."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        value = repr(value)
    try:
        number = int(value)
        ok = number == float(value) and _within(number, low, high)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise HeadbenchError(f"{param} must be a whole number{_bounds(low, high)}, got "
                             f"{str(value)[:40]}", param=param)
    return number


def _within(v: float, low: float | None, high: float | None) -> bool:
    return (low is None or v >= low) and (high is None or v <= high)


def _bounds(low: float | None, high: float | None) -> str:
    """' ≥ 1', ' ≤ 9' or ' from 1 to 9'."""
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}"
    return f" ≥ {low:g}" if low is not None else (f" ≤ {high:g}" if high is not None else "")


def real(value: Any, param: str, low: float, high: float, closed_high: bool = False) -> float:
    """`value` as a float in [low, high) (or [low, high] when `closed_high`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    inside = low <= number <= high if closed_high else low <= number < high
    if not inside:
        bracket = "]" if closed_high else ")"
        raise HeadbenchError(f"{param} must be in [{low:g}, {high:g}{bracket}, got {value}",
                             param=param)
    return number


def positive(value: Any, param: str) -> float:
    """`value` as a finite float > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf"):
        raise HeadbenchError(f"{param} must be a number > 0, got {value}", param=param)
    return number
