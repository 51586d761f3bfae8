"""A patient record as the API receives it: a pydantic model built from the schema.

No field name, range or code is written here: ``PatientFeatures`` is built from
``heartml.data.schema.FEATURES``, so every reader of patients (the API's request bodies, the
cohort scorer's rejected rows) accepts exactly the coding the models were trained on and refuses
the rest with the same message. A value is rejected, with one error entry per bad field, when it
is missing, extra, not a number (strings and booleans are not coerced), fractional where the
schema wants an integer, outside the schema's range, or not one of a coded column's codes
(``cp`` 0, ``thal`` 2). The optional fields may also be null or left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from heartml.data.schema import EXAMPLE_PATIENT, FEATURES, OPTIONAL_FEATURES, Feature


def _reject_non_numbers(value: Any) -> Any:
    # JSON true/false and "63" are client bugs, not numbers: say so instead of coercing.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError(
            "number_type", "Input should be a JSON number, got {kind}", {"kind": _kind(value)}
        )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number_or_null(value: Any) -> Any:
    # An optional field: null means "not done"; anything else must be a number.
    return None if value is None else _reject_non_numbers(value)


def _code_check(feature: Feature) -> AfterValidator:
    allowed = frozenset(feature.codes)
    listed = ", ".join(str(c) for c in feature.codes)

    def check(value: int | None) -> int | None:
        if value is not None and value not in allowed:
            raise PydanticCustomError(
                "unknown_code",
                "Input should be one of the codes {codes} ({description})",
                {"codes": listed, "description": feature.description},
            )
        return value

    return AfterValidator(check)


def _field(feature: Feature) -> tuple[Any, Any]:
    """The annotated type and Field of one feature (optional ones: also null, or absent)."""
    description = feature.description + (f" ({feature.unit})" if feature.unit else "")
    if feature.optional:
        description += (
            ". Optional: null or absent when the test was not done; imputed as in training "
            "and listed in the answer's `imputed`"
        )
    base: Any = int if feature.integer else float
    metadata: list[Any] = [
        BeforeValidator(_number_or_null if feature.optional else _reject_non_numbers)
    ]
    if feature.codes:
        # A coded column is checked against its codes only, so that cp 0 and thal 2 are
        # reported as unknown codes (with the list of valid ones), not as out of range.
        metadata.append(_code_check(feature))
        bounds: dict[str, Any] = {}
    else:
        bounds = {"ge": feature.minimum, "le": feature.maximum}
    value: Any = base | None if feature.optional else base
    annotated = Annotated[value, *metadata]
    field = Field(
        None if feature.optional else ...,
        description=description,
        allow_inf_nan=False,
        json_schema_extra=_documented(feature),
        **bounds,
    )
    return annotated, field


def _documented(feature: Feature) -> Callable[[dict[str, Any]], None]:
    """What the JSON schema adds to a field: its kind, whether it is optional, and a coded
    field's codes, on the number (an optional field's schema is "the number, or null")."""

    def document(schema: dict[str, Any]) -> None:
        schema.update({"x-kind": feature.kind.value, "x-optional": feature.optional})
        if feature.codes:
            number = next(
                (branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"),
                schema,
            )
            number.update(
                enum=list(feature.codes), minimum=feature.minimum, maximum=feature.maximum
            )

    return document


PatientFeatures: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "PatientFeatures",
    __config__=ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [dict(EXAMPLE_PATIENT)]},
    ),
    __doc__="One patient in UCI coding: the 13 features the models were trained on; "
    f"{', '.join(OPTIONAL_FEATURES)} may be null or absent (the test was not done).",
    **{f.name: _field(f) for f in FEATURES},
)
