"""The embedded SQLite store: read fast only at a known schema, created by one process at a time,
and repaired when a migration was left half-done. Real stores made by MLflow, real processes."""

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
    assert_one_champion,
    invoke_heartml,
    make_settings,
    one_line_error,
    settings_env,
)
from heartml.registry import read_family
from heartml.registry.embedded import prepare_sqlite_store, template_path
from heartml.registry.store import TESTED_REVISIONS, read_raw_family, read_schema
from heartml.settings import Settings

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
    monkeypatch.setattr("heartml.registry.store.TESTED_REVISIONS", frozenset({"0123456789ab"}))
    with caplog.at_level(logging.WARNING, logger="heartml.registry.store"):
        assert read_raw_family(uri, prefix) is None
        assert read_family(settings) == before
        assert invoke_heartml(settings, "promote", "--list") == listing
    warnings = [r.getMessage() for r in caplog.records if r.name == "heartml.registry.store"]
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


def test_commands_started_together_on_a_fresh_store_all_succeed(
    tmp_path: Path, mirror: Path, data_cache: Path
) -> None:
    # Two trainings (how users met the migration race) and two listings, at once. One
    # candidate each keeps it quick; opening the store is the same for any experiment.
    experiment = tmp_path / "one-candidate.yaml"
    experiment.write_text(
        "version: 1\ncv: {repeats: 1}\nvalidation: {internal: false}\n"
        "candidates:\n  logistic_regression: {}\n"
    )
    settings = make_settings(tmp_path, mirror, data_dir=data_cache, experiment_config=experiment)
    assert not (tmp_path / "mlflow.db").exists()
    env = settings_env(settings)
    commands = [["train"], ["train"], ["promote", "--list"], ["promote", "--history"]]
    processes = [
        subprocess.Popen(
            [*HEARTML, *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for process in processes:  # never leave a training running into the next tests
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err for _, err in outputs]

    schema = read_schema(tmp_path / "mlflow.db")
    assert schema.revision in TESTED_REVISIONS and schema.leftovers == ()
    assert (tmp_path / "mlflow.db.lock").is_file()
    # Both sessions were logged and registered; one best tag, one champion.
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    logged = client.get_experiment_by_name(settings.experiment_name)
    assert logged is not None
    runs = client.search_runs([logged.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 4
    state = read_family(settings)
    assert len(state.versions) == 2
    assert len([v for v in state.versions if v.is_best]) == 1
    assert_one_champion(settings)


def schema_and_rows(path: Path) -> tuple[set[tuple[str, ...]], dict[str, list[tuple[object, ...]]]]:
    """Every table, index and trigger with its definition (MLflow writes a table's
    constraints in no fixed order, so each definition's lines are sorted), and every row."""
    db = sqlite3.connect(path)
    try:
        schema = {
            (kind, name, *sorted(line.strip(" ,") for line in (sql or "").splitlines()))
            for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master")
        }
        rows = {
            entry[1]: sorted(db.execute(f'SELECT * FROM "{entry[1]}"'), key=repr)
            for entry in schema
            if entry[0] == "table"
        }
    finally:
        db.close()
    return schema, rows


def test_a_new_store_is_a_copy_of_the_store_mlflow_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifacts go under the cwd
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made = tmp_path / "made-by-mlflow.db"
    MlflowClient(f"sqlite:///{made}", f"sqlite:///{made}").search_registered_models()
    copies = [tmp_path / "first.db", tmp_path / "second.db"]
    for copy in copies:
        prepare_sqlite_store(f"sqlite:///{copy}")

    assert template_path() == tmp_path / "cache" / "heartml" / template_path().name
    template_schema, template_rows = schema_and_rows(template_path())
    expected_schema, expected_rows = schema_and_rows(made)
    assert template_schema == expected_schema
    assert template_rows["experiments"] == []  # MLflow adds Default to each store
    for copy in copies:
        schema, rows = schema_and_rows(copy)
        assert schema == expected_schema
        # The same rows, Default's creation times aside.
        (default,) = rows.pop("experiments")
        (expected_default,) = expected_rows["experiments"]
        assert default[:4] == expected_default[:4] and default[6:] == expected_default[6:]
        assert rows == {k: v for k, v in expected_rows.items() if k != "experiments"}


def half_migrated_store(path: Path) -> None:
    """A store whose MLflow migration stopped half-way, as a concurrent migration leaves it.

    A second process running the same migration had created alembic's temporary copy of
    ``params``; MLflow's own migration of a fresh store then fails on it.
    """
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _alembic_tmp_params (key VARCHAR(250))")
    db.close()
    uri = f"sqlite:///{path}"
    with pytest.raises(Exception, match="_alembic_tmp_params already exists"):
        MlflowClient(uri, uri).search_registered_models()


def test_a_half_migrated_store_is_reported_in_one_line_and_repaired(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    half_migrated_store(store)
    broken = read_schema(store)
    assert broken.half_migrated, broken
    settings = make_settings(tmp_path, tmp_path)

    refused = invoke_heartml(settings, "promote", "--list")
    line = one_line_error(refused, f"the store {store} was left half-migrated")
    assert f"revision {broken.revision}, leftover tables _alembic_tmp_params" in line
    assert "repair it with `heartml store repair`" in line

    repaired = invoke_heartml(settings, "store", "repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"✅ repaired {store}: dropped _alembic_tmp_params" in repaired.stdout
    assert (tmp_path / "mlflow.db.bak").is_file()
    assert read_schema(tmp_path / "mlflow.db.bak") == broken  # the copy is the store as it was
    fixed = read_schema(store)
    assert fixed.revision in TESTED_REVISIONS and fixed.leftovers == ()

    # The repaired store takes runs and models, and heartml works on it.
    uri = settings.mlflow_tracking_uri
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("after-repair")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "roc_auc", 0.9)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("heart-disease-svm")
    client.create_model_version("heart-disease-svm", source="s3://fixtures/svm", tags={})
    assert invoke_heartml(settings, "promote", "heart-disease-svm").returncode == 0
    assert_one_champion(settings)
    again = invoke_heartml(settings, "store", "repair")
    assert again.returncode == 0 and "nothing to repair" in again.stdout


def test_repair_is_only_for_the_embedded_store(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")
    one_line_error(invoke_heartml(settings, "store", "repair"), "not an embedded SQLite store")
