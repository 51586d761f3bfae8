"""Read-only access to the model registry without importing MLflow.

`import mlflow` alone costs well over a second, and building an ``MlflowClient`` on a SQL
store imports SQLAlchemy models and checks migrations. Reads are most of what heartml does
(``promote --list``, ``--history``, and the API's reload check every few seconds), so they
go straight to the store: MLflow's public REST API for a tracking server, MLflow's registry
tables for the embedded SQLite file. Writes always go through ``MlflowClient``.

Both readers return the same plain records as ``MlflowClient`` would give; a test runs every
reader against the same store and compares them with the client's answer. Any other store
(``postgresql://`` opened directly, say) returns ``None`` and the caller uses the client.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StoreReadError(Exception):
    """The store could not be read; ``unreachable`` tells a dead server from a bad answer."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class RawVersion:
    name: str
    version: int
    stage: str
    tags: dict[str, str]
    run_id: str
    source: str
    created_ms: int


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


def _sqlite_path(uri: str) -> Path | None:
    # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def _read_sqlite(uri: str, prefix: str) -> RawFamily | None:
    path = _sqlite_path(uri)
    if path is None or not path.is_file():
        # A store that does not exist yet: let MLflow create and migrate it.
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
        try:
            # One read transaction: the four SELECTs see one snapshot of the registry.
            db.execute("BEGIN")
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
                )
                for name, version, stage, run_id, source, created in db.execute(
                    "SELECT name, version, current_stage, run_id, source, creation_time "
                    "FROM model_versions WHERE current_stage != 'Deleted_Internal'"
                )
                if name in wanted
            )
        finally:
            db.close()
    except sqlite3.Error:
        # A schema this reader does not know (a newer MLflow): the client knows better.
        return None
    return RawFamily(aliases=aliases, versions=versions)


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
                raise StoreReadError(f"HTTP {exc.code} from {url}", unreachable=transient) from exc
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
