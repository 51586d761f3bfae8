"""The feature schema, from the one schema module."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from heartml.data.patient import PatientFeatures
from heartml.data.schema import describe_schema
from heartml.serve.deps import SettingsDep
from heartml.serve.schemas import EXPLANATION_FIELDS, SchemaInfo

router = APIRouter(tags=["schema"])


@router.get(
    "/schema",
    response_model=SchemaInfo,
    summary="Fields, types, ranges and allowed codes of a patient record",
)
async def get_schema(settings: SettingsDep) -> dict[str, Any]:
    return {
        **describe_schema(),
        "max_batch_size": settings.max_batch_size,
        "max_body_bytes": settings.max_body_bytes,
        "request_schema": PatientFeatures.model_json_schema(),
        "explanation": EXPLANATION_FIELDS,
    }
