"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from heartml.serve.deps import EvidenceDep, HolderDep, SettingsDep, json_response
from heartml.serve.errors import NotReadyError
from heartml.serve.evidence import LiveEvidence
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


def sites_info(holder: ModelHolder, evidence: LiveEvidence) -> dict[str, Any]:
    """Each site's champion being served, with its own drift window."""
    return {
        site: {
            **served.ref.summary_fields(),
            "adapted": served.site_adapted,
            "adapted_for": served.ref.adapted_for,
            "loaded_at": served.loaded_at,
            "engine": served.engine.name,
            "drift": evidence.describe_site(site),
        }
        for site, served in sorted(holder.sites.items())
    }


@router.get(
    "/model",
    response_model=LiveModelInfo,
    summary="The served model: name, version, run, score, provenance, reload status, the "
    "shadowed challenger's agreement and input drift so far, and each site's champion",
    responses={503: {"model": Problem, "description": "No model loaded yet"}},
)
async def get_model(settings: SettingsDep, holder: HolderDep, evidence: EvidenceDep) -> Response:
    info = model_info(holder)
    if info is None:
        raise NotReadyError(holder.not_ready_reason())
    return json_response(
        {
            **info,
            "shadow": evidence.shadow.describe(),
            "drift": evidence.describe(),
            "default_site": settings.site,
            "site_check": holder.site_check,
            "sites": sites_info(holder, evidence),
        }
    )
