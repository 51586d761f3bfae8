"""An error reaches a person as one bounded line."""

from __future__ import annotations

from heartml.errors import ONE_LINE_LIMIT, one_line


def test_a_multi_line_message_becomes_one_line() -> None:
    exc = RuntimeError(
        "(sqlite3.OperationalError) no such table\n[SQL: SELECT 1]\n\n  (Background)"
    )
    assert one_line(exc) == "(sqlite3.OperationalError) no such table [SQL: SELECT 1] (Background)"


def test_a_long_message_is_cut_at_the_limit() -> None:
    exc = ValueError("x" * 1000)
    assert len(one_line(exc)) == ONE_LINE_LIMIT
    assert one_line(exc, limit=20) == "x" * 20


def test_an_empty_message_is_named_by_its_type() -> None:
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("   \n ")) == "RuntimeError"
