"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from heartml.serve.deps import HolderDep, json_response
from heartml.serve.schemas import Health, Readiness

router = APIRouter(tags=["health"])

_OK = b'{"status":"ok"}'


@router.get("/health", response_model=Health, summary="Liveness: 200 while the process runs")
async def health() -> Response:
    return Response(_OK, media_type="application/json")


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: 200 once a model is loaded, 503 with the reason before; a warning "
    "when the registry refuses the serving account (the loaded model keeps serving)",
    responses={503: {"model": Readiness, "description": "No model loaded yet"}},
)
async def ready(holder: HolderDep) -> Response:
    served = holder.current
    if served is None:
        return json_response(
            {"status": "not ready", "model": None, "reason": holder.not_ready_reason()}, 503
        )
    return json_response(
        {"status": "ready", "model": served.ref.ref, "reason": None, "warning": holder.warning()}
    )
