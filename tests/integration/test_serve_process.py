"""`heartml serve` and `heartml export` as real processes.

* A tracking server that is down at start: the API lives (/health 200), is not ready (/ready
  503 with the reason), and becomes ready by itself once the server is up with a champion; the
  server stopping and returning later changes nothing for what is served.
* `heartml export DIR` then `heartml serve --model-dir DIR --workers 2` with no tracking server,
  and without pandas, scikit-learn, SciPy, matplotlib or MLflow (the ONNX form serves).
* Failures are one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import (
    HeartmlServer,
    MlflowServer,
    free_port,
    make_settings,
    run_heartml,
    wait_until,
)
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.model.export import ExportError, export_champion
from heartml.registry import (
    configure_mlflow,
    ensure_experiment,
    promote_version,
    read_family,
    tag_candidate_version,
)
from heartml.settings import Settings

pytestmark = pytest.mark.slow

LR = "heart-disease-logistic_regression"


# Checks every second: a promotion or a server's return shows within the tests' waits.
FOLLOW = {"HEARTML_RELOAD_INTERVAL_S": "1"}


def copy_champion(source: Settings, target: Settings, staging: Path) -> int:
    """Register the trained logistic regression, ONNX form included, in ``target`` and make
    it champion."""
    import mlflow
    import mlflow.artifacts
    import mlflow.sklearn

    from heartml.training.tracking import SKOPS_TRUSTED_TYPES

    configure_mlflow(source)
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{LR}/1", dst_path=str(staging / "copy"))
    )
    pipeline = mlflow.sklearn.load_model(str(local))
    configure_mlflow(target)
    experiment = ensure_experiment(target)
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format="skops",
            skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
            pip_requirements=["scikit-learn"],
            extra_files=[str(p) for p in sorted((local / "extra_files").iterdir())],
            registered_model_name=LR,
        )
    shutil.rmtree(local)
    version = str(info.registered_model_version)
    tag_candidate_version(
        target, LR, version, {"roc_auc": "0.9500", "model_type": "logistic_regression"}
    )
    promote_version(target, LR, int(version), reason="test: champion on the new server")
    return int(version)


def registry_errors(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'heartml_registry_checks_total\{result="error"\} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.server
def test_tracking_server_down_at_start_then_stopping_and_returning(
    trained_settings: Settings, tmp_path: Path, mirror: Path, empty_store: Path
) -> None:
    """Nothing listens at start: the API lives but is not ready, and becomes ready by itself.
    The server then dies under it: it keeps serving, says so, and catches up on its return."""
    server = MlflowServer(
        tmp_path / "server", empty_store
    )  # its port is chosen, nothing listens yet
    remote = make_settings(tmp_path / "remote", mirror, mlflow_tracking_uri=server.uri)
    log = tmp_path / "serve.log"
    token = "never-print-this-admin-token"
    env = {"HEARTML_REGISTRY_RETRIES": "0", "HEARTML_ADMIN_TOKEN": token}
    try:
        with HeartmlServer(remote, log, env={**FOLLOW, **env}) as api:
            url = api.url
            assert httpx.get(f"{url}/health").status_code == 200
            # Until the first check has failed, the reason is still "loading".
            wait_until(
                lambda: "unreachable" in httpx.get(f"{url}/ready").json()["reason"],
                30,
                "/ready names the unreachable server",
            )
            assert httpx.get(f"{url}/ready").status_code == 503
            assert httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT).status_code == 503
            assert registry_errors(url) > 0

            server.start()
            version = copy_champion(trained_settings, remote, tmp_path)
            model = api.wait_ready(90)
            assert (model["name"], model["version"]) == (LR, version)
            assert model["source"] == "registry"
            assert model["engine"] == "onnx"

            server.stop()
            before = registry_errors(url)
            # Checks every second, all failing: /model and /metrics say so.
            wait_until(
                lambda: (
                    registry_errors(url) > before and httpx.get(f"{url}/model").json()["last_error"]
                ),
                30,
                "the failed checks show in /metrics and /model",
            )
            for _ in range(20):
                answer = httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT)
                assert answer.status_code == 200
                served = answer.json()
                assert (served["model_name"], served["model_version"]) == (LR, version)
            assert httpx.get(f"{url}/ready").status_code == 200

            server.start()  # the server returns on the same address, with the same store
            newer = copy_champion(trained_settings, remote, tmp_path)  # promoted after the return
            assert newer != version
            wait_until(
                lambda: httpx.get(f"{url}/model").json()["version"] == newer,
                90,
                f"the API serves {LR}/{newer} ({log})",
            )
            answer = httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT).json()
            assert (answer["model_name"], answer["model_version"]) == (LR, newer)
            assert token not in httpx.get(f"{url}/model").text
    finally:
        server.stop()
    assert token not in log.read_text()
    assert "Traceback" not in log.read_text()


# What serving an exported model needs no more once it carries its ONNX form: the served
# process refuses to import any of these (a sitecustomize on its PYTHONPATH). MLflow itself is
# only needed to read a registry (mlflow-skinny) or to serve a model without an ONNX form.
NOT_NEEDED_TO_SERVE_AN_EXPORT = (
    "pandas", "sklearn", "scipy", "matplotlib", "skl2onnx", "skops", "mlflow",
)  # fmt: skip

REFUSE_IMPORTS = f"""import sys
REFUSED = {NOT_NEEDED_TO_SERVE_AN_EXPORT!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ImportError(name + " is refused: serving an export must not need it")
        return None
sys.meta_path.insert(0, Refuse())
"""


def test_export_then_serve_the_directory_without_tracking_server(
    trained_settings: Settings, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exported-model"
    done = run_heartml(trained_settings, "export", str(export_dir))
    assert done.returncode == 0, done.stderr
    champion = read_family(trained_settings).champion
    assert champion is not None
    info = json.loads((export_dir / "model.json").read_text())
    assert info["name"] == champion.name
    assert info["version"] == champion.version
    assert info["run_id"] == champion.run_id
    assert info["roc_auc"] == champion.roc_auc
    assert info["model_type"] == champion.tags["model_type"]
    assert info["promoted_at"] == champion.tags["promoted_at"]
    assert info["exported_at"]
    assert (export_dir / "MLmodel").is_file()

    assert (export_dir / "extra_files" / "pipeline.onnx").is_file()

    # Exporting again replaces the export; a directory holding anything else is refused.
    export_champion(trained_settings, export_dir)
    assert json.loads((export_dir / "model.json").read_text())["exported_at"] != info["exported_at"]
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_champion(trained_settings, occupied)
    assert (occupied / "notes.txt").read_text() == "mine"

    # No tracking server: the URI points at a port nobody listens on.
    offline = make_settings(
        tmp_path / "offline",
        trained_settings.data_source,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
    )
    refuse = tmp_path / "refuse-imports"
    refuse.mkdir()
    (refuse / "sitecustomize.py").write_text(REFUSE_IMPORTS)
    log = tmp_path / "serve.log"
    shared = tmp_path / "prometheus"  # the workers' metric files, one set per worker process
    shared.mkdir()
    slim = {"PYTHONPATH": str(refuse), "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with HeartmlServer(
        offline, log, "--model-dir", str(export_dir), "--workers", "2", env={**FOLLOW, **slim}
    ) as api:
        url = api.url
        api.wait_ready(90)
        # /ready answered by one worker; the gauge is the minimum over the workers that
        # have started, so wait for both to have started too.
        wait_until(
            lambda: (
                len(list(shared.glob("gauge_livemin_*.db"))) == 2
                and "heartml_model_loaded 1.0" in httpx.get(f"{url}/metrics").text
            ),
            90,
            "both workers load the model",
        )
        model = httpx.get(f"{url}/model").json()
        assert model["source"] == "directory"
        assert model["engine"] == "onnx"
        assert (model["name"], model["version"]) == (champion.name, champion.version)
        answers = [httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT) for _ in range(20)]
        assert {a.status_code for a in answers} == {200}
        assert {(a.json()["model_name"], a.json()["model_version"]) for a in answers} == {
            (champion.name, champion.version)
        }
        # Two workers, one set of metrics: every request counted whichever worker served it.
        metrics = httpx.get(f"{url}/metrics").text
        count = next(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('heartml_http_requests_total{endpoint="/predict",method="POST"')
        )
        assert count == 20
    assert "Traceback" not in log.read_text()


def test_failures_are_one_line_and_exit_1(settings: Settings, tmp_path: Path) -> None:
    def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        return lines[0]

    # An empty store: nothing to export.
    assert "no champion" in one_line_error(run_heartml(settings, "export", str(tmp_path / "x")))
    # Not an export.
    message = one_line_error(
        run_heartml(settings, "serve", "--model-dir", str(tmp_path), "--port", str(free_port()))
    )
    assert "model.json" in message
    # The port is taken.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = one_line_error(run_heartml(settings, "serve", "--port", str(port), timeout=60))
        assert "in use" in message
