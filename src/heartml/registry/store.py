"""Read-only access to the model registry without importing MLflow.

`import mlflow` alone costs well over a second, and building an ``MlflowClient`` on a SQL
store imports SQLAlchemy models and checks migrations. Reads are most of what heartml does
(``promote --list``, ``--history``, and the API's reload check every few seconds), so they
go straight to the store: MLflow's public REST API for a tracking server, MLflow's registry
tables for the embedded SQLite file. Writes always go through ``MlflowClient``.

Both readers return the same plain records as ``MlflowClient`` would give; a test runs every
reader against the same store and compares them with the client's answer. Any other store
(``postgresql://`` opened directly, say) returns ``None`` and the caller uses the client.

MLflow's tables are private and change between releases, so the SQLite reader first checks the
store's schema revision (alembic's ``alembic_version``) against :data:`TESTED_REVISIONS`, the
revisions the comparison test has run on. For any other revision it logs one warning and
returns ``None``: the client, which knows its own schema, reads instead.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The alembic revisions of MLflow's schema that the SQLite reader is tested with: the one
# MLflow 3.17.2 creates. Add a revision here only with the pin that creates it, once the
# comparison test (tests/integration/test_promote.py) passes on it.
TESTED_REVISIONS = frozenset({"dc11669786a5"})

# Alembic's "batch" migrations rebuild a SQLite table through a temporary copy of this name;
# one left behind means a migration stopped half-way.
LEFTOVER_PREFIX = "_alembic_tmp_"


class StoreReadError(Exception):
    """The store could not be read; ``unreachable`` tells a dead server from a bad answer,
    ``status`` is the HTTP status of a refusal (401: no or a wrong password, 403: forbidden)."""

    def __init__(self, message: str, *, unreachable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status


@dataclass(frozen=True, slots=True)
class RawVersion:
    name: str
    version: int
    stage: str
    tags: dict[str, str]
    run_id: str
    source: str
    created_ms: int
    # Where the version's files are, as the SQL store records it ("" when not read from it):
    # a hint where to read them, not part of what the version is.
    storage_location: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class RawFamily:
    """Model names, their aliases ({alias: version}) and all their versions."""

    aliases: dict[str, dict[str, int]]
    versions: tuple[RawVersion, ...]


def read_raw_family(tracking_uri: str, prefix: str, retries: int = 3) -> RawFamily | None:
    """Read every model whose name starts with ``prefix``; None when no fast path applies."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return _read_rest(tracking_uri, prefix, retries)
    if scheme == "sqlite":
        return _read_sqlite(tracking_uri, prefix)
    return None


# --- SQLite -----------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI; None for an in-memory or malformed one."""
    # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The schema of a SQLite store: its tables and alembic revision."""

    tables: frozenset[str]
    revision: str | None

    @property
    def empty(self) -> bool:
        """No MLflow table yet: a store MLflow has still to create."""
        return not any(not t.startswith("alembic_") for t in self.tables)

    @property
    def tested(self) -> bool:
        return self.revision in TESTED_REVISIONS

    @property
    def leftovers(self) -> tuple[str, ...]:
        return tuple(sorted(t for t in self.tables if t.startswith(LEFTOVER_PREFIX)))

    @property
    def half_migrated(self) -> bool:
        """A migration stopped half-way and the store is not at a known revision."""
        return bool(self.leftovers) and not self.tested


def _schema_of(db: sqlite3.Connection) -> SchemaState:
    tables = frozenset(
        row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    )
    revision = None
    if "alembic_version" in tables:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = str(row[0]) if row else None
    return SchemaState(tables, revision)


def read_schema(path: Path) -> SchemaState:
    """The store's tables and revision; an empty state for a file that does not exist yet."""
    if not path.is_file():
        return SchemaState(frozenset(), None)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        return _schema_of(db)
    finally:
        db.close()


_warned: set[tuple[Path, str | None]] = set()


def _warn_untested(path: Path, schema: SchemaState) -> None:
    """Say once per store and revision that the client reads instead (the API checks often)."""
    key = (path.absolute(), schema.revision)
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(
        "%s is at MLflow schema revision %s, which heartml's fast reader was not tested with "
        "(tested: %s); reading it through MLflow instead",
        path,
        schema.revision or "(none)",
        ", ".join(sorted(TESTED_REVISIONS)),
    )


def _read_sqlite(uri: str, prefix: str) -> RawFamily | None:
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        # A store that does not exist yet: let MLflow create and migrate it.
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
        try:
            # One read transaction: the schema check and the SELECTs see one snapshot.
            db.execute("BEGIN")
            schema = _schema_of(db)
            if not schema.tested:
                # A store still to create, or left half-migrated, is MLflow's to handle and
                # heartml's to report (heartml.registry.embedded); any other revision is a
                # schema this reader does not know.
                if not schema.empty and not schema.half_migrated:
                    _warn_untested(path, schema)
                return None
            family = _select_family(db, prefix)
        finally:
            db.close()
    except sqlite3.Error:
        # The client knows better, and reports what is wrong in its own words.
        return None
    return family


def _select_family(db: sqlite3.Connection, prefix: str) -> RawFamily:
    names = [
        row[0]
        for row in db.execute("SELECT name FROM registered_models ORDER BY name")
        if row[0].startswith(prefix)
    ]
    wanted = set(names)
    aliases: dict[str, dict[str, int]] = {name: {} for name in names}
    for alias, version, name in db.execute(
        "SELECT alias, version, name FROM registered_model_aliases"
    ):
        if name in wanted:
            aliases[name][alias] = int(version)
    tags: dict[tuple[str, int], dict[str, str]] = {}
    for key, value, name, version in db.execute(
        "SELECT key, value, name, version FROM model_version_tags"
    ):
        if name in wanted:
            tags.setdefault((name, int(version)), {})[key] = value or ""
    versions = tuple(
        RawVersion(
            name=name,
            version=int(version),
            stage=stage or "None",
            tags=tags.get((name, int(version)), {}),
            run_id=run_id or "",
            source=source or "",
            created_ms=int(created or 0),
            storage_location=location or "",
        )
        for name, version, stage, run_id, source, created, location in db.execute(
            "SELECT name, version, current_stage, run_id, source, creation_time, storage_location "
            "FROM model_versions WHERE current_stage != 'Deleted_Internal'"
        )
        if name in wanted
    )
    return RawFamily(aliases=aliases, versions=versions)


def local_model_dir(storage_location: str) -> Path | None:
    """The version's model directory when it is a folder on this machine, else None.

    MLflow resolves ``models:/NAME/VERSION`` to the same folder: reading it in place spares a
    copy and the import of MLflow (a second of CPU and 150 MB) in every command that loads a
    model from a local store.
    """
    parsed = urllib.parse.urlparse(storage_location)
    if parsed.scheme not in ("file", "") or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(urllib.parse.unquote(parsed.path))
    if not path.is_absolute() or not (path / "MLmodel").is_file():
        return None
    return path


# --- REST -------------------------------------------------------------------------------------


def _auth_headers() -> dict[str, str]:
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}


def _get_json(url: str, retries: int) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **_auth_headers()})
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "15"))
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data: dict[str, Any] = json.loads(response.read() or b"{}")
                return data
        except urllib.error.HTTPError as exc:
            transient = exc.code in (429, 500, 502, 503, 504)
            if not transient or attempt == retries:
                raise StoreReadError(
                    f"HTTP {exc.code} from {url}", unreachable=transient, status=exc.code
                ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            if attempt == retries:
                raise StoreReadError(str(exc), unreachable=True) from exc
        time.sleep(min(0.25 * 2**attempt, 4.0))
    raise AssertionError("unreachable")  # pragma: no cover


def _search(
    base: str, endpoint: str, key: str, prefix: str, page_size: int, retries: int
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = {"filter": f"name LIKE '{prefix}%'", "max_results": str(page_size)}
        if token:
            query["page_token"] = token
        page = _get_json(
            f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", retries
        )
        items.extend(page.get(key, []))
        token = page.get("next_page_token", "")
        if not token:
            return items


def _read_rest(uri: str, prefix: str, retries: int) -> RawFamily:
    base = uri.rstrip("/")
    models = _search(base, "registered-models/search", "registered_models", prefix, 1000, retries)
    versions = _search(base, "model-versions/search", "model_versions", prefix, 10000, retries)
    aliases = {
        m["name"]: {a["alias"]: int(a["version"]) for a in m.get("aliases", [])}
        for m in models
        if m["name"].startswith(prefix)
    }
    return RawFamily(
        aliases=aliases,
        versions=tuple(
            RawVersion(
                name=v["name"],
                version=int(v["version"]),
                stage=v.get("current_stage") or "None",
                tags={t["key"]: t.get("value", "") for t in v.get("tags", [])},
                run_id=v.get("run_id", ""),
                source=v.get("source", ""),
                created_ms=int(v.get("creation_timestamp", 0)),
            )
            for v in versions
            if v["name"] in aliases
        ),
    )
