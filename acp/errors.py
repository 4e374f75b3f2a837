"""The one error type that means "the user gave us something wrong".

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2; every other exception
is a bug (exit code 1, traceback). Library code raises ``UserError`` with a message that names the
offending file, field or value, so the message alone tells the user what to fix.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: config, path, budget, weights or file contents."""


def one_line(message: object) -> str:
    """Collapse a message onto one line (the exit-code contract promises a single line)."""
    return " ".join(str(message).split())
