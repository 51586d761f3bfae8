"""The embedded SQLite store: read fast only at a known schema. Real stores made by MLflow."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    HEARTML,
    invoke_heartml,
    make_settings,
    settings_env,
)
from heartml.registry import read_family
from heartml.settings import Settings
from heartml.store import TESTED_REVISIONS, read_raw_family, read_schema

pytestmark = pytest.mark.slow


def build_family(settings: Settings) -> None:
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    for algorithm, score in (("svm", 0.91), ("knn", 0.93)):
        name = settings.model_prefix + algorithm
        client.create_registered_model(name)
        client.create_model_version(
            name, source=f"s3://heartml-test-fixtures/{algorithm}", tags={"roc_auc": str(score)}
        )
    assert invoke_heartml(settings, "promote", settings.model_prefix + "knn").returncode == 0


def set_revision(path: Path, revision: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    db.close()


def test_the_fast_reader_reads_only_a_schema_it_was_tested_with(
    tmp_path: Path,
    empty_store: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copy2(empty_store, tmp_path / "mlflow.db")
    settings = make_settings(tmp_path, tmp_path)
    assert read_schema(tmp_path / "mlflow.db").revision in TESTED_REVISIONS
    build_family(settings)
    uri, prefix = settings.mlflow_tracking_uri, settings.model_prefix
    assert read_raw_family(uri, prefix) is not None
    before = read_family(settings)
    listing = invoke_heartml(settings, "promote", "--list")

    # A newer MLflow pin: the store is at the revision MLflow creates, one heartml has not
    # tested. The client reads instead, and says so once.
    monkeypatch.setattr("heartml.store.TESTED_REVISIONS", frozenset({"0123456789ab"}))
    with caplog.at_level(logging.WARNING, logger="heartml.store"):
        assert read_raw_family(uri, prefix) is None
        assert read_family(settings) == before
        assert invoke_heartml(settings, "promote", "--list") == listing
    warnings = [r.getMessage() for r in caplog.records if r.name == "heartml.store"]
    assert len(warnings) == 1, warnings  # once per store and revision, not on every read
    assert "which heartml's fast reader was not tested with" in warnings[0]
    assert "reading it through MLflow instead" in warnings[0]


def test_a_store_at_another_revision_is_never_read_by_the_fast_reader(
    tmp_path: Path, empty_store: Path
) -> None:
    shutil.copy2(empty_store, tmp_path / "mlflow.db")
    settings = make_settings(tmp_path, tmp_path)
    build_family(settings)
    set_revision(tmp_path / "mlflow.db", "0123456789ab")  # a schema this MLflow does not know

    # What a user sees: one warning line, then MLflow's own verdict on the store — never a
    # listing read from tables whose meaning may have changed.
    shown = subprocess.run(
        [*HEARTML, "promote", "--list"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 1 and shown.stdout == "", shown.stdout
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 2, shown.stderr
    assert lines[0].startswith("WARNING: ") and "revision 0123456789ab" in lines[0]
    assert lines[1].startswith("error: ") and "mlflow db upgrade" in lines[1]
