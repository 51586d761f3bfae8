"""How an error reaches a person: one line.

Library errors (a refused download, a store that cannot be reached, a bad hyper-parameter) carry
messages from other libraries that may span lines or pages: SQLAlchemy appends the statement,
MLflow the whole HTTP response. Every place that shows such a message squashes it with
:func:`one_line`, so a user sees one line of bounded length, never a traceback.
"""

from __future__ import annotations

ONE_LINE_LIMIT = 300


class UserError(Exception):
    """A failure the user can act on; its message is the one line the command prints."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error (scikit-learn's may start with a newline)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))


def one_line(exc: BaseException, limit: int = ONE_LINE_LIMIT) -> str:
    """The exception's message on one line (whitespace runs squashed), at most ``limit`` chars.

    An exception without a message is named by its type, so the line is never empty.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
