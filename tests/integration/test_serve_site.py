"""Serving knows the site: a real `heartml serve` over a real trained store, through real HTTP.

A request naming a site with a champion is answered by it (its recalibrated graph: the global
champion's risk passed through the site's update), any other well-formed site by the global
champion, a malformed one is a 422; the header and HEARTML_SITE name a site too; a site
promotion is followed without a restart and without a failed request; the metrics count
predictions by a bounded site label; the site's drift is measured against its own profile.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    HeartmlServer,
    one_line_error,
    register_adapted_version,
    run_heartml,
    wait_until,
)
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.registry import promote_version, read_family
from heartml.settings import Settings

pytestmark = pytest.mark.slow

LR = "heart-disease-logistic_regression"
UPDATE = (0.9, 0.8)  # intercept, slope: what the site's graph appends to the global one
RELOAD = {"HEARTML_RELOAD_INTERVAL_S": "0.5", "HEARTML_SHADOW": "off"}


def adapted_champion(settings: Settings, site: str = "va") -> int:
    version = register_adapted_version(settings, LR, 1, site, update=UPDATE)
    result = promote_version(settings, LR, version, site=site, reason="test: site go-live")
    assert result.outcome.value == "promoted", result.message
    return version


def recalibrated(p: float) -> float:
    intercept, slope = UPDATE
    return 1 / (1 + math.exp(-(intercept + slope * math.log(p / (1 - p)))))


def predict(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT, timeout=10, **kwargs)


def counted(metrics: str, site: str) -> float:
    found = re.findall(
        rf'heartml_predictions_total{{prediction="\d",site="{site}"}} (\S+)', metrics
    )
    return sum(float(value) for value in found)


def test_a_site_request_is_answered_by_the_site_champion(
    trained_settings: Settings, tmp_path: Path
) -> None:
    settings = trained_settings
    va = adapted_champion(settings)
    assert read_family(settings).champion.ref == f"{LR}/1"  # type: ignore[union-attr]
    with HeartmlServer(settings, tmp_path / "serve.log", env=RELOAD) as server:
        info = server.wait_ready()
        wait_until(lambda: "va" in httpx.get(f"{server.url}/model").json()["sites"], 60, "site")
        info = httpx.get(f"{server.url}/model").json()
        assert (info["name"], info["version"]) == (LR, 1)
        site = info["sites"]["va"]
        assert (site["name"], site["version"], site["adapted"]) == (LR, va, True)
        assert site["engine"] == "onnx"

        plain = predict(server.url).json()
        assert (plain["model_version"], plain["site"], plain["site_adapted"]) == (1, None, False)
        for how in ({"params": {"site": "va"}}, {"headers": {"X-Heartml-Site": "va"}}):
            answer = predict(server.url, **how).json()
            assert (answer["model_name"], answer["model_version"]) == (LR, va)
            assert (answer["site"], answer["site_adapted"]) == ("va", True)
            assert answer["probability"] == pytest.approx(
                recalibrated(plain["probability"]), abs=1e-6
            )
        for well_formed in ("hungarian", "st_marys"):
            answer = predict(server.url, params={"site": well_formed}).json()
            assert answer["model_version"] == 1 and answer["site"] == well_formed
            assert answer["site_adapted"] is False
            assert answer["probability"] == plain["probability"]
        for bad in ("VA", "va;drop", "x" * 33):
            refused = predict(server.url, params={"site": bad})
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["query", "site"]
        refused = predict(server.url, headers={"X-Heartml-Site": "Long Beach"})
        assert refused.status_code == 422
        batch = httpx.post(
            f"{server.url}/predict/batch",
            params={"site": "va"},
            json={"instances": [EXAMPLE_PATIENT] * 3},
        ).json()
        assert (batch["model_version"], batch["site_adapted"]) == (va, True)

        metrics = httpx.get(f"{server.url}/metrics").text
        assert counted(metrics, "va") == 2 + 3
        assert counted(metrics, "hungarian") == 1 and counted(metrics, "other") == 1
        assert counted(metrics, "none") == 1
        assert "st_marys" not in metrics
        assert (
            f'heartml_site_model_info{{adapted="true",name="{LR}",site="va",version="{va}"}} 1.0'
            in metrics
        )

        # The site's drift window holds the site's rows only, against the site's profile
        # (the VA file's 200 rows), not the global champion's.
        after = httpx.get(f"{server.url}/model").json()
        drift = after["sites"]["va"]["drift"]
        assert drift["rows"] == 5 and drift["reference_rows"] == 200
        assert after["drift"]["rows"] == 1 + 2  # the global champion's answers
        assert after["drift"]["reference_rows"] != 200


def test_a_site_promotion_is_followed_without_a_failed_request(
    trained_settings: Settings, tmp_path: Path
) -> None:
    settings = trained_settings
    first = adapted_champion(settings)
    second = register_adapted_version(settings, LR, 1, "va", method="intercept")
    stop = threading.Event()
    outcomes: Counter[int] = Counter()
    versions: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def stream(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/predict", params={"site": "va"}, json=EXAMPLE_PATIENT)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    outcomes[response.status_code] += 1
                    if response.status_code == 200:
                        versions[response.json()["model_version"]] += 1

    with HeartmlServer(settings, tmp_path / "serve.log", env=RELOAD) as server:
        server.wait_ready()

        def site_version() -> int | None:
            sites = httpx.get(f"{server.url}/model").json()["sites"]
            return sites["va"]["version"] if "va" in sites else None

        wait_until(lambda: site_version() == first, 60, "the first site champion")
        clients = [threading.Thread(target=stream, args=(server.url,)) for _ in range(3)]
        for thread in clients:
            thread.start()
        try:
            wait_until(lambda: sum(outcomes.values()) > 20, 30, "requests before the promotion")
            result = promote_version(settings, LR, second, site="va", reason="test: new update")
            assert result.outcome.value == "promoted", result.message
            wait_until(lambda: site_version() == second, 60, "the promoted site champion")
            wait_until(lambda: versions[second] > 20, 30, "requests after the promotion")
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        info = httpx.get(f"{server.url}/model").json()
        assert (info["name"], info["version"]) == (LR, 1)  # the global champion stays

    assert errors == []
    assert set(outcomes) == {200}, outcomes
    assert versions[first] > 0 and versions[second] > 0, versions


def test_heartml_site_sets_the_deployment_s_default(
    trained_settings: Settings, tmp_path: Path
) -> None:
    settings = trained_settings
    va = adapted_champion(settings)
    env = {**RELOAD, "HEARTML_SITE": "va"}
    with HeartmlServer(settings, tmp_path / "serve.log", env=env) as server:
        server.wait_ready()
        wait_until(lambda: "va" in httpx.get(f"{server.url}/model").json()["sites"], 60, "site")
        assert httpx.get(f"{server.url}/model").json()["default_site"] == "va"
        answer = predict(server.url).json()
        assert (answer["model_version"], answer["site"], answer["site_adapted"]) == (va, "va", True)
        other = predict(server.url, params={"site": "hungarian"}).json()
        assert (other["model_version"], other["site"]) == (1, "hungarian")


def test_a_malformed_heartml_site_stops_serve_in_one_line(settings: Settings) -> None:
    result = run_heartml(settings, "serve", env={"HEARTML_SITE": "Long Beach"}, timeout=60)
    one_line_error(result, "invalid site name 'Long Beach'")
