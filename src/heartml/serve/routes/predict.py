"""Predictions: one patient or a batch.

The body is parsed here rather than by FastAPI so that an oversized batch is refused (413)
before any row is validated, and so that the hot path is one pydantic-core call (JSON bytes
to a validated record) followed by the served model's engine.

What the routes need comes from the same dependencies as every route's (``HolderDep``, ...);
they are :class:`~heartml.serve.deps.ProvidedRoute` instances, which call those providers
directly instead of through FastAPI's general resolution, the larger part of a prediction's
time otherwise.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from heartml.data.patient import PatientFeatures
from heartml.data.sites import SITE_PATTERN, SiteNameError, check_site
from heartml.serve.deps import (
    EvidenceDep,
    HolderDep,
    JSONBytes,
    MetricsDep,
    ProvidedRoute,
    SettingsDep,
    json_response,
)
from heartml.serve.errors import (
    BodyTooLargeError,
    ExplanationUnavailableError,
    InvalidInputError,
    NotReadyError,
)
from heartml.serve.metrics import site_label
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

router = APIRouter(tags=["predict"], route_class=ProvidedRoute)


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


SITE_HEADER = b"x-heartml-site"


def request_options(request: Request, default: str | None) -> tuple[str | None, bool]:
    """The site a request names and whether it asks for explanations.

    The site: the query parameter ``site``, else the header ``X-Heartml-Site``, else the
    deployment's ``HEARTML_SITE``; a malformed name is a 422. ``explain``: the query parameter,
    true or false (1/0, yes/no, on/off), false when absent; anything else is a 422.

    Read from the ASGI scope directly: the query string is parsed only when it is neither empty
    nor one of the two common forms, and a request without a site costs a scan of its few
    headers."""
    scope = request.scope
    query = scope["query_string"]
    site: str | None = None
    explain = False
    if query == b"explain=true":  # the common forms: no parsing (a few µs each)
        explain = True
    elif query.startswith(b"site=") and b"&" not in query and b"%" not in query:
        site = _checked(query[5:].decode("latin-1"), ("query", "site"))
    elif query:
        raw_explain = None
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == "site" and site is None:  # the first site, the last explain
                site = _checked(value, ("query", "site"))
            elif key == "explain":
                raw_explain = value
        explain = raw_explain is not None and _explain_value(raw_explain)
    if site is not None:
        return site, explain
    for name, value in scope["headers"]:
        if name == SITE_HEADER:
            return _checked(value.decode("latin-1"), ("header", "X-Heartml-Site")), explain
    return default, explain


def _checked(site: str, location: tuple[str, str]) -> str:
    try:
        return check_site(site)
    except SiteNameError as exc:
        raise InvalidInputError.bad_site(location, str(exc)) from None


def classify(
    served: ServedModel, rows: np.ndarray, metrics: ServeMetrics, site: str | None = None
) -> tuple[list[int], list[float]]:
    """The predicted class and P(disease) of each row, counted in the metrics under the
    site the request named."""
    proba = served.engine.predict_proba(rows)
    # Python floats, not numpy scalars: a request is mostly one row, for which list operations
    # cost less than numpy's.
    negative, positive = proba[:, 0].tolist(), proba[:, 1].tolist()
    classes = [int(p > n) for n, p in zip(negative, positive, strict=True)]  # ties to 0
    ones = sum(classes)
    metrics.count_predictions(len(classes) - ones, ones, site_label(site))
    return classes, positive


_CLIENT_GONE = JSONBytes(b"", 499)

_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})


def _explain_value(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise InvalidInputError(
        [{"loc": ["query", "explain"], "msg": "Input should be true or false", "type": "bool"}]
    )


def explain_rows(served: ServedModel, rows: np.ndarray) -> list[dict[str, Any]]:
    """Each row's explanation (:class:`heartml.serve.schemas.Explanation`), or 409."""
    if served.explainer is None:
        raise ExplanationUnavailableError.for_version(served.ref.ref)
    if len(rows) == 1:  # one patient: the explainer's own one-row path (a linear one's is µs)
        return [served.explainer.explain_one(rows[0].tolist())]
    explained = served.explainer.explain(rows)
    return [explained.row(i) for i in range(len(explained))]


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
        "parameters": [*_site_parameters(), EXPLAIN_PARAMETER],
    }


EXPLAIN_PARAMETER: dict[str, Any] = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "Add each answer's explanation: every field's contribution to "
    "the log-odds, the base value, and the top three reasons in words",
}


def _site_parameters() -> list[dict[str, Any]]:
    """The site a request may name, documented (the route reads it from the scope)."""
    schema = {"type": "string", "pattern": SITE_PATTERN}
    what = (
        "The site (hospital) the patient is seen at: its champion (alias champion-SITE) "
        "answers when it has one, else the global champion. Default: the deployment's "
        "HEARTML_SITE, else none. A name outside the pattern is a 422."
    )
    return [
        {"name": "site", "in": "query", "required": False, "schema": schema, "description": what},
        {
            "name": "X-Heartml-Site",
            "in": "header",
            "required": False,
            "schema": schema,
            "description": "The same as the query parameter `site`, which wins when both are "
            "given.",
        },
    ]


_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "explain=true for a version without explainer files this server can read",
    },
    413: {"model": Problem, "description": "Body or batch larger than the configured limit"},
    422: {
        "model": ValidationErrorBody,
        "description": "Invalid input: one entry per bad field (or a malformed site name)",
    },
    503: {"model": Problem, "description": "No model loaded yet"},
}


@router.post(
    "/predict",
    response_model=RiskPrediction,
    summary="Risk of heart disease for one patient",
    responses=_ERRORS,
    openapi_extra=_body("PatientFeatures"),
)
async def predict(
    request: Request,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    evidence: EvidenceDep,
) -> Response:
    # Validate one patient, score it with the model served right now. (No docstring: FastAPI
    # would publish it as the operation's description.)
    site, explain = request_options(request, settings.site)
    body = await read_body(request)
    if body is None:
        return _CLIENT_GONE
    try:
        patient = PatientFeatures.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None
    served = holder.serving(site)  # read once: a swap during this request does not affect it
    if served is None:
        raise NotReadyError(holder.not_ready_reason())
    # A null (optional field not given) becomes NaN: the model's own imputation fills it.
    row = np.array([tuple(patient.__dict__.values())], dtype=np.float64)
    explanation = explain_rows(served, row)[0] if explain else None
    [predicted], [probability] = classify(served, row, metrics, site)
    evidence.record(request.scope[REQUEST_ID_KEY], served, row, [predicted], [probability])
    answer = {
        "prediction": predicted,
        "label": LABELS[predicted],
        "probability": probability,
        "imputed": imputed_fields(patient),
        "model_name": served.ref.name,
        "model_version": served.ref.version,
        "site": site,
        "site_adapted": served.site_adapted,
    }
    if explanation is not None:
        answer["explanation"] = explanation
    return json_response(answer)


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    summary="Risk of heart disease for several patients (at most max_batch_size)",
    responses=_ERRORS,
    openapi_extra=_body("BatchRequest"),
)
async def predict_batch(
    request: Request,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    evidence: EvidenceDep,
) -> Response:
    # Refuse an oversized batch first, then validate every row and score them together.
    site, explain = request_options(request, settings.site)
    body = await read_body(request)
    if body is None:
        return _CLIENT_GONE
    limit = settings.max_batch_size
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError.from_json_error(exc) from None
    instances = data.get("instances") if isinstance(data, dict) else None
    if isinstance(instances, list) and len(instances) > limit:
        raise BodyTooLargeError(f"{len(instances)} instances; at most {limit} per request")
    try:
        batch = BatchRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None
    served = holder.serving(site)
    if served is None:
        raise NotReadyError(holder.not_ready_reason())
    rows = np.array([tuple(p.__dict__.values()) for p in batch.instances], dtype=np.float64)
    explanations = explain_rows(served, rows) if explain else None
    classes, probabilities = classify(served, rows, metrics, site)
    evidence.record(request.scope[REQUEST_ID_KEY], served, rows, classes, probabilities)
    name, version = served.ref.name, served.ref.version
    adapted = served.site_adapted
    predictions: list[dict[str, Any]] = [
        {
            "prediction": c,
            "probability": p,
            "label": LABELS[c],
            "imputed": imputed_fields(patient),
            "model_name": name,
            "model_version": version,
            "site": site,
            "site_adapted": adapted,
        }
        for c, p, patient in zip(classes, probabilities, batch.instances, strict=True)
    ]
    if explanations is not None:
        for prediction, explanation in zip(predictions, explanations, strict=True):
            prediction["explanation"] = explanation
    return json_response(
        {
            "predictions": predictions,
            "count": len(predictions),
            "model_name": name,
            "model_version": version,
            "site": site,
            "site_adapted": adapted,
        }
    )
