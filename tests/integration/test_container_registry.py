"""Train, promote and serve through containers, on the authenticated registry.

The MLflow server image (`make image-mlflow`) runs `mlflow server` with its basic-auth app
against the PostgreSQL of `make mlflow-server` (scripts/mlflow-server.sh with
MLFLOW_SERVER_IMAGE), on the host network at 127.0.0.1; `heartml registry bootstrap` makes the
accounts; `heartml train` and `heartml promote --auto` run against it as the pipeline account;
then the API image without a model (`make image-registry`), started as the prod pod spec says
(its serving account from the Secret the spec names) but without HEARTML_MODEL_DIR, serves the
champion and follows a second promotion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import containers
import pytest

from conftest import (
    MLFLOW_TEST_IMAGE,
    REGISTRY_TEST_IMAGE,
    REPO,
    BackgroundMake,
    free_port,
    make_settings,
    run_heartml,
    wait_until,
)
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.registry import read_family

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.server]

SCRIPT = REPO / "scripts" / "mlflow-server.sh"
PIPELINE, SERVING = "heartml-pipeline", "heartml-serving"


@dataclass(frozen=True)
class Server:
    uri: str
    run_dir: Path

    def env_of(self, account: str) -> dict[str, str]:
        """The credentials of ``account`` (from the bootstrap's secrets directory)."""
        if account == "admin":
            password = (self.run_dir / "mlflow-admin.password").read_text().strip()
        else:
            password = (self.run_dir / "registry" / f"{account}.password").read_text().strip()
        return {
            "MLFLOW_TRACKING_USERNAME": account,
            "MLFLOW_TRACKING_PASSWORD": password,
            "HEARTML_REGISTRY_ACCESS_CONFIG": str(REPO / "configs" / "registry-access.yaml"),
            "HEARTML_REGISTRY_SECRETS_DIR": str(self.run_dir / "registry"),
        }


@pytest.fixture(scope="module")
def images(background_images: tuple[BackgroundMake, Path]) -> Path:
    """Both images built; the rendered prod overlay's path."""
    build, rendered = background_images
    build.wait()
    labels = containers.docker(
        "image", "inspect", "-f", "{{json .Config.Labels}}", REGISTRY_TEST_IMAGE
    )
    assert "io.heartml.model" not in labels, "the registry image carries no model"
    return rendered


@pytest.fixture
def mlflow_container(images: Path, tmp_path: Path, mirror: Path) -> Iterator[Server]:
    # Not under pytest's private (0700) temp tree: the postgres user must reach its data.
    run_dir = Path(tempfile.mkdtemp(prefix="heartml-pg-"))
    run_dir.chmod(0o755)
    env = {
        **os.environ,
        "HEARTML_RUN_DIR": str(run_dir),
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")),
        "MLFLOW_SERVER_IMAGE": MLFLOW_TEST_IMAGE,
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"],
        env=env,
        cwd=run_dir,  # the postgres user cannot enter this test's private directory
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    name = f"heartml-mlflow-{env['MLFLOW_PORT']}"
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert f"(container of {MLFLOW_TEST_IMAGE})" in started.stdout
        assert containers.state(name)["Running"]
        server = Server((run_dir / "mlflow.uri").read_text().strip(), run_dir)
        admin = make_settings(tmp_path / "admin", mirror, mlflow_tracking_uri=server.uri)
        boot = run_heartml(admin, "registry", "bootstrap", env=server.env_of("admin"))
        assert boot.returncode == 0, boot.stdout + boot.stderr
        yield server
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop"],
            env=env,
            cwd=run_dir,
            capture_output=True,
            timeout=120,
            check=False,
        )
        secrets = [
            path.read_text().strip()
            for path in (
                run_dir / "pg.password",
                run_dir / "mlflow-admin.password",
                run_dir / "mlflow-secret.key",
                *(run_dir / "registry").glob("*.password"),
            )
            if path.is_file()
        ]
        logs = {log.name: log.read_text(errors="replace") for log in run_dir.glob("*.log")}
        shutil.rmtree(run_dir, ignore_errors=True)
    # The container is gone, and no password or key ever showed in what it logged.
    with pytest.raises(containers.ContainerError):
        containers.state(name)
    assert "mlflow.log" in logs and len(secrets) == 5
    for log, text in logs.items():
        for secret in secrets:
            assert secret not in text, log


def test_train_promote_then_the_registry_image_follows(
    mlflow_container: Server,
    images: Path,
    mirror: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = make_settings(tmp_path / "remote", mirror, mlflow_tracking_uri=mlflow_container.uri)
    pipeline = mlflow_container.env_of(PIPELINE)
    for args in (("data", "download"), ("train", "--no-promote"), ("promote", "--auto")):
        done = run_heartml(remote, *args, timeout=600, env=pipeline)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    serving = mlflow_container.env_of(SERVING)
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(variable, serving[variable])
    family = read_family(remote)
    champion = family.champion
    assert champion is not None

    # The pod's serving account comes from the Secret its spec names.
    secrets = {k: serving[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    pod = containers.pod_run(containers.load_rendered(images), secrets=secrets)
    env = {
        "HEARTML_MODEL_DIR": None,  # the registry image has no model: follow the registry
        "MLFLOW_TRACKING_URI": mlflow_container.uri,
        "HEARTML_RELOAD_INTERVAL_S": "1",
    }
    name = f"heartml-registry-test-{os.getpid()}"
    with containers.running_api(
        REGISTRY_TEST_IMAGE, pod, name=name, env=env, log=tmp_path / "api.log"
    ) as api:
        containers.wait_ready(api)

        def served() -> tuple[str, int]:
            status, model = containers.http(f"{api.url}/model")
            assert status == 200 and isinstance(model, dict), model
            assert model["source"] == "registry"
            return model["name"], model["version"]

        assert served() == (champion.name, champion.version)

        # A second promotion: another candidate, by hand, past the gate, with the reason an
        # authenticated registry asks for.
        other = next(v for v in family.versions if v.name != champion.name)
        by_hand = ("promote", other.name, str(other.version), "--force", "--reason", "test")
        done = run_heartml(remote, *by_hand, env=pipeline)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: served() == (other.name, other.version), 120, "the API follows")
        status, answer = containers.http(f"{api.url}/predict", EXAMPLE_PATIENT)
        assert status == 200 and isinstance(answer, dict), answer
        assert (answer["model_name"], answer["model_version"]) == (other.name, other.version)
    assert (
        f"loaded {other.name}/{other.version} from registry" in (tmp_path / "api.log").read_text()
    )
