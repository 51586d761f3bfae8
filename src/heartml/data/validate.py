"""Load, clean and validate the UCI rows against the schema, with a row-level report."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from heartml.data.download import (
    DEFAULT_SITES,
    DataError,
    DownloadResult,
    verified_files,
)
from heartml.data.schema import COLUMNS, FEATURES, TARGET, ZERO_MEANS_MISSING, Feature

if TYPE_CHECKING:
    import pandas as pd

    from heartml.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem in the data: which row (1-based line of its file), column and what."""

    site: str
    row: int
    column: str
    message: str
    fatal: bool

    def __str__(self) -> str:
        where = f"{self.site} row {self.row}" if self.row else self.site
        return f"{where}, {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """Row count, missing values (count and rows, ``site:line``) and every violation."""

    rows: int
    missing: dict[str, int]
    violations: tuple[Violation, ...] = field(default_factory=tuple)
    missing_rows: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def fatal(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.fatal)

    @property
    def ok(self) -> bool:
        return not self.fatal


def read_raw(files: DownloadResult) -> pd.DataFrame:
    """Read the raw rows of the given files, keeping `site` and the 1-based `line` of each row."""
    import pandas as pd

    frames = []
    for fetched in files.files:
        frame = pd.read_csv(
            fetched.path,
            header=None,
            names=list(COLUMNS),
            na_values="?",
            dtype="float64",
            on_bad_lines="error",
        )
        frame.insert(0, "site", fetched.site)
        frame.insert(1, "line", range(1, len(frame) + 1))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _check_feature(frame: pd.DataFrame, feature: Feature) -> list[Violation]:
    values = frame[feature.name]
    present = values.notna()
    problems: list[Violation] = []
    if feature.is_coded:
        bad = present & ~values.isin(feature.codes)
        what = f"unknown code (allowed {', '.join(map(str, feature.codes))})"
    else:
        bad = present & ((values < feature.minimum) | (values > feature.maximum))
        what = f"out of range {feature.minimum:g}–{feature.maximum:g}"
    for idx in frame.index[bad]:
        problems.append(
            Violation(
                str(frame.at[idx, "site"]),
                int(frame.at[idx, "line"]),
                feature.name,
                f"{values[idx]:g} is {what}",
                fatal=True,
            )
        )
    return problems


def clean_frame(raw: pd.DataFrame) -> tuple[pd.DataFrame, tuple[Violation, ...]]:
    """Turn the documented 'not measured' zeros into missing values and say where."""
    frame = raw.copy()
    notes: list[Violation] = []
    for column in ZERO_MEANS_MISSING:
        zeros = frame[column] == 0
        for idx in frame.index[zeros]:
            notes.append(
                Violation(
                    str(frame.at[idx, "site"]),
                    int(frame.at[idx, "line"]),
                    column,
                    "0 means not measured; treated as missing",
                    fatal=False,
                )
            )
        frame.loc[zeros, column] = float("nan")
    return frame, tuple(notes)


def validate_frame(raw: pd.DataFrame) -> ValidationReport:
    """Check every row against the schema; missing values are reported, not fatal."""
    frame, notes = clean_frame(raw)
    violations: list[Violation] = list(notes)
    for feature in (*FEATURES, TARGET):
        violations.extend(_check_feature(frame, feature))
    for idx in frame.index[frame[TARGET.name].isna()]:
        violations.append(
            Violation(
                str(frame.at[idx, "site"]),
                int(frame.at[idx, "line"]),
                TARGET.name,
                "target is missing",
                fatal=True,
            )
        )
    missing = {c: int(n) for c, n in frame[list(COLUMNS)].isna().sum().items() if n}
    missing_rows = {
        column: tuple(
            f"{site}:{line}"
            for site, line in frame.loc[frame[column].isna(), ["site", "line"]].itertuples(
                index=False
            )
        )
        for column in missing
    }
    return ValidationReport(
        rows=len(frame),
        missing=missing,
        violations=tuple(violations),
        missing_rows=missing_rows,
    )


@dataclass(frozen=True, slots=True)
class LoadedData:
    frame: pd.DataFrame
    files: DownloadResult
    report: ValidationReport


def load_dataset(settings: Settings, sites: Iterable[str] = DEFAULT_SITES) -> LoadedData:
    """Verified, validated, cleaned rows ready for training; refuses fatal violations."""
    files = verified_files(settings, sites)
    raw = read_raw(files)
    report = validate_frame(raw)
    if not report.ok:
        first = report.fatal[0]
        raise DataError(f"{len(report.fatal)} invalid value(s), first: {first}")
    frame, _ = clean_frame(raw)
    return LoadedData(frame=frame, files=files, report=report)
