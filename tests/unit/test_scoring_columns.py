"""The cohort scorer's batch functions: the vectorised checks agree with the API's request model
on every value, a refused row carries the model's own messages, and the output's columns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from heartml.data.patient import PatientFeatures
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES, FEATURES, OPTIONAL_FEATURES
from heartml.scoring.columns import OPTIONAL_BITS, check_batch, imputed_labels, missing_required
from heartml.scoring.output import (
    OUTPUT_COLUMNS,
    KeepError,
    RunStamp,
    build_output,
    build_rejects,
    check_keep,
    output_schema,
)

# Values around every edge of the schema: codes and non-codes, bounds, fractions, infinities.
EDGES: list[Any] = [0, 1, 2, 3, 4, 5, 6, 7, 17, 18, 59.5, 60, 80, 100, 101, 250, 251, 700, 701]
EDGES += [-3.0, -3.1, 2.3, 7.0, 7.1, 1.0, 63.0, float("inf"), -float("inf"), None]


def api_verdict(record: dict[str, Any]) -> list[tuple[str, str]]:
    """What POST /predict says of a record: its 422 entries as (field, message), or []."""
    present = {k: v for k, v in record.items() if v is not None}
    try:
        PatientFeatures.model_validate(present)
    except ValidationError as exc:
        return [(str(e["loc"][0]), e["msg"]) for e in exc.errors()]
    return []


def one_column_batch(name: str, values: list[Any], kind: pa.DataType | None = None) -> pa.Table:
    columns = {f: [EXAMPLE_PATIENT[f]] * len(values) for f in FEATURE_NAMES}
    columns[name] = values
    arrays = {f: pa.array(v, kind if f == name else None) for f, v in columns.items()}
    return pa.table(arrays)


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_every_edge_value_is_judged_as_the_api_judges_it(feature: Any) -> None:
    batch = one_column_batch(feature.name, EDGES, pa.float64())
    checked = check_batch(batch, first_row=10)
    refused = {r.row - 10 for r in checked.rejections}
    for i, value in enumerate(EDGES):
        expected = api_verdict({**EXAMPLE_PATIENT, feature.name: value})
        mine = [(r.field, r.message) for r in checked.rejections if r.row == 10 + i]
        assert mine == expected, (feature.name, value)
        assert (i in refused) == bool(expected)
    assert checked.scored + len(refused) == checked.read == len(EDGES)


def test_accepted_rows_are_the_values_in_schema_order_with_nan_for_absent() -> None:
    batch = one_column_batch("chol", [233, None, float("nan")], pa.float64())
    checked = check_batch(batch)
    assert checked.accepted is None and checked.rejections == ()
    expected = np.array([[EXAMPLE_PATIENT[f] for f in FEATURE_NAMES]] * 3, dtype=np.float64)
    expected[1:, FEATURE_NAMES.index("chol")] = np.nan
    np.testing.assert_array_equal(checked.rows, expected)
    assert checked.imputed.tolist() == [0, OPTIONAL_BITS["chol"], OPTIONAL_BITS["chol"]]


def test_text_cells_read_as_numbers_and_the_rest_refused_as_the_api_refuses_strings() -> None:
    batch = one_column_batch("age", ["63", " 70 ", "63.5", "abc", None])
    checked = check_batch(batch)
    assert checked.rows[:, 0].tolist() == [63.0, 70.0]
    assert [(r.row, r.field, r.message) for r in checked.rejections] == [
        (3, "age", "Input should be a valid integer, got a number with a fractional part"),
        (4, "age", "Input should be a JSON number, got a string"),
        (5, "age", "Field required"),
    ]
    assert checked.accepted is not None and checked.accepted.tolist() == [0, 1]


def test_booleans_are_refused_and_integer_columns_with_nulls_read() -> None:
    refused = check_batch(one_column_batch("sex", [True, None]))
    assert [(r.row, r.message) for r in refused.rejections] == [
        (1, "Input should be a JSON number, got a boolean"),
        (2, "Field required"),
    ]
    checked = check_batch(one_column_batch("ca", [0, None, 3], pa.int64()))
    assert checked.scored == 3 and np.isnan(checked.rows[1, FEATURE_NAMES.index("ca")])


def test_an_absent_optional_column_is_imputed_on_every_row() -> None:
    table = one_column_batch("age", [63, 64]).drop_columns(list(OPTIONAL_FEATURES))
    checked = check_batch(table)
    assert checked.scored == 2
    assert checked.imputed.tolist() == [31, 31]
    assert imputed_labels()[31] == ",".join(OPTIONAL_FEATURES)
    assert missing_required(table.schema.names) == []
    assert missing_required(["age", "sex"]) == ["cp", "trestbps", "restecg", "thalach", "exang",
                                                "oldpeak"]  # fmt: skip


def test_imputed_labels_list_the_absent_fields_in_schema_order() -> None:
    labels = imputed_labels()
    assert len(labels) == 32 and labels[0] == ""
    assert labels[OPTIONAL_BITS["chol"] | OPTIONAL_BITS["thal"]] == "chol,thal"


STAMP = RunStamp("heart-disease-x", 3, True, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.mark.parametrize("dictionary", [True, False])
def test_the_output_batch_has_the_contract_columns(dictionary: bool) -> None:
    table = one_column_batch("age", [63, 10, 70]).append_column("id", pa.array(["a", "b", "c"]))
    batch = table.to_batches()[0]
    checked = check_batch(batch)
    keep = check_keep(batch.schema.names, ["id", "chol", "id"])
    schema = output_schema(batch.schema, keep, dictionary=dictionary)
    proba = np.array([[0.25, 0.75], [0.5, 0.5]])
    out = build_output(batch, checked, proba, STAMP, schema)
    assert out.schema == schema
    assert out.schema.names == ["id", "chol", *OUTPUT_COLUMNS]
    rows = out.to_pylist()
    assert [r["id"] for r in rows] == ["a", "c"]  # row 2 (age 10) refused
    assert [r["probability"] for r in rows] == [0.75, 0.5]
    assert [r["prediction"] for r in rows] == [1, 0]  # a tie is 0, as /predict
    assert {(r["model_name"], r["model_version"], r["site_adapted"]) for r in rows} == {
        ("heart-disease-x", 3, True)
    }
    assert {r["scored_at"] for r in rows} == {STAMP.scored_at}
    assert [r["imputed"] for r in rows] == ["", ""]
    assert pa.types.is_dictionary(out.schema.field("imputed").type) is dictionary
    rejects = build_rejects(checked).to_pylist()
    assert rejects == [
        {"row": 2, "field": "age", "message": "Input should be greater than or equal to 18"}
    ]


def test_keep_refuses_unknown_and_reserved_columns() -> None:
    with pytest.raises(KeepError, match="no column 'mrn'"):
        check_keep(["id"], ["mrn"])
    with pytest.raises(KeepError, match="its own column 'probability'"):
        check_keep(["probability"], ["probability"])
    with pytest.raises(KeepError, match="names beginning __heartml_ are heartml's own"):
        check_keep(["__heartml_imputed_mask"], ["__heartml_imputed_mask"])


def test_a_file_of_small_row_groups_is_read_in_full_batches(tmp_path: Any) -> None:
    """Row groups end the reader's batches (each is let go once read); the scorer still gets
    batches of its size, in order, every row once."""
    import pyarrow.parquet as pq

    from heartml.scoring.local import _parquet_batches

    table = pa.table(
        {"id": pa.array(range(10), pa.int64())}
        | {name: pa.array(np.full(10, 1.0)) for name in FEATURE_NAMES}
    )
    path = tmp_path / "small-groups.parquet"
    pq.write_table(table, path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    batches = list(_parquet_batches([str(path)], ["id", *FEATURE_NAMES], 8, ("id",)))
    assert [b.num_rows for b in batches] == [6, 4]  # none under half of 8 but the file's last
    assert pa.Table.from_batches(batches).column("id").to_pylist() == list(range(10))
    # Groups of at least half a batch pass as they are.
    whole = list(_parquet_batches([str(path)], ["id", *FEATURE_NAMES], 4, ("id",)))
    assert [b.num_rows for b in whole] == [3, 3, 3, 1]
