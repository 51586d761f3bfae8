"""The API's request models come from heartml.data.schema and reject bad input per field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from heartml.data.patient import PatientFeatures
from heartml.data.schema import (
    EXAMPLE_PATIENT,
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    OPTIONAL_FEATURES,
    REQUIRED_FEATURES,
)
from heartml.serve.schemas import BatchRequest, imputed_fields


def errors_of(payload: Any) -> list[dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(ValidationError) as caught:
        PatientFeatures.model_validate_json(raw)
    return [dict(error) for error in caught.value.errors()]


def test_fields_come_from_the_schema_in_order() -> None:
    assert tuple(PatientFeatures.model_fields) == FEATURE_NAMES
    properties = PatientFeatures.model_json_schema()["properties"]
    for feature in FEATURES:
        spec = properties[feature.name]
        # An optional field is "the number, or null": the number's constraints are its branch.
        number = spec["anyOf"][0] if feature.optional else spec
        assert spec.get("anyOf", [{}, {"type": "null"}])[1] == {"type": "null"}
        assert number["type"] == ("integer" if feature.integer else "number")
        assert number["minimum"] == feature.minimum
        assert number["maximum"] == feature.maximum
        if feature.codes:
            assert number["enum"] == list(feature.codes)
        assert feature.description in spec["description"]
        assert spec["x-optional"] is feature.optional


def test_the_example_is_valid_and_integral_floats_are_accepted() -> None:
    patient = PatientFeatures.model_validate(EXAMPLE_PATIENT)
    assert tuple(patient.__dict__) == FEATURE_NAMES
    as_floats = {k: float(v) for k, v in EXAMPLE_PATIENT.items()}
    assert PatientFeatures.model_validate_json(json.dumps(as_floats)).__dict__["age"] == 63


@pytest.mark.parametrize("name", REQUIRED_FEATURES)
def test_each_missing_required_field_is_one_entry(name: str) -> None:
    payload = {k: v for k, v in EXAMPLE_PATIENT.items() if k != name}
    assert [(e["type"], e["loc"]) for e in errors_of(payload)] == [("missing", (name,))]


@pytest.mark.parametrize("name", OPTIONAL_FEATURES)
def test_an_optional_field_may_be_null_or_absent(name: str) -> None:
    null = PatientFeatures.model_validate({**EXAMPLE_PATIENT, name: None})
    absent = PatientFeatures.model_validate({k: v for k, v in EXAMPLE_PATIENT.items() if k != name})
    assert null == absent and null.__dict__[name] is None
    assert imputed_fields(null) == [name]
    assert imputed_fields(PatientFeatures.model_validate(EXAMPLE_PATIENT)) == []


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("age", "63", "number_type"),
        ("sex", True, "number_type"),
        ("age", None, "number_type"),
        ("chol", "", "number_type"),  # optional is null or a number, never a string
        ("thal", [3], "number_type"),
        ("oldpeak", {"v": 1}, "number_type"),
        ("age", 17, "greater_than_equal"),
        ("age", 101, "less_than_equal"),
        ("trestbps", 0, "greater_than_equal"),  # the Swiss/VA "not measured" zero
        ("chol", 701, "less_than_equal"),
        ("oldpeak", -3.5, "greater_than_equal"),
        ("oldpeak", 7.5, "less_than_equal"),
        ("age", 63.5, "int_from_float"),
        ("cp", 0, "unknown_code"),
        ("cp", 5, "unknown_code"),
        ("thal", 2, "unknown_code"),
        ("thal", 4, "unknown_code"),
        ("restecg", 3, "unknown_code"),
        ("slope", 0, "unknown_code"),
        ("ca", 4, "unknown_code"),
        ("sex", 2, "unknown_code"),
    ],
)
def test_bad_values_are_one_entry_naming_the_field(field: str, value: Any, kind: str) -> None:
    errors = errors_of({**EXAMPLE_PATIENT, field: value})
    assert [(e["type"], e["loc"]) for e in errors] == [(kind, (field,))]


def test_unknown_codes_list_the_valid_ones() -> None:
    (error,) = errors_of({**EXAMPLE_PATIENT, "thal": 2})
    assert "3, 6, 7" in error["msg"]
    assert FEATURES_BY_NAME["thal"].description in error["msg"]


def test_non_finite_numbers_are_rejected() -> None:
    body = json.dumps({**EXAMPLE_PATIENT, "oldpeak": float("nan")}).encode()
    assert [e["loc"] for e in errors_of(body)] == [("oldpeak",)]


def test_extra_fields_and_several_bad_fields_are_one_entry_each() -> None:
    payload = {**EXAMPLE_PATIENT, "cp": 0, "chol": "high", "unknown": 1, "other": 2}
    del payload["age"]
    locs = sorted(e["loc"][0] for e in errors_of(payload))
    assert locs == ["age", "chol", "cp", "other", "unknown"]


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[]", b"null", b"1"])
def test_malformed_bodies_are_validation_errors(raw: bytes) -> None:
    assert errors_of(raw)


def test_a_batch_needs_at_least_one_instance_and_reports_rows_by_index() -> None:
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"instances": []})
    with pytest.raises(ValidationError) as caught:
        BatchRequest.model_validate({"instances": [EXAMPLE_PATIENT, {**EXAMPLE_PATIENT, "cp": 9}]})
    assert [e["loc"] for e in caught.value.errors()] == [("instances", 1, "cp")]
