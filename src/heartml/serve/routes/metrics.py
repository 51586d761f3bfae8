"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from heartml.serve.deps import EvidenceDep, MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def get_metrics(metrics: MetricsDep, evidence: EvidenceDep) -> Response:
    evidence.refresh()  # the drift gauges, from the window as it is now
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
