"""One Arrow batch of patients in UCI coding → the rows the model scores, and the refusals.

Pure (pyarrow and numpy in, values out), so that the local scorer and a Spark ``mapInArrow``
function call it batch by batch. The checks are vectorised: per feature column, one pass
decides which rows are readable numbers, present when required, integers where the schema
wants one, within range or among the codes. The rows that fail are few; for them alone the
API's own request model (:class:`heartml.data.patient.PatientFeatures`) is run, so a refused
row carries the exact message ``POST /predict`` answers with in its 422, and the two can never
drift apart. Where a vectorised check and the request model disagree, the model wins. A
field's verdict depends on its value alone, so each distinct refused value of a field is put to
the model once: a file with many bad rows is refused at the speed of a dictionary look-up.

How a file's cells map to the API's JSON:

* a null cell (an empty CSV field, ``?`` in UCI's own files, a Parquet null, or NaN) is an
  absent field: imputed when the field is optional, ``Field required`` when it is not;
* a column missing from the file is absent on every row (a required one stops the run before
  any row: :func:`missing_required`);
* a number is a number whatever the column's type; text that does not read as a number and a
  boolean are refused as the API refuses them (``Input should be a JSON number, got a string``);
* other columns are not features: they are ignored, or carried to the output with ``--keep``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from pydantic import ValidationError

from heartml.data.patient import PatientFeatures
from heartml.data.schema import (
    EXAMPLE_PATIENT,
    FEATURE_NAMES,
    FEATURES,
    OPTIONAL_FEATURES,
    REQUIRED_FEATURES,
    Feature,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

# The cells a CSV reader takes for missing, beyond empty ones: the usual spellings, and "?",
# which the UCI files themselves write.
CSV_NULLS: tuple[str, ...] = ("", "?", "NA", "N/A", "NaN", "nan", "NULL", "null", "None")

# Bit k of an imputed-fields mask is set when OPTIONAL_FEATURES[k] was absent.
OPTIONAL_BITS: dict[str, int] = {name: 1 << k for k, name in enumerate(OPTIONAL_FEATURES)}
_OPTIONAL_INDEX = tuple(i for i, f in enumerate(FEATURES) if f.optional)


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused field of one row: the row's number in the input (1-based), the API's message."""

    row: int
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class CheckedBatch:
    """What one batch gives: the accepted rows ready for the model, and the refusals.

    ``rows``: float64, accepted rows × the 13 features in schema order, NaN where a value is
    absent (the model imputes it). ``accepted``: the accepted rows' positions in the batch, or
    None when every row was accepted (then nothing needs to be taken from the batch).
    ``imputed``: per accepted row, the mask of its absent optional fields (:data:`OPTIONAL_BITS`).
    """

    rows: NDArray[np.float64]
    accepted: NDArray[np.int64] | None
    imputed: NDArray[np.int8]
    rejections: tuple[Rejection, ...]
    read: int

    @property
    def scored(self) -> int:
        return len(self.rows)

    @property
    def rejected(self) -> int:
        return self.read - self.scored


def missing_required(names: Sequence[str]) -> list[str]:
    """The required features that are not among a file's column ``names``, in schema order."""
    present = set(names)
    return [name for name in REQUIRED_FEATURES if name not in present]


def _numbers(column: pa.Array | pa.ChunkedArray | None, length: int) -> tuple[Any, Any]:
    """The column as float64 (NaN: absent) and the mask of cells that are not numbers."""
    if column is None:
        return np.full(length, np.nan), None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        floats = column if pa.types.is_float64(kind) else pc.cast(column, pa.float64())
        return floats.to_numpy(zero_copy_only=False), None
    if pa.types.is_null(kind):
        return np.full(length, np.nan), None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some cell is not a number: read them one by one (a rare, broken column)
        values = np.full(length, np.nan)
        unreadable = np.zeros(length, dtype=bool)
        for i, text in enumerate(column.to_pylist()):
            number = _read_number(text)
            if isinstance(number, str):
                unreadable[i] = True
            elif number is not None:
                values[i] = number
        return values, unreadable
    # Booleans, dates, lists...: not numbers, wherever a value is present.
    return np.full(length, np.nan), column.is_valid().to_numpy(zero_copy_only=False)


def _read_number(text: str | None) -> int | float | str | None:
    """A CSV cell as the JSON value it stands for: an int, a float, or the text itself."""
    if text is None:
        return None
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        return text
    return None if math.isnan(number) else number


def _fails(feature: Feature, values: NDArray[np.float64]) -> NDArray[np.bool_]:
    """The rows whose value the schema refuses (absent values not counted here)."""
    with np.errstate(invalid="ignore"):
        if feature.codes:
            wrong = ~np.isin(values, np.asarray(feature.codes, dtype=np.float64))
        else:
            wrong = ~((values >= feature.minimum) & (values <= feature.maximum))
            if feature.integer:
                wrong |= np.floor(values) != values
    present = ~np.isnan(values)
    result: NDArray[np.bool_] = wrong & present
    return result


def check_batch(batch: pa.RecordBatch | pa.Table, first_row: int = 1) -> CheckedBatch:
    """Validate one batch whose first row is row ``first_row`` of the input (1-based)."""
    length = batch.num_rows
    names = set(batch.schema.names)
    # Field by field into contiguous rows of a (fields, rows) array, checked there, then turned
    # into the (rows, fields) matrix the model takes in one copy: writing each field straight
    # into a column of that matrix strides through memory and cost more than the checks.
    fields = np.empty((len(FEATURES), length), dtype=np.float64)
    suspects: dict[str, NDArray[np.bool_]] = {}  # per field, the cells the checks refuse
    for i, feature in enumerate(FEATURES):
        column = batch.column(feature.name) if feature.name in names else None
        values, unreadable = _numbers(column, length)
        fields[i] = values
        refused = _fails(feature, fields[i])
        if not feature.optional:
            refused |= np.isnan(fields[i])
        if unreadable is not None:
            refused |= unreadable
        if refused.any():
            suspects[feature.name] = refused
    rows = np.ascontiguousarray(fields.T)
    if not suspects:
        return CheckedBatch(rows, None, _imputed_masks(fields), (), length)

    # The request model words each refused cell. A field's verdict depends on its value alone
    # (no rule spans fields), so each distinct value of a field is validated once.
    found: list[tuple[int, int, str]] = []  # (position, field's schema index, message)
    for name, refused in suspects.items():
        positions = np.flatnonzero(refused)
        column = batch.column(name) if name in names else None
        cells = [None] * len(positions) if column is None else column.take(positions).to_pylist()
        index = FEATURE_NAMES.index(name)
        for position, cell in zip(positions.tolist(), cells, strict=True):
            for message in _field_errors(name, _as_json(cell)):
                found.append((position, index, message))
    found.sort(key=lambda item: (item[0], item[1]))
    refused_rows = np.zeros(length, dtype=bool)
    refused_rows[[position for position, _, _ in found]] = True
    rejections = tuple(
        Rejection(first_row + position, FEATURE_NAMES[index], message)
        for position, index, message in found
    )
    if not refused_rows.any():  # the request model accepts what the checks doubted
        return CheckedBatch(rows, None, _imputed_masks(fields), (), length)
    accepted = np.flatnonzero(~refused_rows).astype(np.int64)
    return CheckedBatch(
        rows[accepted], accepted, _imputed_masks(fields[:, accepted]), rejections, length
    )


def _imputed_masks(fields: NDArray[np.float64]) -> NDArray[np.int8]:
    """Per row, the bits of its absent optional fields; ``fields``: (fields, rows)."""
    masks = np.zeros(fields.shape[1], dtype=np.int8)
    for bit, index in enumerate(_OPTIONAL_INDEX):
        masks |= np.isnan(fields[index]).view(np.int8) << bit
    return masks


def _as_json(cell: Any) -> Any:
    """A cell as the JSON value it stands for (None: the field is absent)."""
    if isinstance(cell, str):
        return _read_number(cell)
    if isinstance(cell, float) and math.isnan(cell):
        return None
    return cell


_VALID = {f.name: EXAMPLE_PATIENT[f.name] for f in FEATURES}


@functools.lru_cache(maxsize=4096)
def _cached_errors(name: str, kind: str, value: Any) -> tuple[str, ...]:
    return _validate_field(name, value)


def _validate_field(name: str, value: Any) -> tuple[str, ...]:
    record = {k: v for k, v in _VALID.items() if k != name}
    if value is not None:  # an absent value is a key left out of the JSON
        record[name] = value
    try:
        PatientFeatures.model_validate(record)
    except ValidationError as exc:
        return tuple(
            error["msg"]
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        )
    return ()


def _field_errors(name: str, value: Any) -> tuple[str, ...]:
    """The request model's messages for ``value`` in field ``name`` (none: it accepts it)."""
    try:
        # The type is part of the key: 1, 1.0 and True are equal, and judged differently.
        return _cached_errors(name, type(value).__name__, value)
    except TypeError:  # an unhashable value (a list cell)
        return _validate_field(name, value)


def imputed_labels() -> list[str]:
    """The ``imputed`` text of every mask: the absent optional fields, comma-separated, in
    schema order ("" when none), at the mask's index."""
    return [
        ",".join(name for name, bit in OPTIONAL_BITS.items() if mask & bit)
        for mask in range(1 << len(OPTIONAL_FEATURES))
    ]
