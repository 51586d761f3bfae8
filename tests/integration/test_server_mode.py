"""Server mode end to end: MLflow on PostgreSQL (scripts/mlflow-server.sh), reached over HTTP.

train → promote → serve with reload → promote another → rollback, and the API follows every
change. Skipped only where PostgreSQL is not installed and cannot be (not root). The API runs
as a real process; the other commands run in this one (Typer's runner).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    REPO,
    free_port,
    invoke_heartml,
    make_settings,
    settings_env,
    stop_group,
    wait_for_http,
)
from heartml.registry import read_family
from heartml.schema import EXAMPLE_PATIENT
from heartml.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.server]

SCRIPT = REPO / "scripts" / "mlflow-server.sh"
PATIENT = EXAMPLE_PATIENT


def postgres_available() -> bool:
    return bool(list(Path("/usr/lib/postgresql").glob("*/bin/postgres"))) or os.geteuid() == 0


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not postgres_available() or shutil.which("apt-get") is None:
        pytest.skip("PostgreSQL is not installed and cannot be installed here (needs root + apt)")
    # Not under pytest's private (0700) temp tree: the postgres user must reach its data.
    run_dir = Path(tempfile.mkdtemp(prefix="heartml-pg-"))
    run_dir.chmod(0o755)
    env = {
        **os.environ,
        "HEARTML_RUN_DIR": str(run_dir),
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")),
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        uri = (run_dir / "mlflow.uri").read_text().strip()
        password = (run_dir / "pg.password").read_text().strip()
        yield uri
        # The database password never shows up in what the server logged.
        for log in run_dir.glob("*.log"):
            assert password not in log.read_text(errors="replace"), log
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(run_dir, ignore_errors=True)


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


def wait_for_model(api: str, name: str, version: int, timeout: float = 90) -> dict[str, object]:
    # Every family starts at version 1, so only the (name, version) pair identifies a model.
    deadline = time.monotonic() + timeout
    model: dict[str, object] = {}
    while time.monotonic() < deadline:
        model = get_json(f"{api}/model")
        if model.get("name") == name and model.get("version") in (version, str(version)):
            return model
        time.sleep(0.3)
    raise AssertionError(f"API still serves {model} after {timeout} s, expected {name}/{version}")


def predicted_by(api: str) -> tuple[str, str]:
    request = urllib.request.Request(
        f"{api}/predict",
        data=json.dumps(PATIENT).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    return str(answer["model_name"]), str(answer["model_version"])


def test_whole_flow_on_postgresql(
    postgres_server: str, tmp_path: Path, mirror: Path, data_cache: Path
) -> None:
    # Two candidates: the flow needs a champion and another algorithm to promote; training
    # every candidate is tested elsewhere.
    experiment = tmp_path / "two-candidates.yaml"
    experiment.write_text("version: 1\ncandidates:\n  logistic_regression: {}\n  knn: {}\n")
    settings: Settings = make_settings(
        tmp_path,
        mirror,
        mlflow_tracking_uri=postgres_server,
        data_dir=data_cache,
        experiment_config=experiment,
    )
    trained = invoke_heartml(settings, "train")
    assert trained.returncode == 0, trained.stderr
    auto = invoke_heartml(settings, "promote", "--auto")
    assert auto.returncode == 0, auto.stderr
    champion = read_family(settings).champion
    assert champion is not None

    port = free_port()
    env = settings_env(settings)
    env.update({"HEARTML_RELOAD_INTERVAL_S": "0.5", "HEARTML_PORT": str(port)})
    api = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "heartml", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"{api}/ready", timeout=90)
        wait_for_model(api, champion.name, champion.version)
        assert predicted_by(api) == (champion.name, str(champion.version))

        # A person promotes another algorithm; the API follows.
        other = next(v for v in read_family(settings).versions if v.name != champion.name)
        manual = invoke_heartml(settings, "promote", other.name, str(other.version))
        assert manual.returncode == 0, manual.stderr
        wait_for_model(api, other.name, other.version)
        assert predicted_by(api) == (other.name, str(other.version))

        # Roll back: the previous champion is served again.
        rolled = invoke_heartml(settings, "promote", "--rollback")
        assert rolled.returncode == 0, rolled.stderr
        wait_for_model(api, champion.name, champion.version)
        assert predicted_by(api) == (champion.name, str(champion.version))

        history = json.loads(invoke_heartml(settings, "promote", "--history", "--json").stdout)
        assert len(history) >= 3
        assert history[0]["reason"].startswith("rollback from")
    finally:
        stop_group(server, timeout=30)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]
