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
from heartml.model.convert import convert_pipeline
from heartml.model.explainer_files import build_explainer
from heartml.model.onnx_form import OnnxEngine
from heartml.serve.app import create_app
from heartml.serve.holder import LoadedModel

# Routes whose answer is not a JSON document, and why.
NOT_JSON = {"/metrics": "the Prometheus text format (checked by test_serve_app's metrics tests)"}

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Apps:
    """The same app in each state an answer needs."""

    source: StaticSource
    ready: TestClient  # the champion loaded, with its explainer
    loading: TestClient  # nothing loaded yet
    closed: TestClient  # no admin token configured
    unexplained: TestClient  # a champion registered without explainer files

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
def models() -> dict[int, LoadedModel]:
    """Each version's engine and explainer, built as registration builds them."""
    loaded = {}
    for version in (1, 2):
        pipeline = fit_pipeline(version)
        graph = convert_pipeline(pipeline, synthetic_rows(50)).graph
        engine = OnnxEngine(graph)
        # fit_pipeline's training rows
        stored = build_explainer(pipeline, synthetic_rows(150, seed=version), seed=42)
        loaded[version] = LoadedModel(engine, explainer=stored.explainer(engine))
    return loaded


@pytest.fixture
def apps(models: dict[int, LoadedModel]) -> Iterator[Apps]:
    source = StaticSource(models)
    ready = create_app(unit_settings(), source=source, follow=False)
    ready.state.holder.check()
    loading = create_app(unit_settings(), source=source, follow=False)
    closed = create_app(unit_settings(admin_token=None), source=source, follow=False)
    engines = {v: m.engine for v, m in models.items()}
    bare = create_app(unit_settings(), source=StaticSource(engines), follow=False)
    bare.state.holder.check()
    with (
        TestClient(ready) as r,
        TestClient(loading) as lo,
        TestClient(closed) as c,
        TestClient(bare) as u,
    ):
        yield Apps(source, r, lo, c, u)


PATIENTS = {"instances": [EXAMPLE_PATIENT, EXAMPLE_PATIENT]}
TOO_MANY = {"instances": [EXAMPLE_PATIENT] * 11}  # unit_settings: max_batch_size 10
TOO_BIG = b"{" + b" " * 5000 + b"}"  # unit_settings: max_body_bytes 4096

# How to obtain each answer a route declares: "METHOD /path" -> status -> request.
ANSWERS: dict[str, dict[int, Callable[[Apps], Response]]] = {
    "POST /predict": {
        200: lambda a: a.ready.post("/predict", json=EXAMPLE_PATIENT),
        409: lambda a: a.unexplained.post("/predict?explain=true", json=EXAMPLE_PATIENT),
        413: lambda a: a.ready.post("/predict", content=TOO_BIG),
        422: lambda a: a.ready.post("/predict", json={**EXAMPLE_PATIENT, "cp": 0}),
        503: lambda a: a.loading.post("/predict", json=EXAMPLE_PATIENT),
    },
    "POST /predict/batch": {
        200: lambda a: a.ready.post("/predict/batch", json=PATIENTS),
        409: lambda a: a.unexplained.post("/predict/batch?explain=true", json=PATIENTS),
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


# The other answers a route gives, validated the same way: "METHOD /path" -> (status, request).
MORE_ANSWERS: dict[str, list[tuple[int, Callable[[Apps], Response]]]] = {
    "POST /predict": [
        (200, lambda a: a.ready.post("/predict?explain=true", json=EXAMPLE_PATIENT)),
        (200, lambda a: a.ready.post("/predict?explain=false", json=EXAMPLE_PATIENT)),
        (422, lambda a: a.ready.post("/predict?explain=maybe", json=EXAMPLE_PATIENT)),
    ],
    "POST /predict/batch": [
        (200, lambda a: a.ready.post("/predict/batch?explain=true", json=PATIENTS)),
        (
            200,
            lambda a: a.ready.post(
                "/predict/batch?explain=1",
                json={"instances": [{**EXAMPLE_PATIENT, "thal": None, "ca": None}]},
            ),
        ),
    ],
}


def test_explained_answers_match_their_declared_schema(apps: Apps) -> None:
    routes = {
        f"{m} {c.path}": c
        for c in iter_route_contexts(apps.ready.app.routes)  # type: ignore[attr-defined]
        if isinstance(c.original_route, APIRoute)
        for m in c.methods or ()
    }
    for route, answers in MORE_ANSWERS.items():
        declared = declared_answers(routes[route])
        for status, request in answers:
            response = request(apps)
            assert response.status_code == status, (route, response.text)
            body = response.json()
            parsed = declared[status].model_validate(body)
            assert parsed.model_dump(mode="json", exclude_unset=True) == body, (route, status)
            explained = response.request.url.params.get("explain") in ("true", "1")
            if explained:
                for answer in body.get("predictions", [body]):
                    assert answer["explanation"]["method"] == "exact linear"
                    assert set(answer["explanation"]["contributions"]) == set(EXAMPLE_PATIENT)
            elif status == 200:
                assert "explanation" not in body


def test_a_version_without_explainer_files_is_named_in_the_refusal(apps: Apps) -> None:
    answer = apps.unexplained.post("/predict?explain=true", json=EXAMPLE_PATIENT)
    assert answer.status_code == 409
    assert "heart-disease-test/1" in answer.json()["detail"]
    assert apps.unexplained.post("/predict", json=EXAMPLE_PATIENT).status_code == 200


@pytest.mark.parametrize(
    ("query", "status", "explained", "wrong"),
    [
        ("explain=true", 200, True, None),
        ("explain=TRUE&site=va", 200, True, None),
        ("site=va&explain=off", 200, False, None),
        ("explain=foo&explain=yes", 200, True, None),  # the last explain counts
        ("explain=%74rue", 200, True, None),
        ("explain=maybe", 422, False, ["query", "explain"]),
        ("explain=maybe&site=B!", 422, False, ["query", "site"]),  # the site is checked first
        ("site=", 422, False, ["query", "site"]),
    ],
)
def test_the_query_string_names_the_site_and_asks_for_explanations(
    apps: Apps, query: str, status: int, explained: bool, wrong: list[str] | None
) -> None:
    answer = apps.ready.post(f"/predict?{query}", json=EXAMPLE_PATIENT)
    assert answer.status_code == status, answer.text
    if wrong is not None:
        assert answer.json()["detail"][0]["loc"] == wrong
    else:
        assert ("explanation" in answer.json()) is explained
