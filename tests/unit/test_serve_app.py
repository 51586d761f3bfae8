"""Every endpoint of the app over a small synthetic model: no registry, no network."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient

from heartml.data.schema import (
    EXAMPLE_PATIENT,
    FEATURE_NAMES,
    OPTIONAL_FEATURES,
    REQUIRED_FEATURES,
    synthetic_rows,
)
from heartml.model.convert import engine_for_pipeline
from heartml.model.engine import Engine
from heartml.registry import AccessDeniedError
from heartml.serve.app import create_app
from heartml.serve.deps import HolderDep, ProvidedRoute, SettingsDep, json_bytes
from heartml.serve.holder import LoadedModel, ModelRef
from heartml.settings import Settings
from heartml.training.candidates import build_candidate

TOKEN = "unit-test-token"


class StaticSource:
    """A registry stand-in: ``version`` says which pipeline is champion; errors on demand."""

    kind: Literal["registry", "directory"] = "registry"

    def __init__(self, engines: Mapping[int, Engine | LoadedModel]) -> None:
        self.engines = engines
        self.version: int | None = min(engines)
        self.resolve_error: Exception | None = None
        self.load_error: Exception | None = None
        self.sites: dict[str, int] = {}  # site: the version adapted for it and its champion

    def describe(self) -> str:
        return "the test registry"

    def resolve_sites(self) -> dict[str, ModelRef]:
        return {
            site: ModelRef(
                name="heart-disease-test",
                version=version,
                run_id=f"run{version}",
                roc_auc=0.7,
                model_type="logistic_regression",
                promoted_at="2026-01-02T00:00:00Z",
                source="registry",
                uri=f"models:/heart-disease-test/{version}",
                adapted_for=site,
            )
            for site, version in self.sites.items()
        }

    def resolve(self) -> ModelRef | None:
        if self.resolve_error is not None:
            raise self.resolve_error
        if self.version is None:
            return None
        return ModelRef(
            name="heart-disease-test",
            version=self.version,
            run_id=f"run{self.version}",
            roc_auc=0.9,
            model_type="logistic_regression",
            promoted_at="2026-01-01T00:00:00Z",
            source="registry",
            uri=f"models:/heart-disease-test/{self.version}",
        )

    def load(self, ref: ModelRef) -> Engine | LoadedModel:
        if self.load_error is not None:
            raise self.load_error
        return self.engines[ref.version]


def fit_pipeline(seed: int) -> Any:
    x = synthetic_rows(150, seed=seed)
    target = (np.nan_to_num(x[:, 9]) > 2).astype(np.int64)
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    return build_candidate("logistic_regression", {"max_iter": 500}, 42).fit(frame, target)


@pytest.fixture(scope="module")
def pipelines() -> dict[int, Any]:
    return {1: fit_pipeline(1), 2: fit_pipeline(2)}


@pytest.fixture(scope="module")
def engines(pipelines: dict[int, Any]) -> dict[int, Engine]:
    """Each pipeline converted and checked as registration does it (once: it takes a while)."""
    return {v: engine_for_pipeline(p, synthetic_rows(50)) for v, p in pipelines.items()}


@pytest.fixture
def source(engines: dict[int, Engine]) -> StaticSource:
    return StaticSource(engines)


def unit_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mlflow_tracking_uri": "sqlite:///unused.db",
        "admin_token": TOKEN,
        "reload_interval_s": 0,
        "max_batch_size": 10,
        "max_body_bytes": 4096,
        # No challenger: these tests serve a static source, with no registry to choose from.
        "shadow": "off",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(source: StaticSource) -> Iterator[TestClient]:
    app = create_app(unit_settings(), source=source, follow=False)
    app.state.holder.check()
    with TestClient(app) as test_client:
        yield test_client


def metric(client: TestClient, sample: str) -> float:
    """The value of one sample, named exactly as exposed (labels included)."""
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"no sample {sample}")


# --- endpoints -------------------------------------------------------------------------------


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model"] == "heart-disease-test/1"
    info = client.get("/model").json()
    assert info["name"] == "heart-disease-test"
    assert info["version"] == 1
    assert info["run_id"] == "run1"
    assert info["roc_auc"] == 0.9
    assert info["model_type"] == "logistic_regression"
    assert info["promoted_at"] == "2026-01-01T00:00:00Z"
    assert info["source"] == "registry"
    assert info["loaded_at"]
    assert info["engine"] == "onnx"
    assert TOKEN not in json.dumps(info)


def test_predict_returns_the_pipelines_probability(
    client: TestClient, pipelines: dict[int, Any]
) -> None:
    response = client.post("/predict", json=EXAMPLE_PATIENT)
    assert response.status_code == 200
    body = response.json()
    frame = pd.DataFrame([EXAMPLE_PATIENT], columns=list(FEATURE_NAMES)).astype(float)
    expected = pipelines[1].predict_proba(frame)[0, 1]
    assert body["probability"] == pytest.approx(expected, abs=1e-6)
    assert body["prediction"] == int(expected > 0.5)
    assert body["label"] == ("heart disease" if body["prediction"] else "no heart disease")
    assert (body["model_name"], body["model_version"]) == ("heart-disease-test", 1)


def test_batch_predicts_every_row_in_order(client: TestClient) -> None:
    rows = [{**EXAMPLE_PATIENT, "oldpeak": v} for v in (0.0, 2.0, 4.0, 6.0)]
    single = [client.post("/predict", json=r).json()["probability"] for r in rows]
    response = client.post("/predict/batch", json={"instances": rows})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(single, abs=1e-7)


def test_a_patient_without_the_optional_tests_is_imputed_as_in_training(
    client: TestClient, pipelines: dict[int, Any]
) -> None:
    lacking = {**EXAMPLE_PATIENT, "ca": None, "thal": None}
    del lacking["slope"]  # absent is the same as null
    response = client.post("/predict", json=lacking)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["imputed"] == ["slope", "ca", "thal"]  # schema order
    # The pipeline's own imputers (training rows' mode and median) on the same missing values.
    frame = pd.DataFrame([EXAMPLE_PATIENT], columns=list(FEATURE_NAMES)).astype(float)
    frame.loc[0, ["slope", "ca", "thal"]] = np.nan
    assert body["probability"] == pytest.approx(pipelines[1].predict_proba(frame)[0, 1], abs=1e-6)
    assert client.post("/predict", json=EXAMPLE_PATIENT).json()["imputed"] == []


def test_a_batch_says_what_was_imputed_for_each_patient(client: TestClient) -> None:
    rows = [EXAMPLE_PATIENT, {**EXAMPLE_PATIENT, "chol": None, "fbs": None}]
    single = [client.post("/predict", json=r).json() for r in rows]
    body = client.post("/predict/batch", json={"instances": rows}).json()
    assert [p["imputed"] for p in body["predictions"]] == [[], ["chol", "fbs"]]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(
        [s["probability"] for s in single], abs=1e-7
    )


def test_required_fields_and_bad_values_are_still_refused(client: TestClient) -> None:
    for bad in ({**EXAMPLE_PATIENT, "oldpeak": None}, {**EXAMPLE_PATIENT, "ca": 4}):
        response = client.post("/predict", json=bad)
        assert response.status_code == 422, bad
        [entry] = response.json()["detail"]
        assert entry["loc"][-1] in ("oldpeak", "ca")


def test_schema_is_the_shared_schema(client: TestClient) -> None:
    body = client.get("/schema").json()
    assert [f["name"] for f in body["features"]] == list(FEATURE_NAMES)
    thal = next(f for f in body["features"] if f["name"] == "thal")
    assert thal["codes"] == [3, 6, 7]
    assert thal["optional"] is True
    assert body["optional"] == list(OPTIONAL_FEATURES)
    assert body["request_schema"]["required"] == list(REQUIRED_FEATURES)
    assert body["max_batch_size"] == 10


def test_openapi_documents_the_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/PatientFeatures"
    patient = spec["components"]["schemas"]["PatientFeatures"]
    assert set(patient["properties"]) == set(FEATURE_NAMES)
    # Which fields are optional: not required, and "a code, or null".
    assert patient["required"] == list(REQUIRED_FEATURES)
    ca = patient["properties"]["ca"]
    assert {"type": "null"} in ca["anyOf"] and ca["x-optional"] is True
    assert next(b for b in ca["anyOf"] if b.get("type") == "integer")["enum"] == [0, 1, 2, 3]
    answer = spec["components"]["schemas"]["RiskPrediction"]
    assert "imputed" in answer["required"]
    assert "BatchRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_metrics_use_the_agreed_names(client: TestClient) -> None:
    client.post("/predict", json=EXAMPLE_PATIENT)
    client.post("/predict", json={**EXAMPLE_PATIENT, "cp": 0})
    text = client.get("/metrics").text
    for name in (
        'heartml_http_requests_total{endpoint="/predict",method="POST",status="200"}',
        'heartml_http_requests_total{endpoint="/predict",method="POST",status="422"}',
        'heartml_http_request_duration_seconds_bucket{endpoint="/predict",le="0.01"}',
        'heartml_predictions_total{prediction="0",site="none"}',
        'heartml_predictions_total{prediction="1",site="none"}',
        'heartml_model_info{name="heart-disease-test",source="registry",version="1"} 1.0',
        "heartml_model_version 1.0",
        "heartml_model_loaded 1.0",
        'heartml_model_reloads_total{result="success"} 1.0',
        'heartml_model_reloads_total{result="failure"} 0.0',
        'heartml_registry_checks_total{result="ok"} 1.0',
        'heartml_registry_checks_total{result="error"} 0.0',
    ):
        assert name in text, name


def test_unknown_paths_are_one_metric_series(client: TestClient) -> None:
    for path in ("/a", "/b", "/c/d"):
        assert client.get(path).status_code == 404
    text = client.get("/metrics").text
    assert 'heartml_http_requests_total{endpoint="other",method="other",status="404"} 3.0' in text


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "locs"),
    [
        ({**EXAMPLE_PATIENT, "cp": 0}, [["body", "cp"]]),
        ({**EXAMPLE_PATIENT, "thal": 2}, [["body", "thal"]]),
        ({**EXAMPLE_PATIENT, "age": "sixty"}, [["body", "age"]]),
        ({**EXAMPLE_PATIENT, "chol": 1000}, [["body", "chol"]]),
        ({**EXAMPLE_PATIENT, "extra": 1}, [["body", "extra"]]),
        ({k: v for k, v in EXAMPLE_PATIENT.items() if k != "sex"}, [["body", "sex"]]),
        (
            {**EXAMPLE_PATIENT, "cp": 0, "thal": 2, "bogus": 1},
            [["body", f] for f in ("cp", "thal", "bogus")],
        ),
    ],
)
def test_invalid_patients_are_422_with_one_entry_per_field(
    client: TestClient, payload: dict[str, Any], locs: list[list[str]]
) -> None:
    response = client.post("/predict", json=payload)
    assert response.status_code == 422
    assert sorted(e["loc"] for e in response.json()["detail"]) == sorted(locs)
    assert all({"loc", "msg", "type"} == set(e) for e in response.json()["detail"])


@pytest.mark.parametrize("raw", [b"", b"{", b"{'age': 1}", b"[]", b"null", b'"x"', b"[" * 4000])
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_malformed_json_is_422(client: TestClient, path: str, raw: bytes) -> None:
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"instances": []}, 422),
        ({"instances": "x"}, 422),
        ({}, 422),
        ({"instances": [EXAMPLE_PATIENT], "more": 1}, 422),
        ({"instances": [EXAMPLE_PATIENT] * 10}, 200),
        ({"instances": [EXAMPLE_PATIENT] * 11}, 413),
    ],
)
def test_batch_limits(client: TestClient, payload: dict[str, Any], status: int) -> None:
    assert client.post("/predict/batch", json=payload).status_code == status


def test_batch_errors_name_the_row(client: TestClient) -> None:
    rows = [EXAMPLE_PATIENT, {**EXAMPLE_PATIENT, "cp": 0}, {**EXAMPLE_PATIENT, "ca": 9}]
    response = client.post("/predict/batch", json={"instances": rows})
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert locs == [["body", "instances", 1, "cp"], ["body", "instances", 2, "ca"]]


def test_bodies_over_the_limit_are_413_declared_or_streamed(client: TestClient) -> None:
    big = b"{" + b" " * 5000 + b"}"
    declared = client.post("/predict", content=big)
    assert declared.status_code == 413
    # Refused before the body is read: the connection is not reused for the unread bytes.
    assert declared.headers["connection"] == "close"

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    streamed = client.post("/predict", content=chunks())  # chunked: no Content-Length
    assert streamed.status_code == 413
    # One answer however the size is found out: the same bytes and type.
    assert (
        declared.content == streamed.content == b'{"detail":"request body larger than 4096 bytes"}'
    )
    assert declared.headers["content-type"] == streamed.headers["content-type"]
    assert client.post("/predict", json=EXAMPLE_PATIENT).status_code == 200


# --- no model, reloads, admin ------------------------------------------------------------------


def test_without_a_model_ready_model_and_predict_say_why(source: StaticSource) -> None:
    source.resolve_error = ConnectionError("Connection refused")
    app = create_app(unit_settings(), source=source, follow=False)
    app.state.holder.check()
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        for response in (
            client.get("/ready"),
            client.get("/model"),
            client.post("/predict", json=EXAMPLE_PATIENT),
            client.post("/predict/batch", json={"instances": [EXAMPLE_PATIENT]}),
        ):
            assert response.status_code == 503
            reason = response.json().get("reason") or response.json()["detail"]
            assert "Connection refused" in reason
        # Bad input is still bad input.
        assert client.post("/predict", json={"cp": 0}).status_code == 422
        assert metric(client, "heartml_model_loaded") == 0.0
        assert metric(client, 'heartml_registry_checks_total{result="error"}') == 1.0


def test_a_new_champion_is_swapped_in_and_a_failed_load_keeps_the_old(
    client: TestClient, source: StaticSource
) -> None:
    holder = client.app.state.holder  # type: ignore[attr-defined]
    source.version = 2
    assert holder.check().result == "reloaded"
    assert client.get("/model").json()["version"] == 2
    assert client.post("/predict", json=EXAMPLE_PATIENT).json()["model_version"] == 2

    source.version = 1
    source.load_error = OSError("artifact store unreachable")
    outcome = holder.check()
    assert outcome.result == "failed"
    info = client.get("/model").json()
    assert info["version"] == 2  # still serving the old one
    assert "artifact store unreachable" in info["last_error"]
    assert info["failed_reloads"] == 1
    assert client.post("/predict", json=EXAMPLE_PATIENT).status_code == 200
    assert metric(client, 'heartml_model_reloads_total{result="failure"}') == 1.0
    text = client.get("/metrics").text
    assert 'heartml_model_info{name="heart-disease-test",source="registry",version="2"} 1.0' in text
    assert 'version="1"' not in text.split("heartml_model_info")[-1].split("\n")[0]


def test_a_refused_account_keeps_the_model_serving_and_says_so(
    client: TestClient, source: StaticSource
) -> None:
    holder = client.app.state.holder  # type: ignore[attr-defined]
    refusal = "the registry at http://r refused account 'heartml-serving' (HTTP 401)"
    source.resolve_error = AccessDeniedError(refusal)
    assert holder.check().result == "failed"
    ready = client.get("/ready")
    assert ready.status_code == 200  # still in the Service: it has a model to serve
    assert ready.json()["status"] == "ready"
    assert refusal in ready.json()["warning"]
    assert "still serving heart-disease-test/1" in ready.json()["warning"]
    info = client.get("/model").json()
    assert info["registry_refusal"] == refusal
    assert client.post("/predict", json=EXAMPLE_PATIENT).status_code == 200
    assert metric(client, 'heartml_registry_checks_total{result="refused"}') == 1.0

    source.resolve_error = None  # the Secret fixed: the warning goes
    assert holder.check().result == "unchanged"
    assert client.get("/ready").json()["warning"] is None
    assert client.get("/model").json()["registry_refusal"] is None


def test_admin_reload_needs_the_token(client: TestClient, source: StaticSource) -> None:
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in wrong.text
    source.version = 2
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["result"] == "reloaded"
    assert ok.json()["model"]["version"] == 2
    again = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.json()["result"] == "unchanged"
    source.resolve_error = ConnectionError("down")
    failed = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert failed.status_code == 502
    assert failed.json()["model"]["version"] == 2


def test_admin_is_disabled_without_a_token(source: StaticSource) -> None:
    app = create_app(unit_settings(admin_token=None), source=source, follow=False)
    with TestClient(app) as client:
        response = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 404
        assert "HEARTML_ADMIN_TOKEN" in response.json()["detail"]


def test_cors_only_when_configured(source: StaticSource) -> None:
    origin = {"Origin": "https://dash.example"}
    app = create_app(unit_settings(), source=source, follow=False)
    with TestClient(app) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    app = create_app(
        unit_settings(cors_origins=["https://dash.example"]), source=source, follow=False
    )
    with TestClient(app) as client:
        allowed = client.get("/health", headers=origin).headers
        assert allowed["access-control-allow-origin"] == "https://dash.example"


def test_the_background_loader_retries_until_the_source_answers(source: StaticSource) -> None:
    import time

    source.resolve_error = ConnectionError("down")
    app = create_app(unit_settings(), source=source)
    with TestClient(app) as client:
        time.sleep(0.3)
        assert client.get("/ready").status_code == 503
        source.resolve_error = None
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)


def test_answers_are_compact_json_in_a_fixed_field_order(client: TestClient) -> None:
    one = client.post("/predict", json=EXAMPLE_PATIENT)
    assert list(one.json()) == [
        "prediction", "label", "probability", "imputed", "model_name", "model_version",
        "site", "site_adapted",
    ]  # fmt: skip
    assert one.content == json_bytes(one.json())
    assert one.headers["content-type"] == "application/json"
    batch = client.post("/predict/batch", json={"instances": [EXAMPLE_PATIENT]})
    assert list(batch.json()) == [
        "predictions", "count", "model_name", "model_version", "site", "site_adapted",
    ]  # fmt: skip
    entry = batch.json()["predictions"][0]
    assert list(entry) == [
        "prediction", "probability", "label", "imputed", "model_name", "model_version",
        "site", "site_adapted",
    ]  # fmt: skip
    assert batch.content == json_bytes(batch.json())


async def with_query_dependency(limit: int) -> int:
    return limit


def not_a_coroutine(request: Request) -> int:
    return 1


def test_a_provided_route_refuses_a_parameter_it_cannot_provide() -> None:
    """/predict's route class resolves only request-level providers: anything else in an
    endpoint's signature is refused when the route is declared, not ignored at request time."""
    router = APIRouter(route_class=ProvidedRoute)

    with pytest.raises(TypeError, match="takes no request parameters"):

        @router.get("/query")
        async def with_query(limit: int) -> Response:
            return Response()

    with pytest.raises(TypeError, match=r"^/nested: "):

        @router.get("/nested")
        async def with_nested(value: Annotated[int, Depends(with_query_dependency)]) -> Response:
            return Response()

    with pytest.raises(TypeError, match=r"^/sync: value is not a provider"):

        @router.get("/sync")
        async def with_sync(value: Annotated[int, Depends(not_a_coroutine)]) -> Response:
            return Response()

    @router.get("/fine")
    async def with_providers(holder: HolderDep, settings: SettingsDep) -> Response:
        return Response()


# --- sites ---------------------------------------------------------------------------------


def test_a_request_s_site_picks_its_champion_in_one_look_up(source: StaticSource) -> None:
    source.sites = {"va": 2}
    app = create_app(unit_settings(), source=source, follow=False)
    app.state.holder.check()
    with TestClient(app) as client:

        def answer(path: str = "/predict", **kwargs: Any) -> dict[str, Any]:
            response = client.post(path, json=EXAMPLE_PATIENT, **kwargs)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        def who(body: dict[str, Any]) -> tuple[int, str | None, bool]:
            return body["model_version"], body["site"], body["site_adapted"]

        assert who(answer()) == (1, None, False)
        assert who(answer(params={"site": "va"})) == (2, "va", True)
        assert who(answer(headers={"X-Heartml-Site": "va"})) == (2, "va", True)
        # The query parameter wins over the header.
        both = answer(params={"site": "hungarian"}, headers={"X-Heartml-Site": "va"})
        assert who(both) == (1, "hungarian", False)  # no champion there: the global one
        assert who(answer(params={"site": "st_marys"})) == (1, "st_marys", False)
        batch = client.post(
            "/predict/batch", params={"site": "va"}, json={"instances": [EXAMPLE_PATIENT] * 2}
        ).json()
        assert who(batch) == (2, "va", True)
        assert [who(p) for p in batch["predictions"]] == [(2, "va", True)] * 2

        for where in ({"params": {"site": "VA"}}, {"headers": {"X-Heartml-Site": "va-1"}}):
            response = client.post("/predict", json=EXAMPLE_PATIENT, **where)
            assert response.status_code == 422, response.text
            [entry] = response.json()["detail"]
            assert entry["type"] == "site_invalid" and "invalid site name" in entry["msg"]
            assert entry["loc"] in (["query", "site"], ["header", "X-Heartml-Site"])

        metrics = client.get("/metrics").text
        assert 'heartml_predictions_total{prediction="1",site="va"}' in metrics or (
            'heartml_predictions_total{prediction="0",site="va"}' in metrics
        )
        assert 'site="other"' in metrics and 'site="none"' in metrics
        assert 'site="st_marys"' not in metrics
        assert (
            'heartml_site_model_info{adapted="true",name="heart-disease-test",site="va",'
            'version="2"} 1.0'
        ) in metrics

        info = client.get("/model").json()
        assert info["version"] == 1
        assert info["sites"]["va"]["version"] == 2 and info["sites"]["va"]["adapted"] is True

        # The alias goes: the site's requests go to the global champion at the next look.
        source.sites = {}
        app.state.holder.check()
        assert who(answer(params={"site": "va"})) == (1, "va", False)
        assert client.get("/model").json()["sites"] == {}
        assert 'heartml_site_model_info{adapted="true"' not in client.get("/metrics").text


def test_the_deployment_s_default_site_answers_requests_that_name_none(
    source: StaticSource,
) -> None:
    source.sites = {"hungarian": 2}
    app = create_app(unit_settings(site="hungarian"), source=source, follow=False)
    app.state.holder.check()
    with TestClient(app) as client:
        body = client.post("/predict", json=EXAMPLE_PATIENT).json()
        assert (body["model_version"], body["site"], body["site_adapted"]) == (2, "hungarian", True)
        other = client.post("/predict", params={"site": "va"}, json=EXAMPLE_PATIENT).json()
        assert (other["model_version"], other["site"]) == (1, "va")
    assert Settings(site="").site is None  # an empty HEARTML_SITE is unset
