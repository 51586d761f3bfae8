"""A real `heartml train` stopped by a signal: what Jenkins does on abort (SIGTERM), a person at a
terminal (SIGINT), the OOM killer or an evicted pod (SIGKILL).

Each test starts the command on a fresh store with the quick experiment, waits for its worker
processes (the fork server's children) and signals it: nothing of it may remain, and the store
must hold no version without its card and predictions.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import HEARTML, make_settings, run_heartml, settings_env, wait_until
from heartml.data.download import download_data
from heartml.settings import Settings

pytestmark = pytest.mark.slow

FAST_EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "experiment-fast.yaml"
CANDIDATES = ("logistic_regression", "knn")  # the quick experiment's, in its order
# The pool's size for two candidates: one worker per core, at most two.
WORKERS = max(1, min(2, os.cpu_count() or 1))
VERSION_FILES = {"model_card.json", "model_card.md", "model_card.html", "predictions.csv"}


def processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, state), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        found[int(entry.name)] = (int(ppid), state)
    return found


def descendants(pid: int) -> set[int]:
    table = processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier}
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended: only its exit status is left)."""
    table = processes()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def workers_of(train: subprocess.Popen[str]) -> set[int] | None:
    """The training's pool workers (the fork server's children) once they are all running."""
    for child in descendants(train.pid):
        grandchildren = descendants(child)
        if len(grandchildren) >= WORKERS:
            return grandchildren
    return None


@pytest.fixture
def fresh(tmp_path: Path, mirror: Path, empty_store: Path) -> Settings:
    settings = make_settings(tmp_path / "store", mirror, experiment_config=FAST_EXPERIMENT)
    (tmp_path / "store").mkdir()
    shutil.copy2(empty_store, tmp_path / "store" / "mlflow.db")
    download_data(settings)
    return settings


@pytest.fixture
def train(fresh: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`heartml train`, started; killed with whatever it left if a test fails half-way."""
    process = subprocess.Popen(
        [*HEARTML, "train"],
        env=settings_env(fresh),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        left = descendants(process.pid)
        process.kill()
        process.communicate()
        for pid in alive(left):
            os.kill(pid, signal.SIGKILL)


def versions_in(settings: Settings) -> int:
    """How many versions the store holds, read the way any other SQLite reader would."""
    path = settings.mlflow_tracking_uri.removeprefix("sqlite:///")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return int(db.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    except sqlite3.OperationalError:  # a writer holds the lock this instant
        return 0


def assert_store_consistent(settings: Settings) -> list[str]:
    """`promote --list` works and every version has its card and predictions; the versions."""
    listed = run_heartml(settings, "promote", "--list")
    assert listed.returncode == 0, listed.stderr
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    refs = []
    for version in client.search_model_versions("name LIKE 'heart-disease-%'"):
        files = {a.path for a in client.list_artifacts(str(version.run_id))}
        assert files >= VERSION_FILES, (version.name, version.version, files)
        assert version.tags.get("roc_auc"), (version.name, version.tags)
        refs.append(f"{version.name}/{version.version}")
    return refs


def stop_and_check(train: subprocess.Popen[str], signum: int) -> list[str]:
    """Signal the training once its workers run, wait for it and for every process it started
    (each must be gone within 5 s); its stderr lines."""
    wait_until(lambda: workers_of(train), 60, "the pool's workers are running")
    left = descendants(train.pid)
    assert len(left) >= WORKERS + 1, left  # the fork server and its workers
    train.send_signal(signum)
    _, stderr = train.communicate(timeout=15)
    wait_until(lambda: not alive(left), 5, "every process of the training to end")
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip()]


def registered_in(message: str) -> set[str]:
    """The versions an interruption's message says were registered."""
    listed = message.split(": registered ", 1)[1]
    listed = listed.split(";", 1)[0].split(" (", 1)[0]
    return set() if listed == "nothing" else set(listed.split(", "))


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_in_cross_validation_stops_everything_and_registers_nothing(
    train: subprocess.Popen[str], fresh: Settings, signum: int, code: int
) -> None:
    lines = stop_and_check(train, signum)
    assert train.returncode == code
    name = signal.Signals(signum).name
    assert lines == [
        f"interrupted by {name}: registered nothing; not registered: "
        f"{', '.join(CANDIDATES)} (no version left half-registered)"
    ]
    assert assert_store_consistent(fresh) == []


def test_a_signal_during_registration_completes_that_version_first(
    train: subprocess.Popen[str], fresh: Settings
) -> None:
    # The moment the first version exists, its card and predictions are not logged yet: the
    # signal lands in the middle of that registration, which must complete before the exit.
    deadline = time.monotonic() + 60
    while versions_in(fresh) == 0 and train.poll() is None:
        assert time.monotonic() < deadline, "no version registered within 60 s"
        time.sleep(0.02)
    assert train.poll() is None, "training finished before a signal could be sent"
    left = descendants(train.pid)
    train.send_signal(signal.SIGTERM)
    _, stderr = train.communicate(timeout=15)
    assert train.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    wait_until(lambda: not alive(left), 5, "every process of the training to end")
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert line.startswith("interrupted by SIGTERM: registered heart-disease-"), line
    assert line.endswith("(no version left half-registered)"), line
    assert registered_in(line) == set(assert_store_consistent(fresh)) != set()


def test_sigkill_leaves_no_worker_behind(train: subprocess.Popen[str]) -> None:
    # The OOM killer or an evicted pod: the training runs no clean-up at all.
    wait_until(lambda: workers_of(train), 60, "the pool's workers are running")
    left = descendants(train.pid)
    train.kill()
    # wait() on the pid alone: the workers hold the pipes' write ends until they end.
    train.wait(timeout=5)
    seconds = wait_until(lambda: not alive(left), 5, "the workers and the fork server to end")
    assert seconds < 5
    train.communicate(timeout=5)
