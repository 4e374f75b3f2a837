"""argparse ``type=`` converters shared by the ``acp`` subcommands (bad values: one-line user errors)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _checked(convert: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
non_negative_int = _checked(int, lambda value: value >= 0, "an integer >= 0")
ratio = _checked(float, lambda value: 0 < value <= 1, "a ratio in (0, 1]")
positive_float = _checked(float, lambda value: value > 0 and value != float("inf"), "a positive number")


def _one_or_list(parse_one: Callable[[str], float]):
    """``0.5`` -> 0.5 and ``0.7,0.5,0.3`` -> [0.7, 0.5, 0.3] (several budgets in one run)."""

    def parse(text: str):
        parts = [part.strip() for part in text.split(",")]
        if len(parts) == 1:
            return parse_one(parts[0])
        return [parse_one(part) for part in parts]

    return parse


ratios = _one_or_list(ratio)
positive_floats = _one_or_list(positive_float)


def names(*allowed: str):
    """``macs,params`` -> ("macs", "params"): a comma-separated choice of ``allowed``, in the given order."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in chosen if name not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(allowed)}, got {text!r}")
        return tuple(dict.fromkeys(chosen))

    return parse
