"""Schema validation of raw rows: what is fatal, what is cleaned, and where."""

import numpy as np
import pandas as pd

from heartml.data.schema import COLUMNS
from heartml.data.validate import validate_frame

GOOD = [63.0, 1.0, 1.0, 145.0, 233.0, 1.0, 2.0, 150.0, 0.0, 2.3, 3.0, 0.0, 6.0, 0.0]


def raw(rows: list[list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype="float64")
    frame.insert(0, "site", "cleveland")
    frame.insert(1, "line", range(1, len(frame) + 1))
    return frame


def with_value(column: str, value: float) -> list[float]:
    row = list(GOOD)
    row[COLUMNS.index(column)] = value
    return row


def test_good_rows_pass() -> None:
    report = validate_frame(raw([GOOD, GOOD]))
    assert report.ok
    assert report.rows == 2
    assert report.missing == {}


def test_missing_values_are_reported_not_fatal() -> None:
    report = validate_frame(raw([GOOD, with_value("ca", np.nan), with_value("thal", np.nan)]))
    assert report.ok
    assert report.missing == {"ca": 1, "thal": 1}


def test_unknown_codes_are_fatal_with_their_row_numbers() -> None:
    report = validate_frame(raw([GOOD, with_value("cp", 0), GOOD, with_value("thal", 2)]))
    assert not report.ok
    found = {(v.row, v.column) for v in report.fatal}
    assert found == {(2, "cp"), (4, "thal")}
    assert "unknown code" in report.fatal[0].message


def test_out_of_range_numbers_are_fatal() -> None:
    report = validate_frame(raw([with_value("age", 250), with_value("oldpeak", 12)]))
    assert {(v.row, v.column) for v in report.fatal} == {(1, "age"), (2, "oldpeak")}
    assert "out of range" in str(report.fatal[0])


def test_missing_target_is_fatal() -> None:
    report = validate_frame(raw([with_value("num", np.nan)]))
    assert [v.column for v in report.fatal] == ["num"]


def test_zero_cholesterol_is_cleaned_to_missing_and_reported() -> None:
    report = validate_frame(raw([with_value("chol", 0), with_value("trestbps", 0)]))
    assert report.ok
    assert report.missing == {"trestbps": 1, "chol": 1}
    notes = [v for v in report.violations if not v.fatal]
    assert {(v.row, v.column) for v in notes} == {(1, "chol"), (2, "trestbps")}
