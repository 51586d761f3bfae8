"""The seed's flow through containers.

The MLflow server image (`make image-mlflow`) runs `mlflow server` against the PostgreSQL of
`make mlflow-server` (scripts/mlflow-server.sh with MLFLOW_SERVER_IMAGE), on the host network at
127.0.0.1; `heartml train` and `heartml promote --auto` run against it; then the API image
without a model (`make image-registry`), started as the prod pod spec says but without
HEARTML_MODEL_DIR, serves the champion and follows a second promotion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
from heartml.registry import read_family
from heartml.schema import EXAMPLE_PATIENT

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.server]

SCRIPT = REPO / "scripts" / "mlflow-server.sh"


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
def mlflow_container(images: Path) -> Iterator[str]:
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
        yield (run_dir / "mlflow.uri").read_text().strip()
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop"],
            env=env,
            cwd=run_dir,
            capture_output=True,
            timeout=120,
            check=False,
        )
        password = (run_dir / "pg.password").read_text().strip()
        logs = {log.name: log.read_text(errors="replace") for log in run_dir.glob("*.log")}
        shutil.rmtree(run_dir, ignore_errors=True)
    # The container is gone, and the database password never showed in what it logged.
    with pytest.raises(containers.ContainerError):
        containers.state(name)
    assert "mlflow.log" in logs
    for log, text in logs.items():
        assert password not in text, log


def test_train_promote_then_the_registry_image_follows(
    mlflow_container: str, images: Path, mirror: Path, tmp_path: Path
) -> None:
    remote = make_settings(tmp_path / "remote", mirror, mlflow_tracking_uri=mlflow_container)
    for args in (("data", "download"), ("train", "--no-promote"), ("promote", "--auto")):
        done = run_heartml(remote, *args, timeout=600)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    family = read_family(remote)
    champion = family.champion
    assert champion is not None

    pod = containers.pod_run(containers.load_rendered(images))
    env = {
        "HEARTML_MODEL_DIR": None,  # the registry image has no model: follow the registry
        "MLFLOW_TRACKING_URI": mlflow_container,
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

        # A second promotion: another candidate, by hand, past the gate.
        other = next(v for v in family.versions if v.name != champion.name)
        done = run_heartml(remote, "promote", other.name, str(other.version), "--force")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: served() == (other.name, other.version), 120, "the API follows")
        status, answer = containers.http(f"{api.url}/predict", EXAMPLE_PATIENT)
        assert status == 200 and isinstance(answer, dict), answer
        assert (answer["model_name"], answer["model_version"]) == (other.name, other.version)
    assert (
        f"loaded {other.name}/{other.version} from registry" in (tmp_path / "api.log").read_text()
    )
