"""Shared fixtures: every test gets its own SQLite tracking store and data cache.

The UCI rows come from the mirror named by HEARTML_DATA_SOURCE (the Makefile points it at the
shared data folder); tests that need them fail, saying so, when it names no directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import containers  # scripts/ (on pytest's pythonpath): the container helpers
import pytest

from heartml.registry import (
    NO_STAGE,
    TAG_BEST,
    TAG_PREVIOUS,
    TAG_PROMOTED_AT,
    FamilyState,
    RegisteredModel,
    VersionInfo,
)
from heartml.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "configs" / "experiment.yaml"
HEARTML = [sys.executable, "-m", "heartml"]
DOCKER_ENGINE = REPO / "deploy" / "scripts" / "docker-engine.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Container tests last: the rest reports first, and shared fixtures (the trained store)
    are already built when they start, so their time is their own.

    Before them, the files with slow tests first: pytest-xdist hands out whole files in this
    order, so the run ends on short files, with no worker idle while another finishes a long
    one."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(
        key=lambda item: (
            item.get_closest_marker("container") is not None,
            item.path not in slow_files,
        )
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for the container tests, which have a time budget of their own."""
    outcomes: dict[str, int] = {}
    seconds = 0.0
    # Set-up and tear-down reports that passed are filed under "": their time counts too.
    for outcome, reports in terminalreporter.stats.items():
        for report in reports:
            if "container" not in getattr(report, "keywords", {}):
                continue
            seconds += getattr(report, "duration", 0.0)
            # A deselected item is listed as itself, not as a report: it has no phase.
            if outcome and (
                getattr(report, "when", "") == "call" or outcome in {"error", "skipped"}
            ):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        counts = ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items())
        terminalreporter.write_line(f"container tests: {counts} in {seconds:.1f} s")


def docker_impossible() -> str | None:
    """Why this machine cannot run a Docker engine at all, or None when it can have one."""
    if shutil.which("docker") or shutil.which("dockerd"):
        return None
    if shutil.which("apt-get") is None:
        return "no Docker on this platform, and no apt-get to install Debian's docker.io"
    if os.geteuid() != 0:
        return "no Docker here, and installing and running dockerd needs root"
    return None


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """The Docker engine of the container tests: the one `make docker-up` or `make test`
    started, or the machine's own. Without one the tests fail and say why; they skip only
    when run directly (not by make) on a machine that cannot have an engine."""
    reason = os.environ.get("HEARTML_DOCKER_UNAVAILABLE")  # set by deploy/scripts/with-docker.sh
    if reason:
        pytest.fail(f"no Docker engine for the container tests: {reason}", pytrace=False)
    found = subprocess.run(
        ["bash", str(DOCKER_ENGINE), "host"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if found.returncode != 0:
        impossible = docker_impossible()
        if impossible and "MAKELEVEL" not in os.environ:
            pytest.skip(f"container tests need Docker: {impossible}")
        pytest.fail(
            "no Docker engine answers: `make docker-up` starts one (`make test` does)",
            pytrace=False,
        )
    host = found.stdout.strip()
    with pytest.MonkeyPatch.context() as patch:
        if host:
            patch.setenv("DOCKER_HOST", host)
        else:
            patch.delenv("DOCKER_HOST", raising=False)
        yield host


def _make_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment of a make run as a person starts it: no make variables of ours."""
    base = env if env is not None else dict(os.environ)
    inherited = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    return {k: v for k, v in base.items() if not k.startswith(inherited)}


def run_make(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """`make -C REPO ARGS`, waited for."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        env=_make_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class BackgroundMake:
    """`make -C REPO ARGS` started now, waited for when its result is needed."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(REPO), *args],
            env=_make_env(None),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float = 1200) -> None:
        returncode = self.process.wait(timeout=timeout)
        assert returncode == 0, self.log.read_text(errors="replace")[-4000:]


MLFLOW_TEST_IMAGE = "heartml-test/heartml-mlflow:test"
REGISTRY_TEST_IMAGE = "heartml-test/heartml-api:registry"


@pytest.fixture(scope="session")
def background_images(
    docker_host: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BackgroundMake, Path]]:
    """The MLflow server image and the registry-mode API image, and the rendered overlays,
    built in the background from the first container test on: pip in a build keeps one core
    busy, so they build while the API image is built and tested on the other.

    Yields the build and the rendered prod overlay's path."""
    base = run_make("base-image")
    assert base.returncode == 0, base.stdout + base.stderr
    root = tmp_path_factory.mktemp("background-images")
    build = BackgroundMake(
        root / "build.log",
        "image-mlflow",
        "image-registry",
        "k8s-render",
        f"RUN_DIR={root}",
        f"MLFLOW_IMAGE={MLFLOW_TEST_IMAGE}",
        f"REGISTRY_IMAGE={REGISTRY_TEST_IMAGE}",
    )
    try:
        yield build, root / "k8s" / "prod.yaml"
    finally:
        stop_group(build.process)


def mirror_dir() -> Path | None:
    source = os.environ.get("HEARTML_DATA_SOURCE", "")
    path = Path(source) if source else None
    return path if path is not None and path.is_dir() else None


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_dir()
    if path is None:
        source = os.environ.get("HEARTML_DATA_SOURCE", "")
        pytest.fail(
            f"HEARTML_DATA_SOURCE={source!r} names no directory holding the UCI files: run the"
            " tests through make (it names ../shared/data/heart-disease), or export it",
            pytrace=False,
        )
    return path


def make_settings(root: Path, source: Path | str, **overrides: object) -> Settings:
    """Settings for an isolated store, cache and experiment under ``root``."""
    values: dict[str, object] = {
        "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifact_dir": root / "mlartifacts",
        "data_dir": root / "data",
        "data_source": str(source),
        "experiment_config": EXPERIMENT,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a `heartml` subprocess needs to see the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTML_", "MLFLOW_"))}
    env.update(
        {
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "HEARTML_ARTIFACT_DIR": str(settings.artifact_dir),
            "HEARTML_DATA_DIR": str(settings.data_dir),
            "HEARTML_DATA_SOURCE": settings.data_source,
            "HEARTML_EXPERIMENT_CONFIG": str(settings.experiment_config),
            "HEARTML_MIN_ROC_AUC": str(settings.min_roc_auc),
            "HEARTML_PROMOTION_MARGIN": str(settings.promotion_margin),
            "HEARTML_REGISTRY_RETRIES": str(settings.registry_retries),
            "HEARTML_MODEL_PREFIX": settings.model_prefix,
        }
    )
    return env


def run_heartml(
    settings: Settings,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`heartml ARGS` in its own process: for what only a process proves (the console script,
    signals, several commands at once). ``env`` adds variables (an account's credentials)."""
    return subprocess.run(
        [*HEARTML, *args],
        env={**settings_env(settings), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class CliResult:
    """What a command did: the same fields as a finished subprocess."""

    returncode: int
    stdout: str
    stderr: str


def invoke_heartml(
    settings: Settings, *args: str, env: dict[str, str] | None = None, promote_only: bool = False
) -> CliResult:
    """`heartml ARGS` in this process (Typer's runner), with the settings' environment.

    The exit codes are the console script's: the mapping lives in heartml's command classes.
    ``promote_only`` runs the promote command alone, as `scripts/promote-model.py` does.
    """
    from typer.testing import CliRunner

    from heartml.cli import app, promote_app

    variables = {
        k: v for k, v in settings_env(settings).items() if k.startswith(("HEARTML_", "MLFLOW_"))
    }
    result = CliRunner().invoke(
        promote_app if promote_only else app,
        list(args),
        env={**variables, **(env or {})},
        catch_exceptions=False,
    )
    return CliResult(result.exit_code, result.stdout, result.stderr)


def one_line_error(result: CliResult | subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The command failed with exit 1 and exactly one line on stderr, holding ``fragments``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the repository's own mlflow.db, data cache or .env."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("HEARTML_") and key != "HEARTML_DATA_SOURCE":
            monkeypatch.delenv(key)
    # MLflow settings too: the library sets some (request retries) in this process, and a
    # test must not inherit what an earlier one configured.
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path, mirror: Path) -> Settings:
    """A fresh store and cache, fed from the mirror."""
    return make_settings(tmp_path / "store", mirror)


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """A directory built once per run and shared by every pytest-xdist worker: the first worker
    to ask builds it (under a file lock), the others wait and read it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's temporary root, common to its workers
    target = base / f"shared-{name}"
    built = target / ".built"
    with (base / f"shared-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(target, ignore_errors=True)  # what a failed build left
            target.mkdir()
            build(target)
            built.touch()
    return target


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """The Cleveland file fetched and verified once, for the tests that only read it."""
    from heartml.data.download import download_data

    return built_once(
        tmp_path_factory,
        "data-cache",
        lambda root: download_data(make_settings(root, mirror, data_dir=root)),
    )


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store MLflow created and migrated, empty: tests copy it (migrating takes seconds)."""
    from mlflow.tracking import MlflowClient

    def migrate(root: Path) -> None:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        MlflowClient(uri, uri).search_registered_models()

    return built_once(tmp_path_factory, "empty-store", migrate) / "mlflow.db"


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """One real training session on a store shared, read-only, by the tests that need it.

    Every site is downloaded, so that the candidates are also scored on the three sites they
    are not trained on, as `heartml data download --all-sites` makes training do."""
    from heartml.data.download import ALL_SITES, download_data
    from heartml.training.train import train_candidates

    def train(root: Path) -> None:
        settings = make_settings(root, mirror)
        download_data(settings, ALL_SITES)
        train_candidates(settings)

    return built_once(tmp_path_factory, "trained", train)


@pytest.fixture(scope="session")
def trained_model_dirs(
    trained_root: Path, mirror: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every version of the trained store, by model type: its MLflow model directory as MLflow
    downloads it. Shared: a test that changes one works on a copy."""
    import mlflow.artifacts

    from heartml.registry import configure_mlflow, read_family

    settings = make_settings(trained_root, mirror)
    configure_mlflow(settings)
    root = tmp_path_factory.mktemp("trained-models")
    return {
        str(v.tags["model_type"]): Path(
            mlflow.artifacts.download_artifacts(artifact_uri=v.uri, dst_path=str(root / v.name))
        )
        for v in read_family(settings).versions
    }


@pytest.fixture
def trained_settings(trained_root: Path, tmp_path: Path, mirror: Path) -> Settings:
    """A private copy of the trained store (its artifacts stay shared and unchanged)."""
    root = tmp_path / "trained-copy"
    root.mkdir()
    shutil.copy2(trained_root / "mlflow.db", root / "mlflow.db")
    shutil.copytree(trained_root / "data", root / "data")
    return make_settings(root, mirror, artifact_dir=trained_root / "mlartifacts")


# --- versions with stored predictions, without training -----------------------------------


def synthetic_predictions(quality: str = "good") -> str:
    """A predictions table like training's, for a version registered without training: 240
    out-of-fold rows (calibrated) and 120 held-out rows, the same patients whatever the
    quality. ``good``: held-out risks are the true ones (every good version ties: a gated
    promotion between two passes); ``weak``: blurred far enough to fall beyond the margin."""
    import numpy as np

    from heartml.evidence.predictions import CV, HOLDOUT, prediction_set, write_predictions

    rng = np.random.default_rng(2024)
    risk = rng.uniform(0.03, 0.97, 360)
    outcome = (rng.uniform(size=360) < risk).astype(int)
    held = risk[240:]
    if quality == "weak":
        logit = np.log(held / (1 - held)) + np.random.default_rng(5).normal(0, 3.0, 120)
        held = 1 / (1 + np.exp(-logit))
    ids = [f"cleveland:{i + 1}" for i in range(360)]
    return write_predictions(
        {
            CV: prediction_set(ids[:240], outcome[:240], risk[:240], [0] * 240, [0] * 240),
            HOLDOUT: prediction_set(ids[240:], outcome[240:], held),
        }
    )


def predictions_run(client: Any, quality: str = "good") -> str:
    """A finished run holding :func:`synthetic_predictions`; returns its id."""
    run = client.create_run("0")
    client.log_text(run.info.run_id, synthetic_predictions(quality), "predictions.csv")
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


# --- registry states without a store ----------------------------------------------------------


def version_info(
    name: str,
    number: int = 1,
    *,
    stage: str = NO_STAGE,
    champion: bool = False,
    promoted_at: str = "",
    previous: str = "",
    roc_auc: float | None = 0.9,
    best: bool = False,
    created_ms: int | None = None,
) -> VersionInfo:
    """A version of ``heart-disease-NAME`` as the registry would report it."""
    tags: dict[str, str] = {}
    if promoted_at:
        tags[TAG_PROMOTED_AT] = promoted_at
    if previous:
        tags[TAG_PREVIOUS] = previous
    if roc_auc is not None:
        tags["roc_auc"] = f"{roc_auc:.4f}"
    if best:
        tags[TAG_BEST] = "true"
    created = number if created_ms is None else created_ms
    aliases = ("champion",) if champion else ()
    return VersionInfo(f"heart-disease-{name}", number, stage, aliases, tags, "run", "s", created)


def family_state(*versions: VersionInfo) -> FamilyState:
    """The family of these versions, newest first within each model, alias ``champion``."""
    names = sorted({v.name for v in versions})
    return FamilyState(
        tuple(
            RegisteredModel(
                n, tuple(sorted((v for v in versions if v.name == n), key=lambda v: -v.version))
            )
            for n in names
        ),
        "champion",
    )


def assert_one_champion(settings: Settings) -> str:
    """Exactly one version holds the champion alias and it is the only one in Production."""
    from heartml.registry import read_family

    state = read_family(settings)
    holders = [v.ref for v in state.alias_holders]
    production = [v.ref for v in state.in_production]
    assert len(holders) == 1, holders
    assert production == holders, (production, holders)
    return holders[0]


def stop_group(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True``: its whole process group
    (workers included), politely first, then for good."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# How often the wait helpers look: a test waits on average half a period past the moment its
# condition holds, and the suite waits many times. A refused connection costs nothing, so a server
# that is not listening yet is tried often; a check that reads /proc or asks a live server for
# its state costs that process CPU, so those look less often.
CONNECT_POLL_S = 0.05
POLL_S = 0.1


def wait_until(check: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``check`` until it is truthy; returns the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(POLL_S)
    return time.monotonic() - started


def wait_for_http(
    url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``url`` answers; fails at once if ``process`` (the server) has exited."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(CONNECT_POLL_S)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def free_port() -> int:
    """A free port on 127.0.0.1 below the ephemeral range: the container tests' rule."""
    return containers.free_port()


class HeartmlServer:
    """`heartml serve` as a real process on a free loopback port, over ``settings``' store.

    Started when constructed (or entered), it is listening (``/health`` answers) when the
    constructor returns; :meth:`wait_ready` waits for a model. Its output goes to ``log``,
    and a server that exits or does not listen fails the test with that log's end.
    ``args`` are more `heartml serve` options; ``env`` adds or overrides variables.
    """

    def __init__(
        self,
        settings: Settings,
        log: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [*HEARTML, "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            command,
            env={**settings_env(settings), **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_http(f"{self.url}/health", timeout=90, process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise AssertionError(f"heartml serve did not listen: {exc}\n{self.tail()}") from exc

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        """Wait until ``/ready`` answers 200; returns ``/model`` then."""
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/ready", timeout=5).status_code != 200:
            assert self.process.poll() is None, f"heartml serve exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{self.tail()}"
            time.sleep(POLL_S)
        model: dict[str, Any] = httpx.get(f"{self.url}/model", timeout=5).json()
        return model

    def stop(self, timeout: float = 20) -> None:
        stop_group(self.process, timeout)

    def __enter__(self) -> HeartmlServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MlflowServer:
    """A real `mlflow server` on a free port over a SQLite file, with the artifact proxy.

    ``store``: an already migrated empty store to start from (a new SQLite file costs the
    server seconds of schema migrations).
    """

    def __init__(self, root: Path, store: Path | None = None) -> None:
        self.root = root
        self.store = store
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.store is not None and not (self.root / "server.db").exists():
            shutil.copy2(self.store, self.root / "server.db")
        log = (self.root / "server.log").open("ab")
        mlflow = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            # No job runner: heartml schedules no MLflow jobs, and it would start eight more
            # processes beside the server on a 2-core machine.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_http(f"{self.uri}/health", timeout=90, process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"mlflow server did not start: {exc}\n{tail}") from exc

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
        self.process = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, empty_store: Path
) -> Iterator[MlflowServer]:
    """One real `mlflow server` for the session (starting one takes seconds): each test keeps
    to a model prefix of its own."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server"), empty_store) as server:
        yield server


# --- adapted versions ---------------------------------------------------------------------------
# Until `heartml adapt` is on main, the site tests register adapted versions with this helper:
# the contract's tags and a `site:<site>` predictions set, through the real MLflow client on the
# real store. Once it is, `register_adapted_version` becomes a call to
# `heartml.adaptation` (or `heartml adapt NAME/VERSION --site SITE`) and nothing else changes.


def register_adapted_version(
    settings: Settings,
    name: str,
    base_version: int,
    site: str,
    *,
    update: tuple[float, float] | None = None,
    method: str = "logistic",
) -> int:
    """A new version of NAME adapted for ``site``: the base version's model directory with
    ``logit p' = intercept + slope * logit p`` appended to its ONNX graph (probe updated, so
    serving runs the graph), the site's rows as its reference profile, and a predictions.csv
    whose ``site:<site>`` set is the base version's passed through the same update. ``update``
    is ``(intercept, slope)``; None: ``method`` fitted on the base version's rows of the site
    (in-sample: a stand-in for the adaptation's cross-validated predictions). Returns the
    version number."""
    import tempfile

    import mlflow.artifacts
    import numpy as np

    from heartml.data.profile import PROFILE_FILE, write_profile
    from heartml.data.validate import load_dataset
    from heartml.evidence.predictions import (
        PREDICTIONS_ARTIFACT,
        SITE_PREFIX,
        prediction_set,
        read_predictions,
        write_predictions,
    )
    from heartml.evidence.recalibration import Method, Recalibration, fit_recalibration
    from heartml.model.onnx_form import ONNX_FILE, PROBE_FILE, Probe
    from heartml.model.recalibrated import recalibrated_graph
    from heartml.registry import configure_mlflow
    from heartml.training.features import split_features_target

    configure_mlflow(settings)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    base = client.get_model_version(name, str(base_version))
    assert base.run_id, f"{name}/{base_version} has no training run to adapt"
    with tempfile.TemporaryDirectory(prefix="heartml-adapted-") as staging:
        root = Path(staging)
        table = Path(client.download_artifacts(base.run_id, PREDICTIONS_ARTIFACT, str(root)))
        sets = read_predictions(table.read_text(encoding="utf-8"))
        base_rows = sets[SITE_PREFIX + site].by_row()
        recalibration = (
            fit_recalibration(base_rows.y, base_rows.probability, Method(method))
            if update is None
            else Recalibration(Method(method), *update)
        )
        intercept, slope = recalibration.intercept, recalibration.slope
        adapted_rows = prediction_set(
            base_rows.row_ids.tolist(),
            base_rows.y.tolist(),
            recalibration.apply(base_rows.probability),
        )
        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{base_version}", dst_path=str(root / "model")
            )
        )
        extra = model_dir / "extra_files"
        graph = extra / ONNX_FILE
        graph.write_bytes(recalibrated_graph(graph.read_bytes(), intercept, slope))
        probe = Probe.load(extra / PROBE_FILE)
        positive = recalibration.apply(probe.expected[:, 1])
        Probe(probe.rows, np.column_stack([1.0 - positive, positive])).save(extra / PROBE_FILE)
        frame, _ = split_features_target(load_dataset(settings, [site]).frame)
        (extra / PROFILE_FILE).unlink(missing_ok=True)
        write_profile(frame.to_numpy(dtype=np.float64), extra)

        # Its own experiment, artifacts beside this store: a trained store's artifacts are
        # shared by every test and stay unchanged.
        store_dir = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent
        experiment = client.get_experiment_by_name("adapted") or client.get_experiment(
            client.create_experiment("adapted", (store_dir / "adapted-artifacts").as_uri())
        )
        run_id = client.create_run(experiment.experiment_id).info.run_id
        client.log_text(
            run_id, write_predictions({SITE_PREFIX + site: adapted_rows}), PREDICTIONS_ARTIFACT
        )
        client.log_artifacts(run_id, str(model_dir), "model")
        client.set_terminated(run_id)
    from heartml.evidence.stats import roc_auc

    tags = {
        "site": site,
        "adapted_from": f"{name}/{base_version}",
        "adaptation_method": method,
        "model_type": base.tags.get("model_type", ""),
        "roc_auc": f"{roc_auc(adapted_rows.y, adapted_rows.probability):.4f}",
    }
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags
    )
    return int(version.version)
