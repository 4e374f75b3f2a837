"""The vocabulary acp's JSON documents are validated with: a place in a document and checks that name it.

A :class:`Field` is a source (usually a file) and a field path; every check takes one and fails with a
one-line :class:`~acp.errors.UserError` such as ``runs/a/best_arch.json: preprocessing.std[1]: 0.0 out of
range (0.0, 1.0]``. The checks accept plain JSON values only (``true`` is not ``1``, NaN is no number)
and return them normalized (ints as ``int``, numbers as ``float``). Used by the Architecture document
(:mod:`acp.core.architecture`) and the preprocessing record (:mod:`acp.core.preprocessing`).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from acp.errors import UserError, one_line

MAX_NESTING = 32


class Field:
    """A place in a document (source + field path); ``fail`` raises a UserError that names it."""

    __slots__ = ("source", "path")

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def __getitem__(self, key: str | int) -> Field:
        if isinstance(key, int):
            return Field(self.source, f"{self.path}[{key}]")
        return Field(self.source, f"{self.path}.{key}" if self.path else key)

    def fail(self, message: str) -> NoReturn:
        where = f"{self.source}: {self.path}: " if self.path else f"{self.source}: "
        raise UserError(one_line(where + message)) from None


_JSON_TYPES = ((bool, "boolean"), (numbers.Integral, "integer"), (numbers.Real, "number"), (str, "string"))


def show(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001  (giant ints and deep nesting refuse repr; the message must not crash)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = next((name for cls, name in _JSON_TYPES if isinstance(value, cls)), None)
    if kind is None:
        kind = "object" if isinstance(value, Mapping) else "array" if isinstance(value, list | tuple) else ""
    return f"{kind or type(value).__name__} {show(value)}"


def reject_unknown(at: Field, mapping: Mapping, allowed: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed[:8])})"
            at.fail(f"unknown key {show(key)}{hint}")


def expect_object(at: Field, value: Any, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping:
    if not isinstance(value, Mapping):
        at.fail(f"expected an object, got {describe(value)}")
    reject_unknown(at, value, (*required, *optional))
    for key in required:
        if key not in value:
            at.fail(f"missing key {key!r}")
    return value


def expect_array(at: Field, value: Any, what: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        at.fail(f"expected an array of {what}, got {describe(value)}")
    return value


def expect_int(at: Field, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # true is not 1 here
        at.fail(f"expected an integer, got {describe(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        at.fail(f"{show(value)} out of range [{low}, {'...' if high is None else high}]")
    return value


def expect_number(at: Field, value: Any, low=-math.inf, high=math.inf, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        at.fail(f"expected a number, got {describe(value)}")
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        at.fail(f"must be a finite number, got {show(value)}")
    if value < low or value > high or (open_low and value == low):
        at.fail(f"{show(value)} out of range {'(' if open_low else '['}{low}, {high}]")
    try:
        return float(value)
    except OverflowError:
        at.fail(f"{show(value)} is too large")


def expect_str(at: Field, value: Any) -> str:
    if not isinstance(value, str) or not value:
        at.fail(f"expected a non-empty string, got {describe(value)}")
    return value


def optional(check, at: Field, value: Any, *args, **kwargs):
    return None if value is None else check(at, value, *args, **kwargs)


def json_data(at: Field, value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` if it is plain JSON data (tuples become lists), else a UserError."""
    if depth > MAX_NESTING:
        at.fail(f"nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return expect_number(at, value)
    if isinstance(value, list | tuple):
        return [json_data(at[i], item, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                at.fail(f"object keys must be strings, got {describe(key)}")
        return {key: json_data(at[key], item, depth + 1) for key, item in value.items()}
    at.fail(f"expected plain JSON data, got {describe(value)}")
