"""A site's labelled sample, read and validated as ``heartml data validate`` validates.

Two sources: one of the four UCI sites' files, fetched (or reused) through
:mod:`heartml.data.download` with its sha256 checked, or a CSV the site gives (``--data``)
in UCI coding with a header naming the 13 fields and the outcome column ``num`` (``?`` or an
empty cell: missing). Either way every row is checked against the schema
(:func:`heartml.data.validate.validate_frame`); a sample with an unknown code or an
out-of-range value is refused with the same row-level report, nothing of it used.

Row ids are ``site:line``, the line of the file (a CSV's header is not counted), as training
names the rows of the sites it scores, so two versions' predictions pair row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from heartml.data.download import ALL_SITES, DataError, download_data, sha256_of
from heartml.data.schema import COLUMNS, FEATURE_NAMES, TARGET
from heartml.data.validate import ValidationReport, clean_frame, read_raw, validate_frame

if TYPE_CHECKING:
    import pandas as pd

    from heartml.settings import Settings


class InvalidSampleError(DataError):
    """Rows outside the schema: the report says which; the message is its one-line summary."""

    def __init__(self, report: ValidationReport) -> None:
        first = report.fatal[0]
        super().__init__(f"{len(report.fatal)} invalid value(s), first: {first}")
        self.report = report

    def __reduce__(self) -> tuple[type[InvalidSampleError], tuple[ValidationReport]]:
        # Raised in the adaptation worker: it reaches the command through pickle.
        return (type(self), (self.report,))


@dataclass(frozen=True, slots=True)
class SiteSample:
    """A site's validated rows: features (schema order, missing as NaN), outcomes, row ids."""

    site: str
    source: Path
    sha256: str
    features: NDArray[np.float64]
    y: NDArray[np.int64]
    ids: NDArray[np.object_]
    report: ValidationReport

    def __len__(self) -> int:
        return len(self.y)


def read_site_csv(path: Path, site: str) -> pd.DataFrame:
    """A site's CSV as raw rows (``site``, ``line`` and the schema's columns); one line for a
    file that cannot be read or lacks a column."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, na_values="?", skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if TARGET.name not in frame.columns:
        raise DataError(
            f"{path}: no outcome column '{TARGET.name}' (0 no disease, 1-4 disease): adapting "
            "needs the site's labelled patients"
        )
    absent = [c for c in FEATURE_NAMES if c not in frame.columns]
    if absent:
        raise DataError(f"{path}: missing column(s) {', '.join(absent)}")
    values = frame[list(COLUMNS)]
    try:
        values = values.astype("float64")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: a value is not a number ({exc})") from exc
    values.insert(0, "site", site)
    values.insert(1, "line", range(1, len(values) + 1))
    return values


def read_site_sample(settings: Settings, site: str, data: Path | None) -> SiteSample:
    """The site's labelled rows, validated: from ``data`` or, for a UCI site, its file."""
    if data is None:
        if site not in ALL_SITES:
            raise DataError(
                f"no data for site '{site}': give its labelled patients with --data FILE "
                f"(the UCI sites {', '.join(ALL_SITES)} have their own file)"
            )
        files = download_data(settings, [site])
        raw = read_raw(files)
        source, digest = files.files[0].path, files.files[0].sha256
    else:
        if not data.is_file():
            raise DataError(f"{data}: no such file")
        raw = read_site_csv(data, site)
        source, digest = data, sha256_of(data)
    if raw.empty:
        raise DataError(f"{source}: no rows")
    report = validate_frame(raw)
    if not report.ok:
        raise InvalidSampleError(report)
    frame, _ = clean_frame(raw)
    return SiteSample(
        site=site,
        source=source,
        sha256=digest,
        features=frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64),
        y=(frame[TARGET.name].to_numpy() > 0).astype(np.int64),
        ids=(site + ":" + frame["line"].astype(str)).to_numpy(dtype=object),
        report=report,
    )
