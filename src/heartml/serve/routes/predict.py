"""Predictions: one patient or a batch.

The body is parsed here rather than by FastAPI so that an oversized batch is refused (413)
before any row is validated, and so that the hot path is one pydantic-core call (JSON bytes
to a validated record) followed by the served model's engine.

Both routes are :class:`RequestRoute` instances: FastAPI documents them from the decorator
(body schema, responses) like any route, and a request is handed straight to the decorated
function, without FastAPI's dependency resolution, parameter inspection and response model
checks, which cost more than validating and scoring a patient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from heartml.data.patient import PatientFeatures
from heartml.serve.deps import JSONBytes, json_response, problem, validation_problem
from heartml.serve.middleware import REQUEST_ID_KEY
from heartml.serve.schemas import (
    LABELS,
    BatchPrediction,
    BatchRequest,
    Problem,
    RiskPrediction,
    ValidationErrorBody,
    imputed_fields,
)

if TYPE_CHECKING:
    from heartml.serve.holder import ServedModel
    from heartml.serve.metrics import ServeMetrics

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestRoute(APIRoute):
    """A documented route whose endpoint takes the bare request and returns the response.

    The endpoint's only parameter is the ``Request``, so FastAPI has nothing to resolve: the
    decorated function itself is the request handler.
    """

    def get_route_handler(self) -> Endpoint:
        return cast(Endpoint, self.endpoint)


router = APIRouter(tags=["predict"], route_class=RequestRoute)


async def read_body(request: Request) -> bytes | None:
    """The whole body, or None when the client went away before sending it."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def classify(
    served: ServedModel, rows: np.ndarray, metrics: ServeMetrics
) -> tuple[list[int], list[float]]:
    """The predicted class and P(disease) of each row, counted in the metrics."""
    proba = served.engine.predict_proba(rows)
    # Python floats, not numpy scalars: the JSON encoder writes them with repr, and a request
    # is mostly one row, for which list operations cost less than numpy's.
    negative, positive = proba[:, 0].tolist(), proba[:, 1].tolist()
    classes = [int(p > n) for n, p in zip(negative, positive, strict=True)]  # ties to 0
    ones = sum(classes)
    metrics.count_predictions(len(classes) - ones, ones)
    return classes, positive


_CLIENT_GONE = JSONBytes(b"", 499)


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Body or batch larger than the configured limit"},
    422: {"model": ValidationErrorBody, "description": "Invalid input: one entry per bad field"},
    503: {"model": Problem, "description": "No model loaded yet"},
}


@router.post(
    "/predict",
    response_model=RiskPrediction,
    summary="Risk of heart disease for one patient",
    responses=_ERRORS,
    openapi_extra=_body("PatientFeatures"),
)
async def predict(request: Request) -> Response:
    # Validate one patient, score it with the model served right now. (No docstring: FastAPI
    # would publish it as the operation's description.)
    body = await read_body(request)
    if body is None:
        return _CLIENT_GONE
    try:
        patient = PatientFeatures.model_validate_json(body)
    except ValidationError as exc:
        return validation_problem(exc)
    state = request.app.state
    served = state.holder.current  # read once: a swap during this request does not affect it
    if served is None:
        return problem(503, state.holder.not_ready_reason())
    # A null (optional field not given) becomes NaN: the model's own imputation fills it.
    row = np.array([tuple(patient.__dict__.values())], dtype=np.float64)
    [predicted], [probability] = classify(served, row, state.metrics)
    state.evidence.record(request.scope[REQUEST_ID_KEY], served, row, [predicted], [probability])
    return json_response(
        {
            "prediction": predicted,
            "label": LABELS[predicted],
            "probability": probability,
            "imputed": imputed_fields(patient),
            "model_name": served.ref.name,
            "model_version": served.ref.version,
        }
    )


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    summary="Risk of heart disease for several patients (at most max_batch_size)",
    responses=_ERRORS,
    openapi_extra=_body("BatchRequest"),
)
async def predict_batch(request: Request) -> Response:
    # Refuse an oversized batch first, then validate every row and score them together.
    body = await read_body(request)
    if body is None:
        return _CLIENT_GONE
    state = request.app.state
    limit = state.settings.max_batch_size
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        entry = {"loc": ["body"], "msg": f"Invalid JSON: {exc}"[:200], "type": "json_invalid"}
        return json_response({"detail": [entry]}, 422)
    instances = data.get("instances") if isinstance(data, dict) else None
    if isinstance(instances, list) and len(instances) > limit:
        return problem(413, f"{len(instances)} instances; at most {limit} per request")
    try:
        batch = BatchRequest.model_validate(data)
    except ValidationError as exc:
        return validation_problem(exc)
    served = state.holder.current
    if served is None:
        return problem(503, state.holder.not_ready_reason())
    rows = np.array([tuple(p.__dict__.values()) for p in batch.instances], dtype=np.float64)
    classes, probabilities = classify(served, rows, state.metrics)
    state.evidence.record(request.scope[REQUEST_ID_KEY], served, rows, classes, probabilities)
    name, version = served.ref.name, served.ref.version
    predictions = [
        {
            "prediction": c,
            "probability": p,
            "label": LABELS[c],
            "imputed": imputed_fields(patient),
            "model_name": name,
            "model_version": version,
        }
        for c, p, patient in zip(classes, probabilities, batch.instances, strict=True)
    ]
    return json_response(
        {
            "predictions": predictions,
            "count": len(predictions),
            "model_name": name,
            "model_version": version,
        }
    )
