"""Server mode end to end: MLflow on PostgreSQL with its basic-auth app (scripts/mlflow-server.sh),
accounts from `heartml registry bootstrap`, reached over HTTP.

One server and one trained family for the module, in the order an operator meets them: nobody
gets in without an account; the pipeline trains and promotes, and the history names it; the
serving account reads but may not change anything, and a refusal leaves the registry
byte-identical; a promoter promotes by hand with a reason, the API (as the serving account)
follows, and a rollback; the API keeps serving when its password stops working and says so;
no password and no secret key appears in any process's argv or in any log. PostgreSQL is
installed from apt when absent; a failed install fails the module, and only a platform without
apt skips it. The API runs as a real process; the other
commands run in this one (Typer's runner).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    REPO,
    CliResult,
    HeartmlServer,
    free_port,
    invoke_heartml,
    make_settings,
    one_line_error,
    wait_until,
)
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.server]

SCRIPT = REPO / "scripts" / "mlflow-server.sh"
PIPELINE, SERVING, PROMOTER, PERSON = "heartml-pipeline", "heartml-serving", "alice", "bob"
PREFIX = "srv-"


def postgres_installed() -> bool:
    return bool(list(Path("/usr/lib/postgresql").glob("*/bin/postgres")))


@dataclass
class Registry:
    """The authenticated server of this module, its accounts, and what every command printed."""

    uri: str
    run_dir: Path
    settings: Settings
    outputs: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def secrets_dir(self) -> Path:
        return self.run_dir / "registry"

    def password(self, account: str) -> str:
        if account == "admin":
            return (self.run_dir / "mlflow-admin.password").read_text().strip()
        return (self.secrets_dir / f"{account}.password").read_text().strip()

    def as_account(self, account: str | None, password: str | None = None) -> dict[str, str]:
        """The environment of a command run as ``account`` (None: anonymous)."""
        if account is None:
            return {}
        return {
            "MLFLOW_TRACKING_USERNAME": account,
            "MLFLOW_TRACKING_PASSWORD": password or self.password(account),
        }

    def heartml(
        self,
        account: str | None,
        *args: str,
        password: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CliResult:
        """`heartml ARGS` as ``account``, with the module's access file and secrets."""
        variables = {
            **self.as_account(account, password),
            "HEARTML_REGISTRY_ACCESS_CONFIG": str(self.run_dir / "access.yaml"),
            "HEARTML_REGISTRY_SECRETS_DIR": str(self.secrets_dir),
            **(env or {}),
        }
        result = invoke_heartml(self.settings, *args, env=variables)
        self.outputs += [result.stdout, result.stderr]
        return result

    def secrets(self) -> dict[str, str]:
        """Every secret of the server and its accounts, by where it lives."""
        files = [
            self.run_dir / "pg.password",
            self.run_dir / "mlflow-admin.password",
            self.run_dir / "mlflow-secret.key",
            *self.secrets_dir.glob("*.password"),
        ]
        return {str(f): f.read_text().strip() for f in files}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Iterator[Registry]:
    if not postgres_installed():
        # scripts/mlflow-server.sh installs Debian's packages: elsewhere there is no way to them.
        if shutil.which("apt-get") is None:
            pytest.skip("no PostgreSQL on this platform, and no apt-get to install Debian's")
        if os.geteuid() != 0:
            pytest.fail(
                "PostgreSQL is not installed, and installing it needs root: install Debian's"
                " postgresql package, or run the server tests as root",
                pytrace=False,
            )
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
        for secret in ("pg.password", "mlflow-admin.password", "mlflow-secret.key"):
            assert (run_dir / secret).stat().st_mode & 0o777 == 0o600, secret
        (run_dir / "access.yaml").write_text(
            f"version: 1\npipeline: {PIPELINE}\nserving: {SERVING}\n"
            f"promoters: [{PROMOTER}]\npeople: [{PERSON}]\n"
        )
        experiment = tmp_path_factory.mktemp("experiment") / "two-candidates.yaml"
        experiment.write_text(
            "version: 1\ncv: {repeats: 1}\nvalidation: {internal: false}\n"
            "candidates:\n  logistic_regression: {}\n  knn: {}\n"
        )
        root = tmp_path_factory.mktemp("server-mode")
        settings = make_settings(
            root, mirror, mlflow_tracking_uri=uri, model_prefix=PREFIX, experiment_config=experiment
        )
        server = Registry(uri, run_dir, settings, outputs=[started.stdout, started.stderr])
        boot = server.heartml("admin", "registry", "bootstrap")
        assert boot.returncode == 0, boot.stderr
        again = server.heartml("admin", "registry", "bootstrap")  # idempotent
        assert again.returncode == 0 and "created" not in again.stdout, again.stdout
        for account in (PIPELINE, SERVING, PROMOTER, PERSON):
            assert (server.secrets_dir / f"{account}.password").stat().st_mode & 0o777 == 0o600
        yield server
        secrets = server.secrets()
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False
        )
    # What the server, PostgreSQL, the API and every command wrote: no secret in any of it.
    logs = [*run_dir.glob("*.log"), run_dir / "pgdata" / "server.log", *server.logs]
    texts = {str(log): log.read_text(errors="replace") for log in logs if log.is_file()}
    texts.update({f"command output {i}": text for i, text in enumerate(server.outputs)})
    shutil.rmtree(run_dir, ignore_errors=True)
    assert any("mlflow.log" in name for name in texts)
    for where, secret in secrets.items():
        for name, text in texts.items():
            assert secret not in text, f"the secret of {where} is in {name}"


@pytest.fixture(scope="module")
def trained(registry: Registry, data_cache: Path) -> Registry:
    """The pipeline trained two candidates (the family of this module) and promoted the best."""
    registry.settings = registry.settings.model_copy(update={"data_dir": data_cache})
    done = registry.heartml(PIPELINE, "train", "--no-promote")
    assert done.returncode == 0, done.stderr
    # As Jenkins ran it before accounts: HEARTML_PROMOTED_BY cannot stand in for the account.
    auto = registry.heartml(PIPELINE, "promote", "--auto", env={"HEARTML_PROMOTED_BY": "jenkins"})
    assert auto.returncode == 0, auto.stderr
    return registry


def family(registry: Registry, account: str = SERVING) -> dict[str, Any]:
    listed = registry.heartml(account, "promote", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    data: dict[str, Any] = json.loads(listed.stdout)
    return data


def history(registry: Registry) -> list[dict[str, Any]]:
    done = registry.heartml(PERSON, "promote", "--history", "--json")
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


def test_nobody_reads_without_an_account(registry: Registry) -> None:
    anonymous = registry.heartml(None, "promote", "--list")
    one_line_error(anonymous, "anonymous", "MLFLOW_TRACKING_USERNAME")
    wrong = registry.heartml(SERVING, "promote", "--list", password="not-the-password-1")
    one_line_error(wrong, f"account '{SERVING}'", "wrong password", "HTTP 401")


def test_the_pipeline_trains_and_promotes_and_the_history_names_it(trained: Registry) -> None:
    champion = family(trained)["champion"]
    assert champion is not None and champion["name"].startswith(PREFIX)
    (event,) = history(trained)
    assert (event["name"], event["version"]) == (champion["name"], champion["version"])
    assert event["by"] == PIPELINE and event["authenticated"] is True
    assert event["reason"].startswith("auto-promotion of the best model")
    # Only the pipeline adds to the family: a person may neither train (logging runs needs
    # EDIT on the experiment) nor create a model of the family's name by hand.
    refused = trained.heartml(PERSON, "train", "--no-promote")
    one_line_error(refused, f"account '{PERSON}'", "may not log runs")
    created = rest_post(
        trained, PERSON, "/api/2.0/mlflow/registered-models/create", {"name": f"{PREFIX}mine"}
    )
    assert created == 403


def test_a_promoter_promotes_by_hand_and_the_api_follows(trained: Registry) -> None:
    start = family(trained)
    champion = start["champion"]
    other = next(m["name"] for m in start["models"] if m["name"] != champion["name"])

    log = trained.run_dir / "api.log"
    trained.logs.append(log)
    server = start_api(trained, log)
    api = server.url
    try:
        server.wait_ready(90)
        wait_for_model(api, champion["name"], champion["version"])

        # Without a reason the promoter is refused; with one, the promotion is theirs.
        silent = trained.heartml(PROMOTER, "promote", other, "1")
        one_line_error(silent, "--reason", f"account '{PROMOTER}'")
        manual = trained.heartml(PROMOTER, "promote", other, "1", "--reason", "knn: better recall")
        assert manual.returncode == 0, manual.stderr
        wait_for_model(api, other, 1)
        assert predicted_by(api) == (other, "1")
        latest = history(trained)[0]
        assert (latest["name"], latest["by"], latest["authenticated"]) == (other, PROMOTER, True)
        assert latest["reason"] == "manual promotion: knn: better recall"

        # A person (read-only) may not roll it back; the promoter may, with a reason.
        denied = trained.heartml(PERSON, "promote", "--rollback", "--reason", "no")
        restore = f"{champion['name']}/{champion['version']}"
        one_line_error(denied, f"account '{PERSON}' may not roll back to {restore}")
        rolled = trained.heartml(PROMOTER, "promote", "--rollback", "--reason", "recall was noise")
        assert rolled.returncode == 0, rolled.stderr
        wait_for_model(api, champion["name"], champion["version"])
        latest = history(trained)[0]
        assert latest["reason"] == f"rollback from {other}/1: recall was noise"
        assert latest["by"] == PROMOTER

        # No process on this machine carries a password or the secret key in its argv.
        assert_no_secret_in_argv(trained.secrets())

        # The serving account's password is replaced: the API keeps serving what it has, and
        # /ready and /model say the registry refuses it (within the server's 30 s cache).
        rotated = trained.heartml("admin", "registry", "password", SERVING)
        assert rotated.returncode == 0, rotated.stderr
        wait_until(lambda: ready(api).get("warning"), 60, "/ready reports the refusal")
        status = ready(api)
        assert status["status"] == "ready" and f"account '{SERVING}'" in status["warning"]
        assert "HTTP 401" in status["warning"]
        model = get_json(f"{api}/model")
        assert model["name"] == champion["name"] and "HTTP 401" in model["registry_refusal"]
        assert predicted_by(api) == (champion["name"], str(champion["version"]))
    finally:
        server.stop(timeout=30)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]


def test_the_serving_account_reads_and_changes_nothing(trained: Registry) -> None:
    before = trained.heartml(SERVING, "promote", "--list", "--json")
    assert before.returncode == 0, before.stderr
    champion = json.loads(before.stdout)["champion"]
    other = next(
        m["name"] for m in json.loads(before.stdout)["models"] if m["name"] != champion["name"]
    )
    by_name = trained.heartml(SERVING, "promote", other, "1", "--reason", "a test")
    one_line_error(by_name, f"account '{SERVING}' may not promote {other}/1", "nothing was changed")
    rollback = trained.heartml(SERVING, "promote", "--rollback", "--reason", "a test")
    one_line_error(rollback, f"account '{SERVING}' may not roll back to {other}/1")
    forced = trained.heartml(SERVING, "promote", other, "1", "--force")
    one_line_error(forced, "--force", "--reason")
    # A site's champion is under the same grants: READ may not make one.
    site = trained.heartml(SERVING, "promote", "--site", "va", other, "1", "--reason", "a test")
    one_line_error(site, f"account '{SERVING}' may not promote {other}/1", "nothing was changed")
    after = trained.heartml(SERVING, "promote", "--list", "--json")
    assert after.stdout == before.stdout  # byte-identical


def test_the_ui_obeys_the_same_grants(trained: Registry) -> None:
    """The MLflow UI calls the ajax-api: a promoter may set the alias there, a person may not
    (both set it where it already is, so the registry does not change)."""
    champion = family(trained)["champion"]
    body = {"name": champion["name"], "alias": "champion", "version": str(champion["version"])}
    endpoint = "/ajax-api/2.0/mlflow/registered-models/alias"
    before = trained.heartml(SERVING, "promote", "--list", "--json").stdout
    assert rest_post(trained, PERSON, endpoint, body) == 403
    assert rest_post(trained, PROMOTER, endpoint, body) == 200
    assert trained.heartml(SERVING, "promote", "--list", "--json").stdout == before


def rest_post(registry: Registry, account: str, endpoint: str, body: dict[str, Any]) -> int:
    """The HTTP status of one POST to the server's REST API as ``account``."""
    import base64

    basic = base64.b64encode(f"{account}:{registry.password(account)}".encode()).decode()
    request = urllib.request.Request(
        registry.uri + endpoint,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start_api(registry: Registry, log: Path) -> HeartmlServer:
    """The API as the serving account, following the registry every half second."""
    env = {**registry.as_account(SERVING), "HEARTML_RELOAD_INTERVAL_S": "0.5"}
    return HeartmlServer(registry.settings, log, env=env)


def assert_no_secret_in_argv(secrets: dict[str, str]) -> None:
    seen = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended
        seen += 1
        for where, secret in secrets.items():
            assert secret not in argv, f"the secret of {where} is in the argv of {cmdline}"
    assert seen > 10


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read())
    return data


def ready(api: str) -> dict[str, Any]:
    return get_json(f"{api}/ready")


def wait_for_model(api: str, name: str, version: int, timeout: float = 90) -> dict[str, Any]:
    # Every family starts at version 1, so only the (name, version) pair identifies a model.
    deadline = time.monotonic() + timeout
    model: dict[str, Any] = {}
    while time.monotonic() < deadline:
        model = get_json(f"{api}/model")
        if model.get("name") == name and model.get("version") in (version, str(version)):
            return model
        time.sleep(0.3)
    raise AssertionError(f"API still serves {model} after {timeout} s, expected {name}/{version}")


def predicted_by(api: str) -> tuple[str, str]:
    request = urllib.request.Request(
        f"{api}/predict",
        data=json.dumps(EXAMPLE_PATIENT).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    return str(answer["model_name"]), str(answer["model_version"])
