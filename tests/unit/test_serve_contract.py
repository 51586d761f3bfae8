"""Every route's answers, success and documented errors, against the schema it declares.

The routes are read from the app itself, so a route added without a response model, or an
error status documented in ``responses=`` that no request here obtains, fails the test. The
app serves real ONNX models (fitted on synthetic rows, as in test_serve_app.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import BaseModel
from test_serve_app import TOKEN, StaticSource, fit_pipeline, unit_settings

from heartml.data.schema import EXAMPLE_PATIENT, synthetic_rows
from heartml.model.convert import engine_for_pipeline
from heartml.model.engine import Engine
from heartml.serve.app import create_app

# Routes whose answer is not a JSON document, and why.
NOT_JSON = {"/metrics": "the Prometheus text format (checked by test_serve_app's metrics tests)"}

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Apps:
    """The same app in each state an answer needs."""

    source: StaticSource
    ready: TestClient  # the champion loaded
    loading: TestClient  # nothing loaded yet
    closed: TestClient  # no admin token configured

    def failed_reload(self) -> Response:
        """A champion that changed but cannot be loaded: /admin/reload answers 502."""
        self.source.version = 2
        self.source.load_error = RuntimeError("the artifact is damaged")
        try:
            answer: Response = self.ready.post("/admin/reload", headers=AUTH)
            return answer
        finally:
            self.source.version, self.source.load_error = 1, None


@pytest.fixture(scope="module")
def engines() -> dict[int, Engine]:
    return {v: engine_for_pipeline(fit_pipeline(v), synthetic_rows(50)) for v in (1, 2)}


@pytest.fixture
def apps(engines: dict[int, Engine]) -> Iterator[Apps]:
    source = StaticSource(engines)
    ready = create_app(unit_settings(), source=source, follow=False)
    ready.state.holder.check()
    loading = create_app(unit_settings(), source=source, follow=False)
    closed = create_app(unit_settings(admin_token=None), source=source, follow=False)
    with TestClient(ready) as r, TestClient(loading) as lo, TestClient(closed) as c:
        yield Apps(source, r, lo, c)


PATIENTS = {"instances": [EXAMPLE_PATIENT, EXAMPLE_PATIENT]}
TOO_MANY = {"instances": [EXAMPLE_PATIENT] * 11}  # unit_settings: max_batch_size 10
TOO_BIG = b"{" + b" " * 5000 + b"}"  # unit_settings: max_body_bytes 4096

# How to obtain each answer a route declares: "METHOD /path" -> status -> request.
ANSWERS: dict[str, dict[int, Callable[[Apps], Response]]] = {
    "POST /predict": {
        200: lambda a: a.ready.post("/predict", json=EXAMPLE_PATIENT),
        413: lambda a: a.ready.post("/predict", content=TOO_BIG),
        422: lambda a: a.ready.post("/predict", json={**EXAMPLE_PATIENT, "cp": 0}),
        503: lambda a: a.loading.post("/predict", json=EXAMPLE_PATIENT),
    },
    "POST /predict/batch": {
        200: lambda a: a.ready.post("/predict/batch", json=PATIENTS),
        413: lambda a: a.ready.post("/predict/batch", json=TOO_MANY),
        422: lambda a: a.ready.post("/predict/batch", content=b"{not json"),
        503: lambda a: a.loading.post("/predict/batch", json=PATIENTS),
    },
    "GET /health": {200: lambda a: a.ready.get("/health")},
    "GET /ready": {
        200: lambda a: a.ready.get("/ready"),
        503: lambda a: a.loading.get("/ready"),
    },
    "GET /model": {
        200: lambda a: a.ready.get("/model"),
        503: lambda a: a.loading.get("/model"),
    },
    "GET /schema": {200: lambda a: a.ready.get("/schema")},
    "POST /admin/reload": {
        200: lambda a: a.ready.post("/admin/reload", headers=AUTH),
        401: lambda a: a.ready.post("/admin/reload", headers={"Authorization": "Bearer no"}),
        404: lambda a: a.closed.post("/admin/reload", headers=AUTH),
        502: Apps.failed_reload,
    },
}


def declared_answers(route: Any) -> dict[int, type[BaseModel]]:
    """The model of each status a route declares: ``response_model`` for its success."""
    model = route.response_model
    assert isinstance(model, type) and issubclass(model, BaseModel), (
        f"{route.path} declares no response model: declare one, or list it in NOT_JSON"
    )
    declared = {route.status_code or 200: model}
    for status, spec in (route.responses or {}).items():
        error_model = spec.get("model")
        assert isinstance(error_model, type) and issubclass(error_model, BaseModel), (
            f"{route.path} documents {status} without a model"
        )
        declared[int(status)] = error_model
    return declared


def test_every_answer_of_every_route_matches_its_declared_schema(apps: Apps) -> None:
    checked: set[str] = set()
    for context in iter_route_contexts(apps.ready.app.routes):  # type: ignore[attr-defined]
        if not isinstance(context.original_route, APIRoute):
            continue  # FastAPI's own pages: /openapi.json, /docs, /redoc
        if context.path in NOT_JSON:
            continue
        for method in sorted(context.methods or ()):
            route = f"{method} {context.path}"
            requests = ANSWERS.get(route, {})
            for status, model in declared_answers(context).items():
                assert status in requests, f"{route} declares {status}: add a request for it"
                response = requests[status](apps)
                assert response.status_code == status, (route, response.status_code, response.text)
                assert response.headers["content-type"] == "application/json", route
                body = response.json()
                parsed = model.model_validate(body)
                # Nothing the schema does not name, and nothing coerced into another type.
                assert parsed.model_dump(mode="json", exclude_unset=True) == body, (route, status)
                checked.add(f"{route} {status}")
    expected = {f"{route} {status}" for route, answers in ANSWERS.items() for status in answers}
    assert checked == expected, f"requests for answers no route declares: {expected - checked}"
