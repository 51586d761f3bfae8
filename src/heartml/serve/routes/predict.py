"""Predictions: one patient or a batch.

The body is parsed here rather than by FastAPI so that an oversized batch is refused (413)
before any row is validated, and so that the hot path is one pydantic-core call (JSON bytes
to a validated record) followed by the served model's numpy predictor.

Both routes are :class:`DirectRoute` instances: FastAPI documents them from the decorator
(body schema, responses) like any route, but a request goes straight to a core function
(bytes in, status and bytes out) without FastAPI's dependency resolution, parameter
inspection and response model checks, which cost more than validating and scoring a patient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from heartml.serve.deps import error_entries
from heartml.serve.schemas import (
    LABELS,
    BatchPrediction,
    BatchRequest,
    PatientFeatures,
    Problem,
    RiskPrediction,
    ValidationErrorBody,
)

if TYPE_CHECKING:
    from starlette.datastructures import State
    from starlette.types import Receive, Scope, Send

    from heartml.serve.holder import ServedModel
    from heartml.serve.metrics import ServeMetrics

Outcome = tuple[int, bytes]
Core = Callable[["State", bytes], Outcome]

_JSON_HEADERS = [(b"content-type", b"application/json")]


def _dumps(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":")).encode()


def _problem(status: int, detail: str) -> Outcome:
    return status, _dumps({"detail": detail})


def _invalid(exc: ValidationError) -> Outcome:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return 422, _dumps({"detail": error_entries(errors)})


def _score(served: ServedModel, rows: np.ndarray, metrics: ServeMetrics) -> list[dict[str, Any]]:
    proba = served.engine.predict_proba(rows)
    positive = proba[:, 1]
    classes = (positive > proba[:, 0]).astype(np.int64)  # argmax, ties to 0 as sklearn does
    ones = int(classes.sum())
    metrics.count_predictions(len(classes) - ones, ones)
    name, version = served.ref.name, served.ref.version
    return [
        {
            "prediction": c,
            "probability": p,
            "label": LABELS[c],
            "model_name": name,
            "model_version": version,
        }
        for c, p in zip(classes.tolist(), positive.tolist(), strict=True)
    ]


_ONE_HEAD = tuple(
    f'{{"prediction":{c},"label":{json.dumps(LABELS[c])},"probability":' for c in (0, 1)
)


@lru_cache(maxsize=64)
def _tail(name: str, version: int) -> str:
    return f',"model_name":{json.dumps(name)},"model_version":{version}}}'


def predict_one(state: State, body: bytes) -> Outcome:
    """``POST /predict``: validate one patient, score it with the model served right now."""
    try:
        patient = PatientFeatures.model_validate_json(body)
    except ValidationError as exc:
        return _invalid(exc)
    holder = state.holder
    served = holder.current  # read once: a swap during this request does not affect it
    if served is None:
        return _problem(503, holder.not_ready_reason())
    row = np.array([tuple(patient.__dict__.values())], dtype=np.float64)
    proba = served.engine.predict_proba(row)
    positive = float(proba[0, 1])
    predicted = 1 if positive > proba[0, 0] else 0  # argmax, ties to 0 as sklearn does
    state.metrics.count_predictions(1 - predicted, predicted)
    # The same JSON as _score gives, written directly: repr(float) is what json.dumps writes.
    head = _ONE_HEAD[predicted]
    return 200, f"{head}{positive!r}{_tail(served.ref.name, served.ref.version)}".encode()


def predict_many(state: State, body: bytes) -> Outcome:
    """``POST /predict/batch``: refuse an oversized batch first, then validate every row."""
    limit = state.settings.max_batch_size
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        entry = {"loc": ["body"], "msg": f"Invalid JSON: {exc}"[:200], "type": "json_invalid"}
        return 422, _dumps({"detail": [entry]})
    instances = data.get("instances") if isinstance(data, dict) else None
    if isinstance(instances, list) and len(instances) > limit:
        return _problem(413, f"{len(instances)} instances; at most {limit} per request")
    try:
        batch = BatchRequest.model_validate(data)
    except ValidationError as exc:
        return _invalid(exc)
    holder = state.holder
    served = holder.current
    if served is None:
        return _problem(503, holder.not_ready_reason())
    rows = np.array([tuple(p.__dict__.values()) for p in batch.instances], dtype=np.float64)
    predictions = _score(served, rows, state.metrics)
    return 200, _dumps(
        {
            "predictions": predictions,
            "count": len(predictions),
            "model_name": served.ref.name,
            "model_version": served.ref.version,
        }
    )


_CORES: dict[str, Core] = {}


class _Sent:
    """The smallest ASGI response: status, JSON bytes, two messages."""

    __slots__ = ("content", "status")

    def __init__(self, status: int, content: bytes) -> None:
        self.status = status
        self.content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(self.content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": self.content})


class DirectRoute(APIRoute):
    """A documented route whose requests go straight to its core function (see above)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        core = _CORES[self.endpoint.__name__]

        async def handle(request: Request) -> Response:
            chunks = []
            while True:
                message = await request.receive()
                if message["type"] != "http.request":  # the client went away
                    return cast(Response, _Sent(499, b""))
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            return cast(Response, _Sent(*core(request.app.state, b"".join(chunks))))

        return handle


router = APIRouter(tags=["predict"], route_class=DirectRoute)


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Body or batch larger than the configured limit"},
    422: {"model": ValidationErrorBody, "description": "Invalid input: one entry per bad field"},
    503: {"model": Problem, "description": "No model loaded yet"},
}


async def _respond(core: Core, request: Request) -> Response:
    status, content = core(request.app.state, await request.body())
    return Response(content, status_code=status, media_type="application/json")


_CORES["predict"] = predict_one
_CORES["predict_batch"] = predict_many


@router.post(
    "/predict",
    response_model=RiskPrediction,
    summary="Risk of heart disease for one patient",
    responses=_ERRORS,
    openapi_extra=_body("PatientFeatures"),
)
async def predict(request: Request) -> Response:
    return await _respond(predict_one, request)


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    summary="Risk of heart disease for several patients (at most max_batch_size)",
    responses=_ERRORS,
    openapi_extra=_body("BatchRequest"),
)
async def predict_batch(request: Request) -> Response:
    return await _respond(predict_many, request)
