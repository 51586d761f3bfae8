"""The scored batch: kept columns, the model's answer, and where it came from.

Pure (pyarrow and numpy): the local scorer builds every output batch here, and a Spark
``mapInArrow`` function its varying columns (:func:`build_scores`; the JVM adds the rest, from
the same schema), so both engines write the same columns with the same types:

=================  ==========================================================================
kept columns       ``--keep``: as read, except a feature, which is written as validated
                   (float64, null where absent)
``probability``    float64, P(heart disease), as ``/predict`` answers
``prediction``     int8, 1 when P(disease) > P(no disease), the served rule (ties to 0)
``imputed``        string, the optional fields imputed, comma-separated in schema order, ""
                   when none (``/predict``'s ``imputed`` list, joined)
``model_name``     string, the registered model
``model_version``  int32
``site_adapted``   bool, the version was adapted for a site (it carries a ``site`` tag)
``scored_at``      timestamp (µs, UTC), one value for the whole run
=================  ==========================================================================

``imputed``, ``model_name`` and ``scored_at`` are dictionary-encoded by default (``imputed``
has at most 2^5 values, the others one): the 32 labels are built once and each batch only
adds its masks as indices, which costs next to nothing; readers see plain strings. Spark's
Arrow reader wants plain columns: ``dictionary=False`` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from heartml.data.schema import FEATURE_NAMES
from heartml.errors import UserError
from heartml.scoring.columns import CheckedBatch, imputed_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

OUTPUT_COLUMNS: tuple[str, ...] = (
    "probability",
    "prediction",
    "imputed",
    "model_name",
    "model_version",
    "site_adapted",
    "scored_at",
)
# The answer's own columns, which vary from row to row; the others take few values (constants of
# the run, and the imputed fields' text).
ANSWER_COLUMNS = OUTPUT_COLUMNS[:2]
FEW_VALUED_COLUMNS = OUTPUT_COLUMNS[2:]
_IMPUTED = pa.array(imputed_labels(), pa.string())
# Columns heartml adds on the way (the Spark engine's partition index and imputed mask): no
# kept column may take such a name.
RESERVED_PREFIX = "__heartml_"
_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


class KeepError(UserError):
    """A ``--keep`` column the input lacks, or that the output writes itself."""


@dataclass(frozen=True, slots=True)
class RunStamp:
    """What every row of one run carries: the model that scored it and when."""

    model_name: str
    model_version: int
    site_adapted: bool
    scored_at: datetime

    def __post_init__(self) -> None:
        if self.scored_at.tzinfo is None:
            raise ValueError("scored_at must be timezone-aware")


def check_keep(names: Sequence[str], keep: Sequence[str]) -> tuple[str, ...]:
    """``keep`` without duplicates, each a column of the input (``names``) and none an output's."""
    for name in keep:
        if name in OUTPUT_COLUMNS:
            raise KeepError(f"--keep {name}: the output writes its own column {name!r}")
        if name.startswith(RESERVED_PREFIX):
            raise KeepError(f"--keep {name}: names beginning {RESERVED_PREFIX} are heartml's own")
        if name not in names and name not in _FEATURE_INDEX:
            raise KeepError(f"--keep {name}: the input has no column {name!r}")
    return tuple(dict.fromkeys(keep))


def output_schema(kept: pa.Schema, keep: Sequence[str], *, dictionary: bool = True) -> pa.Schema:
    """The output's schema for an input of schema ``kept`` and the columns ``keep``."""
    text = pa.dictionary(pa.int8(), pa.string()) if dictionary else pa.string()
    stamp = pa.timestamp("us", tz="UTC")
    fields = [
        pa.field(name, pa.float64())
        if name in _FEATURE_INDEX
        else kept.field(kept.get_field_index(name))
        for name in keep
    ]
    return pa.schema(
        [
            *fields,
            pa.field("probability", pa.float64(), nullable=False),
            pa.field("prediction", pa.int8(), nullable=False),
            pa.field("imputed", text, nullable=False),
            pa.field("model_name", text, nullable=False),
            pa.field("model_version", pa.int32(), nullable=False),
            pa.field("site_adapted", pa.bool_(), nullable=False),
            pa.field("scored_at", pa.dictionary(pa.int8(), stamp) if dictionary else stamp, False),
        ]
    )


# What a Spark worker hands back in place of the few-valued columns, which the JVM adds
# (heartml.scoring.spark): the imputed fields' mask.
IMPUTED_MASK = RESERVED_PREFIX + "imputed_mask"


def scores_schema(kept: pa.Schema, keep: Sequence[str]) -> pa.Schema:
    """The kept columns, ``probability``, ``prediction`` and :data:`IMPUTED_MASK` (int8, the bits of
    :data:`heartml.scoring.columns.OPTIONAL_BITS`; :func:`imputed_labels` gives its text)."""
    full = output_schema(kept, keep, dictionary=False)
    return pa.schema(
        [
            *list(full)[: len(full) - len(FEW_VALUED_COLUMNS)],
            pa.field(IMPUTED_MASK, pa.int8(), nullable=False),
        ]
    )


def _scores(
    batch: pa.RecordBatch,
    checked: CheckedBatch,
    probabilities: NDArray[np.floating[Any]],
    kept_names: Sequence[str],
) -> list[pa.Array]:
    """The kept columns of the accepted rows, then ``probability`` and ``prediction``."""
    columns: list[pa.Array] = []
    for name in kept_names:
        if name in _FEATURE_INDEX:
            values = checked.rows[:, _FEATURE_INDEX[name]]
            columns.append(pa.array(values, pa.float64(), from_pandas=True))
            continue
        column = batch.column(name)
        if checked.accepted is not None:
            column = column.take(pa.array(checked.accepted))
        columns.append(column)
    negative = np.asarray(probabilities[:, 0], dtype=np.float64)
    positive = np.asarray(probabilities[:, 1], dtype=np.float64)
    prediction = (positive > negative).astype(np.int8)  # ties to 0, as /predict
    return [*columns, pa.array(positive, pa.float64()), pa.array(prediction, pa.int8())]


def build_scores(
    batch: pa.RecordBatch,
    checked: CheckedBatch,
    probabilities: NDArray[np.floating[Any]],
    schema: pa.Schema,
) -> pa.RecordBatch:
    """:func:`build_output`'s varying columns only, in ``schema`` (:func:`scores_schema`)."""
    kept_names = schema.names[: len(schema) - len(ANSWER_COLUMNS) - 1]  # the mask is last
    columns = _scores(batch, checked, probabilities, kept_names)
    columns.append(pa.array(checked.imputed, pa.int8()))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def build_output(
    batch: pa.RecordBatch,
    checked: CheckedBatch,
    probabilities: NDArray[np.floating[Any]],
    stamp: RunStamp,
    schema: pa.Schema,
) -> pa.RecordBatch:
    """The output batch of ``batch``'s accepted rows, scored ``probabilities`` (rows × 2:
    P(no disease), P(disease)), in ``schema`` (:func:`output_schema`)."""
    count = checked.scored
    kept_names = schema.names[: len(schema) - len(OUTPUT_COLUMNS)]
    columns = _scores(batch, checked, probabilities, kept_names)
    dictionary = pa.types.is_dictionary(schema.field("imputed").type)
    columns += [
        _imputed_column(checked.imputed, dictionary),
        _constant(stamp.model_name, count, pa.string(), dictionary),
        pa.array(np.full(count, stamp.model_version, dtype=np.int32)),
        pa.array(np.full(count, stamp.site_adapted, dtype=bool)),
        _constant(stamp.scored_at, count, schema.field("scored_at").type, dictionary),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _imputed_column(masks: NDArray[np.int8], dictionary: bool) -> pa.Array:
    indices = pa.array(masks, pa.int8())
    encoded = pa.DictionaryArray.from_arrays(indices, _IMPUTED)
    return encoded if dictionary else encoded.dictionary_decode()


def _constant(value: object, count: int, kind: pa.DataType, dictionary: bool) -> pa.Array:
    if dictionary:
        value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(count, dtype=np.int8)), pa.array([value], value_type)
        )
    return pa.repeat(pa.scalar(value, kind), count)


def rejects_schema() -> pa.Schema:
    """The rejects file: one line per refused field of a row."""
    return pa.schema(
        [
            pa.field("row", pa.int64(), nullable=False),
            pa.field("field", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ]
    )


def build_rejects(checked: CheckedBatch) -> pa.RecordBatch:
    """The rejects of one batch, as rows of :func:`rejects_schema`."""
    rejections = checked.rejections
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r.row for r in rejections], pa.int64()),
            pa.array([r.field for r in rejections], pa.string()),
            pa.array([r.message for r in rejections], pa.string()),
        ],
        schema=rejects_schema(),
    )


def now_utc() -> datetime:
    """The run's ``scored_at`` when none is given: now, in UTC, to the microsecond."""
    return datetime.now(UTC)


EXPLANATION_BASE = "explanation_base"
LOG_ODDS = "log_odds"
CONTRIBUTION_PREFIX = "contribution_"


def explanation_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the explanation's columns after it: the base value, the log-odds and
    one contribution to the log-odds per UCI field (``contribution_<field>``)."""
    fields = [
        pa.field(EXPLANATION_BASE, pa.float64(), nullable=False),
        pa.field(LOG_ODDS, pa.float64(), nullable=False),
        *(pa.field(CONTRIBUTION_PREFIX + n, pa.float64(), nullable=False) for n in FEATURE_NAMES),
    ]
    return pa.schema([*schema, *fields])


def with_explanation(
    batch: pa.RecordBatch,
    base: float,
    log_odds: NDArray[np.float64],
    contributions: NDArray[np.float64],
    schema: pa.Schema,
) -> pa.RecordBatch:
    """``batch`` (a scored output batch) with its rows' explanations, in ``schema``
    (:func:`explanation_schema`): base + the contributions is each row's log-odds."""
    count = batch.num_rows
    columns = [
        *batch.columns,
        pa.array(np.full(count, base, dtype=np.float64)),
        pa.array(np.asarray(log_odds, dtype=np.float64)),
        *(pa.array(np.ascontiguousarray(contributions[:, i])) for i in range(len(FEATURE_NAMES))),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
