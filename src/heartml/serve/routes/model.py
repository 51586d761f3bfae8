"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from heartml.serve.deps import EvidenceDep, HolderDep, json_response
from heartml.serve.errors import NotReadyError
from heartml.serve.evidence_schemas import LiveModelInfo
from heartml.serve.holder import ModelHolder
from heartml.serve.schemas import Problem

router = APIRouter(tags=["model"])


def model_info(holder: ModelHolder) -> dict[str, Any] | None:
    """The ``ModelInfo`` of the served model, or None when none is loaded."""
    served = holder.current
    if served is None:
        return None
    ref = served.ref
    return {
        **ref.summary_fields(),
        "loaded_at": served.loaded_at,
        "source": ref.source,
        "uri": ref.uri,
        "engine": served.engine.name,
        "reload_interval_s": holder.reload_interval_s,
        "last_check_at": holder.last_check_at,
        "last_check": holder.last_check,
        "last_error": holder.last_error,
        "registry_refusal": holder.registry_refusal,
        "reloads": holder.reloads,
        "failed_reloads": holder.failed_reloads,
    }


@router.get(
    "/model",
    response_model=LiveModelInfo,
    summary="The served model: name, version, run, score, provenance, reload status, and the "
    "shadowed challenger's agreement and input drift so far",
    responses={503: {"model": Problem, "description": "No model loaded yet"}},
)
async def get_model(holder: HolderDep, evidence: EvidenceDep) -> Response:
    info = model_info(holder)
    if info is None:
        raise NotReadyError(holder.not_ready_reason())
    return json_response(
        {**info, "shadow": evidence.shadow.describe(), "drift": evidence.describe()}
    )
