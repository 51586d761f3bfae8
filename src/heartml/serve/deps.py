"""What a route needs, as ``Annotated`` dependencies, and the one JSON response they return."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from heartml.serve.evidence import LiveEvidence
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


async def get_evidence(request: Request) -> LiveEvidence:
    evidence: LiveEvidence = request.app.state.evidence
    return evidence


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
EvidenceDep = Annotated[LiveEvidence, Depends(get_evidence)]


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ProvidedRoute(APIRoute):
    """A route whose dependencies are the request-level providers above, called directly.

    The endpoint declares its parameters as every route does (``holder: HolderDep``, and the
    ``Request`` if it reads the body itself); FastAPI documents it from the decorator. At
    request time each provider is awaited with the request and the endpoint called with the
    results, without FastAPI's general resolution (sub-dependencies, parameter extraction,
    caching, response-model checks): for /predict that resolution costs about 50 µs per
    request, more than validating and scoring a patient. Anything else in the signature (a
    query parameter, a body, a provider with parameters of its own) is refused when the route
    is declared, and ``app.dependency_overrides`` does not apply.
    """

    def get_route_handler(self) -> Handler:
        dependant = self.dependant
        extracted = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
        )
        if any(extracted):
            raise TypeError(f"{self.path}: a ProvidedRoute takes no request parameters")
        providers: list[tuple[str, Callable[[Request], Coroutine[Any, Any, Any]]]] = []
        for dependency in dependant.dependencies:
            call, name = dependency.call, dependency.name
            own = (*dependency.dependencies, *dependency.path_params, *dependency.query_params)
            if (
                name is None
                or call is None
                or own
                or dependency.request_param_name is None
                or not inspect.iscoroutinefunction(call)
            ):
                raise TypeError(f"{self.path}: {name} is not a provider of the request alone")
            providers.append((name, call))
        request_name = dependant.request_param_name
        endpoint: Callable[..., Coroutine[Any, Any, Response]] = self.endpoint

        async def handle(request: Request) -> Response:
            values = {name: await call(request) for name, call in providers}
            if request_name is not None:
                values[request_name] = request
            return await endpoint(**values)

        return handle


def json_bytes(content: Any) -> bytes:
    """The one serialiser of every answer: compact JSON in UTF-8 (non-ASCII as it is), by
    orjson: an explained answer's sixteen floats took the json module 11 µs, orjson under 1.
    NaN and ±inf are written as null. Text orjson refuses (a lone surrogate, from a file name
    in an error message) is written by the json module, which escapes it."""
    try:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
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
