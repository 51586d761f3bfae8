"""The API image, built and run for real through the make targets Jenkins calls.

`make image` (stage Build image) on the export of a trained store, `make image-test` (stage Test
image) running it as the rendered prod pod spec says, image-test refusing an image whose labels
do not name the export, and `make image-report`: the figures, with `docker stop` under load.
Needs a Docker engine: `make test` starts one, and the tests fail with the reason without one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import make_settings, run_make, settings_env

pytestmark = [pytest.mark.slow, pytest.mark.container]

IMAGE = "heartml-test/heartml-api:test"


@dataclass(frozen=True)
class Built:
    root: Path
    env: dict[str, str]
    model: dict[str, Any]

    def variables(self, **overrides: str) -> list[str]:
        values = {
            "EXPORT_DIR": str(self.root / "exported-model"),
            "RUN_DIR": str(self.root / "run"),
            "IMAGE_REGISTRY": "heartml-test",
            "IMAGE": IMAGE,
            **overrides,
        }
        return [f"{key}={value}" for key, value in values.items()]


def containers_named(prefix: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name={prefix}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


@pytest.fixture(scope="module")
def built(
    background_images: object,
    trained_root: Path,
    mirror: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Built:
    """`make export-model` from a copy of the trained store, then `make image` (while the
    images of test_container_registry.py build in the background)."""
    root = tmp_path_factory.mktemp("image")
    (root / "store").mkdir()
    shutil.copy2(trained_root / "mlflow.db", root / "store" / "mlflow.db")
    settings = make_settings(root / "store", mirror, artifact_dir=trained_root / "mlartifacts")
    built = Built(root, settings_env(settings), {})
    exported = run_make("export-model", *built.variables(), env=built.env)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    image = run_make("image", *built.variables(), env=built.env)
    output = image.stdout + image.stderr
    assert image.returncode == 0, output[-4000:]
    assert f"built {IMAGE}" in output
    assert "base image python:3.11-slim:" in output
    model = json.loads((root / "exported-model" / "model.json").read_text())
    assert (root / "run" / "image").read_text().strip() == IMAGE
    return Built(root, built.env, model)


def test_make_image_test_runs_it_as_the_prod_pod(built: Built) -> None:
    result = run_make("image-test", *built.variables(), env=built.env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    name, version = built.model["name"], built.model["version"]
    for line in (
        f"✅ image: user 10001:10001, HEALTHCHECK, labels {name} v{version}",
        "✅ contents:",
        "no data, store, .git, tests or other virtualenv; none of alembic, flask",
        "user 10001:10001; read-only root; tmpfs /tmp; capabilities dropped: ALL; "
        "no-new-privileges; seccomp RuntimeDefault; limits 1Gi memory, 2 CPU; stop timeout 30 s",
        "✅ Docker HEALTHCHECK: healthy",
        f"✅ GET /model → {name} v{version}",
        "✅ POST /predict → prediction",
        "✅ POST /predict/batch → 3 predictions",
        "✅ GET /metrics → 200",
        "✅ every process runs as UID 10001",
        f"✅ image-test passed: {IMAGE}",
    ):
        assert line in output, line
    assert containers_named("heartml-image-test-") == [], "the container was not removed"
    assert "Application startup complete" in (built.root / "run" / "image-test.log").read_text()


def test_image_test_fails_when_the_labels_are_not_the_export(built: Built, tmp_path: Path) -> None:
    other = tmp_path / "exported-model"
    other.mkdir()
    model = {**built.model, "version": built.model["version"] + 1}
    (other / "model.json").write_text(json.dumps(model))
    result = run_make("image-test", *built.variables(EXPORT_DIR=str(other)), env=built.env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("❌")]
    assert errors == [
        f"❌ image-test: label io.heartml.model.version is '{built.model['version']}', "
        f"not {model['version']}"
    ]


def test_make_image_report_and_docker_stop_under_load(built: Built, tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    result = run_make(
        "image-report",
        *built.variables(),
        f"IMAGE_REPORT_ARGS=--runs 1 --json {figures_file}",
        env=built.env,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for label in ("above the base", "docker run → ready", "memory after 1,000 requests"):
        assert label in output, label
    figures = json.loads(figures_file.read_text())
    assert figures["image_mb"] > figures["base_mb"] > 0
    assert figures["above_base_mb"] <= 400, "the serving image's size target"
    assert figures["memory_after_requests_mb"] > 0 and len(figures["ready_s"]) == 1
    packages = figures["site_packages_mb"]
    assert {"onnxruntime", "mlflow", "fastapi"} <= packages.keys()
    not_serving = {"sklearn", "scipy", "pandas", "matplotlib", "pyarrow", "sqlalchemy"}
    assert not not_serving & packages.keys()

    # docker stop under load: the drain answers everything sent before the stop began, and
    # what is sent during it; the server then exits 0 on its own, before the grace period
    # runs out (Docker would kill it: 137).
    stop = figures["stop"]
    assert stop["shutdown_delay_s"] > 0
    assert stop["sent_before"] > 0 and stop["lost_before"] == 0, stop
    assert stop["answered_after"] > 0, stop
    assert stop["exit_code"] == 0, stop
