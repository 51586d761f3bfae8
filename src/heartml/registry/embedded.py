"""The embedded SQLite store: created and migrated by one process at a time, repaired on demand.

MLflow creates and migrates a SQLite store the first time a process opens it, without a lock:
two commands started together on a fresh ``mlflow.db`` run the same alembic migrations at once
("table _alembic_tmp_tags already exists"), both fail, and leave a half-migrated store that
every later command fails on. Here a process that finds the store missing or not at a
revision heartml knows opens it through MLflow under an exclusive lock on a file beside the
database (``mlflow.db.lock``): the next process waits, then finds the store migrated. A store
at a known revision is opened without the lock, so commands on a migrated store never wait for
each other.

Creating a store means running every one of MLflow's migrations, one SQLite transaction each:
about a second of CPU and, on a busy disk, seconds of waiting for the writes to reach it. The
first store a version of MLflow creates on a machine is kept, empty, as a template in the user's
cache (``$XDG_CACHE_HOME/heartml``); a new store is a copy of it. It is made by the same MLflow
calls, minus the row of the experiment ``Default``, which records the artifact location of the
store it belongs to: MLflow adds that row to the copy as it adds it to a new store. Where no
template can be kept (no writable cache), MLflow creates the store as before.

A store already left half-migrated (alembic's temporary tables left behind, the revision not
one heartml knows) is reported in one line naming its repair, ``heartml store repair``
(:func:`repair_sqlite_store`): keep a copy, drop the leftover tables, let ``mlflow db upgrade``
finish the migrations.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from heartml.errors import one_line
from heartml.registry.store import SchemaState, read_schema, sqlite_path
from heartml.registry.values import BrokenStoreError, RegistryError

logger = logging.getLogger(__name__)

REPAIR_COMMAND = "heartml store repair"

_prepared: set[Path] = set()
_prepared_guard = threading.Lock()


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, across processes, on the file beside the database.

    Where no file can be written beside it (a read-only mount), nobody can create or migrate
    the store there either: go on without the lock, as MLflow alone would.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path(path).open("a")
    except OSError as exc:
        logger.debug("no lock beside %s (%s)", path, exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def half_migrated_message(path: Path, schema: SchemaState) -> str:
    leftovers = ", ".join(schema.leftovers[:3]) + (", …" if len(schema.leftovers) > 3 else "")
    return (
        f"the store {path} was left half-migrated by an interrupted MLflow schema migration "
        f"(revision {schema.revision or 'none'}, leftover tables {leftovers}); "
        f"repair it with `{REPAIR_COMMAND}` (it keeps a copy first)"
    )


def failed_migration_message(path: Path, schema: SchemaState, exc: BaseException) -> str:
    return (
        f"MLflow's migration of the store {path} stopped at revision "
        f"{schema.revision or 'none'} ({one_line(exc, limit=120)}); "
        f"repair it with `{REPAIR_COMMAND}` (it keeps a copy first)"
    )


def prepare_sqlite_store(uri: str) -> None:
    """Make sure this process opens an embedded store only once it is created and migrated.

    Anything but a file-based SQLite URI, or a store already prepared in this process, returns
    at once. Raises :class:`BrokenStoreError` for a store left half-migrated.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    key = path.absolute()
    with _prepared_guard:
        if key in _prepared:
            return
        schema = read_schema(path)
        if not schema.tested or schema.leftovers:
            with store_lock(path):
                _open_under_lock(uri, path)
        _prepared.add(key)


def _open_under_lock(uri: str, path: Path) -> None:
    """Let MLflow create or migrate the store, now that no other heartml process is."""
    from mlflow.tracking import MlflowClient

    schema = read_schema(path)  # again: the process that held the lock may have migrated it
    if schema.half_migrated:
        raise BrokenStoreError(half_migrated_message(path, schema))
    if schema.tested:
        return
    if schema.empty:
        _copy_template(path)
    try:
        # Building the client opens the tracking store, which creates or migrates every table
        # (tracking and registry) and checks the revision; the registry store opens next.
        MlflowClient(uri, uri).search_registered_models(max_results=1)
    except Exception as exc:
        after = read_schema(path)
        if after.half_migrated:
            raise BrokenStoreError(half_migrated_message(path, after)) from exc
        migrating = after.revision != schema.revision or type(exc).__module__.startswith("alembic")
        if not after.empty and migrating:
            raise BrokenStoreError(failed_migration_message(path, after, exc)) from exc
        raise


def template_path() -> Path:
    """Where the empty store of the installed MLflow is kept (one per MLflow version)."""
    from importlib.metadata import version

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "heartml" / f"mlflow-{version('mlflow')}-empty-store.db"


def _copy_template(path: Path) -> None:
    """Put a copy of the empty store at ``path`` (still empty; the caller holds its lock).

    Any failure to keep or copy the template leaves ``path`` as it was, for MLflow to create.
    """
    template = template_path()
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(template):
            if read_schema(template).empty:
                _build_template(template)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, staging)
        staging.replace(path)
    except (OSError, sqlite3.Error) as exc:
        logger.debug("no store template (%s): MLflow creates %s", exc, path)


def _build_template(template: Path) -> None:
    """An empty store made by MLflow, without the experiment ``Default``."""
    from mlflow.tracking import MlflowClient

    staging = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    uri = f"sqlite:///{staging}"
    MlflowClient(uri, uri).search_registered_models(max_results=1)
    db = sqlite3.connect(staging, isolation_level=None)
    try:
        db.execute("DELETE FROM experiments")
    finally:
        db.close()
    built = read_schema(staging)
    if built.empty or built.leftovers:
        staging.unlink()
        raise OSError(f"MLflow left {staging} incomplete")
    staging.replace(template)


# --------------------------------------------------------------------------------------------
# Repair
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What ``heartml store repair`` did to the store."""

    path: Path
    repaired: bool  # False: the store needed nothing
    revision: str | None
    backup: Path | None = None
    dropped: tuple[str, ...] = ()


def _backup(path: Path) -> Path:
    """A consistent copy of the database beside it (SQLite's online backup)."""
    backup = path.with_name(path.name + ".bak")
    number = 1
    while backup.exists():
        number += 1
        backup = path.with_name(f"{path.name}.bak{number}")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    target = sqlite3.connect(backup)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return backup


def _drop_tables(path: Path, tables: tuple[str, ...]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for table in tables:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        db.close()


def repair_sqlite_store(uri: str) -> RepairResult:
    """Finish the migration of a store left half-migrated; a store that needs nothing is left.

    Under the store's lock: copy the database to ``<name>.bak``, drop alembic's leftover
    temporary tables, and run ``mlflow db upgrade`` (MLflow's own way to bring a store to its
    schema). Raises RegistryError, with the copy's name, if the upgrade still fails.
    """
    path = sqlite_path(uri)
    if path is None:
        raise RegistryError(f"{uri} is not an embedded SQLite store; nothing to repair here")
    if not path.is_file():
        raise RegistryError(f"there is no store at {path}")
    with _prepared_guard, store_lock(path):
        schema = read_schema(path)
        if schema.tested and not schema.leftovers:
            return RepairResult(path, repaired=False, revision=schema.revision)
        backup = _backup(path)
        _drop_tables(path, schema.leftovers)
        upgrade = subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", uri],
            capture_output=True,
            text=True,
            check=False,
        )
        after = read_schema(path)
        if upgrade.returncode != 0 or after.leftovers:
            lines = [line for line in upgrade.stderr.splitlines() if line.strip()]
            why = " ".join((lines or ["no error printed"])[-1].split())[:200]
            raise RegistryError(
                f"mlflow db upgrade could not finish the migration of {path} ({why}); "
                f"the store as it was is kept in {backup}"
            )
        _prepared.discard(path.absolute())
        logger.info("repaired %s (copy in %s)", path, backup)
        return RepairResult(path, True, after.revision, backup, schema.leftovers)
