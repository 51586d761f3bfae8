"""Live evidence shown on a running server: real UCI rows replayed over HTTP.

* VA Long Beach rows move some feature's PSI above 0.2 within 500 requests, and the drift
  alert's expression (read from deploy/k8s/base/monitoring/alerts.yml) is true on the values
  scraped from /metrics; Cleveland rows keep every PSI below 0.1.
* The shadowed challenger's disagreements are exactly those of the two registered pipelines,
  loaded offline with scikit-learn, on the same rows.
* ``kill -TERM`` under load: every request a client got an answer for is in the prediction log.

A missing value is sent as null where /schema says the field is optional; the others are
filled by the client with the training rows' median or mode (what the model would impute):
the API of this version requires them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from conftest import (
    REPO,
    HeartmlServer,
    free_port,
    make_settings,
    wait_until,
)
from heartml.settings import Settings

pytestmark = pytest.mark.slow

ALERTS = REPO / "deploy" / "k8s" / "base" / "monitoring" / "alerts.yml"
WINDOW = 500


@pytest.fixture(scope="module")
def uci_rows(trained_root: Path, mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Cleveland and VA rows as the data stage cleans them (NaN = missing)."""
    from heartml.data.download import download_data
    from heartml.data.validate import load_dataset

    root = tmp_path_factory.mktemp("sites")
    settings = make_settings(root, mirror, data_dir=root)
    download_data(settings, ("cleveland", "va"))
    return load_dataset(settings, ("cleveland", "va")).frame


def start_server(settings: Settings, root: Path, **env: str) -> HeartmlServer:
    """`heartml serve` on the trained store, with the evidence settings given, ready."""
    variables = {"HEARTML_RELOAD_INTERVAL_S": "0", **env}
    port = free_port()
    server = HeartmlServer(settings, root / f"serve-{port}.log", env=variables, port=port)
    try:
        server.wait_ready(60)
    except AssertionError:
        server.stop()
        raise
    return server


def scrape(server: HeartmlServer) -> dict[str, float]:
    """Every sample of /metrics, by its name with labels."""
    samples = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def psi_of(samples: dict[str, float]) -> dict[str, float]:
    found = (re.fullmatch(r'heartml_feature_psi\{feature="(\w+)"\}', k) for k in samples)
    return {m.group(1): samples[m.group(0)] for m in found if m}


def patients(frame: Any, optional: set[str], fill: dict[str, float]) -> list[dict[str, Any]]:
    from heartml.data.schema import FEATURE_NAMES

    out = []
    for row in frame[list(FEATURE_NAMES)].itertuples(index=False):
        patient: dict[str, Any] = {}
        for name, value in zip(FEATURE_NAMES, row, strict=True):
            if np.isnan(value):
                patient[name] = None if name in optional else fill[name]
            else:
                patient[name] = int(value) if float(value).is_integer() else float(value)
        out.append(patient)
    return out


@pytest.fixture(scope="module")
def served_store(
    trained_root: Path, mirror: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str, str]]:
    """The trained store (read only), its champion, and another version to shadow."""
    from heartml.registry import read_family

    settings = make_settings(trained_root, mirror)
    state = read_family(settings)
    champion = state.champion
    assert champion is not None
    other = next(v for v in state.versions if v.ref != champion.ref)
    yield settings, champion.ref, other.ref


def optional_fields(base: str) -> set[str]:
    """The fields the server accepts as null (none before the API had optional fields)."""
    assert httpx.get(f"{base}/model").json()["drift"]["reference_rows"] > 200  # has a profile
    return set(httpx.get(f"{base}/schema").json().get("optional", []))


def test_va_rows_drift_and_cleveland_rows_do_not(
    served_store: tuple[Settings, str, str], uci_rows: Any, tmp_path: Path
) -> None:
    from heartml.serve.holder import RegistrySource

    settings, champion, _ = served_store
    alert = next(
        rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "HeartmlInputDrift"
    )
    # The rule is "max by (feature) (heartml_feature_psi) > T": true when any feature's PSI on
    # any pod is above T. Evaluated below on the scraped samples of one pod.
    match = re.fullmatch(
        r"\s*max by \(feature\) \(heartml_feature_psi\)\s*>\s*([0-9.]+)\s*", alert["expr"]
    )
    assert match, alert["expr"]
    threshold = float(match.group(1))
    assert threshold == 0.2

    # The fill values: the served model's own profile (median / most frequent code).
    source = RegistrySource(settings)
    ref = source.resolve()
    assert ref is not None and ref.ref == champion
    profile = source.load_model(ref).profile
    assert profile is not None
    fill = {f.name: f.impute_value for f in profile.features}

    for site, expect_drift in (("va", True), ("cleveland", False)):
        server = start_server(
            settings, tmp_path, HEARTML_SHADOW="off", HEARTML_DRIFT_WINDOW=str(WINDOW)
        )
        try:
            optional = optional_fields(server.url)
            rows = patients(uci_rows[uci_rows["site"] == site], optional, fill)
            detected_after = None
            answered = 0
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for patient in rows * 3:
                    if answered >= WINDOW:
                        break
                    response = client.post("/predict", json=patient)
                    assert response.status_code in (200, 422), response.text
                    answered += response.status_code == 200
                    if expect_drift and detected_after is None and answered % 10 == 0:
                        psi = psi_of(scrape(server))
                        if psi and max(psi.values()) > threshold:
                            detected_after = answered
                            break
            psi = psi_of(scrape(server))
            if expect_drift:
                assert detected_after is not None and detected_after <= WINDOW, psi
                # The alert's expression, evaluated on the scraped samples, is true.
                assert max(psi.values()) > threshold
                print(f"VA: PSI > {threshold} after {detected_after} requests: {psi}")
            else:
                assert answered >= 295 and len(psi) == 13, psi
                assert max(psi.values()) < 0.1, psi
                print(f"Cleveland: {answered} requests, max PSI {max(psi.values()):.3f}")
        finally:
            server.stop()


def test_shadow_disagreements_match_the_two_models_offline(
    served_store: tuple[Settings, str, str], uci_rows: Any, tmp_path: Path
) -> None:
    import mlflow.sklearn
    import pandas as pd

    from heartml.data.schema import FEATURE_NAMES
    from heartml.registry import configure_mlflow

    settings, champion, other = served_store
    server = start_server(settings, tmp_path, HEARTML_SHADOW=other)
    try:
        cleveland = uci_rows[uci_rows["site"] == "cleveland"].dropna(subset=list(FEATURE_NAMES))
        rows = patients(cleveland, set(), {})
        with httpx.Client(base_url=server.url, timeout=10) as client:
            # The challenger loads after the champion (after /ready): an answer given before it
            # is in place is not shadowed.
            wait_until(
                lambda: client.get("/model").json()["shadow"]["challenger"],
                60,
                f"the server shadows {other}",
            )
            for patient in rows:
                assert client.post("/predict", json=patient).status_code == 200
            # The shadow process scores at SCHED_IDLE: on a machine busy with other work it
            # may wait minutes for the CPU while the other test workers run (it never waits
            # for this server).
            deadline = time.monotonic() + 300
            while (info := client.get("/model").json())["shadow"]["agreement"]["rows"] < len(rows):
                assert time.monotonic() < deadline, json.dumps(info["shadow"])
                time.sleep(0.1)
        samples = scrape(server)
    finally:
        server.stop()
    shadow = info["shadow"]
    assert shadow["challenger"]["name"] + "/" + str(shadow["challenger"]["version"]) == other

    configure_mlflow(settings)
    x = pd.DataFrame(rows, columns=list(FEATURE_NAMES)).astype("float64")
    ours = mlflow.sklearn.load_model(f"models:/{champion}").predict_proba(x)
    theirs = mlflow.sklearn.load_model(f"models:/{other}").predict_proba(x)
    offline = int(((ours[:, 1] > ours[:, 0]) != (theirs[:, 1] > theirs[:, 0])).sum())
    print(f"shadow {other} vs champion {champion}: {offline} disagreements in {len(rows)} rows")
    assert shadow["agreement"]["disagreements"] == offline
    assert samples["heartml_shadow_disagreements_total"] == offline
    assert samples["heartml_shadow_predictions_total"] == len(rows)
    assert shadow["agreement"]["mean_abs_diff"] == pytest.approx(
        float(np.mean(np.abs(ours[:, 1] - theirs[:, 1]))), abs=1e-5
    )


def test_sigterm_under_load_loses_no_logged_record(
    served_store: tuple[Settings, str, str], uci_rows: Any, tmp_path: Path
) -> None:
    from heartml.data.schema import EXAMPLE_PATIENT

    settings, _, other = served_store
    log_dir = tmp_path / "predictions"
    server = start_server(
        settings,
        tmp_path,
        HEARTML_SHADOW=other,
        HEARTML_PREDICTION_LOG_DIR=str(log_dir),
        HEARTML_SHUTDOWN_DELAY_S="1.5",
    )
    answered: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(1_000_000):
                if stop.is_set():
                    return
                rid = f"w{worker}-{i}"
                try:
                    response = client.post(
                        "/predict", json=EXAMPLE_PATIENT, headers={"X-Request-ID": rid}
                    )
                except httpx.HTTPError:
                    return  # the server has stopped listening
                if response.status_code == 200:
                    assert response.headers["x-request-id"] == rid
                    answered.append(rid)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log.read_text()[-3000:]
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        server.stop()
    logged = [
        json.loads(line)
        for path in sorted(log_dir.glob("predictions-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    ids = [r["request_id"] for r in logged]
    assert len(answered) > 100
    assert set(answered) <= set(ids), len(set(answered) - set(ids))
    assert len(ids) == len(set(ids))
    assert [r["seq"] for r in logged] == list(range(len(logged)))
    print(f"SIGTERM under load: {len(answered)} answered, {len(ids)} logged, none lost")


def shadow_pid(client: httpx.Client) -> int:
    pid = client.get("/model").json()["shadow"]["process"]["pid"]
    assert isinstance(pid, int)
    return pid


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_a_killed_shadow_process_is_restarted_and_no_answer_fails(
    served_store: tuple[Settings, str, str], tmp_path: Path
) -> None:
    """SIGKILL to the shadow process under load from four clients: every request is
    answered, the restart is counted, and the new process shadows and logs from then on."""
    from heartml.data.schema import EXAMPLE_PATIENT

    settings, _, other = served_store
    log_dir = tmp_path / "predictions"
    server = start_server(
        settings,
        tmp_path,
        HEARTML_SHADOW=other,
        HEARTML_PREDICTION_LOG_DIR=str(log_dir),
        HEARTML_SHUTDOWN_DELAY_S="0.5",
    )
    failures: list[str] = []
    answered = [0] * 4
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                response = client.post("/predict", json=EXAMPLE_PATIENT)
                if response.status_code != 200:
                    failures.append(response.text)
                answered[worker] += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            wait_until(lambda: client.get("/model").json()["shadow"]["challenger"], 60, other)
            first = shadow_pid(client)
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: shadow_pid(client) != first, 20, "a new shadow process")
            second = shadow_pid(client)
            before = scrape(server)["heartml_shadow_predictions_total"]
            wait_until(
                lambda: scrape(server)["heartml_shadow_predictions_total"] > before + 100,
                60,
                "the new shadow process scores",
            )
            stop.set()
            for thread in threads:
                thread.join(15)
            samples = scrape(server)
            info = client.get("/model").json()["shadow"]
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.tail()
    finally:
        stop.set()
        server.stop()
    assert not failures, failures[:3]
    assert sum(answered) > 200
    assert samples["heartml_shadow_restarts_total"] == 1 and info["process"]["restarts"] == 1
    assert second != first and gone(first) and gone(second)
    # The new process logs too: its own file, numbers going on from the server's.
    logged = [
        json.loads(line)
        for path in sorted(log_dir.glob("predictions-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len({p.name.rsplit("-", 1)[0] for p in log_dir.glob("predictions-*.jsonl")}) == 1
    assert len(list(log_dir.glob("predictions-*.jsonl"))) >= 2
    dropped = samples['heartml_background_dropped_total{queue="predlog"}']
    assert len(logged) + dropped >= sum(answered) - 8  # at most the requests in flight
    assert all("shadow_probability" in r for r in logged[-100:])
    print(f"killed under load: {sum(answered)} answered, none failed, {dropped:.0f} dropped")


def test_the_shadow_process_ends_with_a_killed_server(
    served_store: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, _, other = served_store
    server = start_server(settings, tmp_path, HEARTML_SHADOW=other)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            wait_until(lambda: client.get("/model").json()["shadow"]["challenger"], 60, other)
            pid = shadow_pid(client)
        assert not gone(pid)
        server.process.kill()
        server.process.wait(10)
        killed = time.monotonic()
        while not gone(pid):
            assert time.monotonic() - killed < 5, "the shadow process outlived its server"
            time.sleep(0.05)
    finally:
        server.stop()
