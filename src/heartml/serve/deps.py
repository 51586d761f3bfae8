"""What a route needs, as ``Annotated`` dependencies, and the one JSON response they return."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from heartml.serve.holder import ModelHolder
from heartml.serve.metrics import ServeMetrics
from heartml.settings import Settings

# The providers are coroutines: FastAPI runs a plain `def` dependency in a worker thread, a
# thread hop per dependency per request that costs more than the prediction itself.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def get_metrics(request: Request) -> ServeMetrics:
    metrics: ServeMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]


def json_bytes(content: Any) -> bytes:
    """The one serialiser of every answer: compact JSON."""
    return json.dumps(content, separators=(",", ":")).encode()


class JSONBytes(Response):
    """A response of JSON bytes already serialised: no re-validation, no re-encoding.

    Starlette's ``Response.__init__`` renders and inspects its content; here the bytes and
    the two headers are set directly, a few microseconds per prediction.
    """

    media_type = "application/json"

    def __init__(self, content: bytes, status_code: int = 200, **headers: str) -> None:
        self.body = content
        self.status_code = status_code
        self.background = None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]


def json_response(content: Any, status_code: int = 200, **headers: str) -> Response:
    """A JSON response without FastAPI's re-validation of what we just built."""
    return JSONBytes(json_bytes(content), status_code, **headers)
