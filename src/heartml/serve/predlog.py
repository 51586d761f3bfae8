"""The prediction log: one JSON line per answered row, written by the shadow process.

Opt-in (these are health data): ``HEARTML_PREDICTION_LOG_DIR`` names the directory; unset, no
record is ever built. Each worker process's answers go to its own files,
``predictions-<UTC start>-<worker pid>-<n>.jsonl``, written by that worker's shadow process
(:mod:`heartml.serve.shadow_process`: the formatting and writing never run in the server's
interpreter), created 0600 (the service user only) and rotated when they pass
``HEARTML_PREDICTION_LOG_MAX_BYTES``; a restarted shadow process goes on with the next ``<n>``.
Files are only ever appended to and, once rotated, never touched again: a shipper or a data
team can pick them up as they close.

JSON lines rather than Parquet: a record is durable as soon as its line is written (a Parquet
file is readable only once its footer is, so a crash would lose the whole open file), a line is
written without buffering thousands of rows in memory, the serving image needs no pyarrow, and
``jq``, ``pandas.read_json(lines=True)``, DuckDB and Spark all read it as it is.

Each record::

    {"request_id": "...", "row": 0, "time": "2026-...Z", "seq": 17,
     "model_name": "heart-disease-svm", "model_version": 3,
     "features": {"age": 63, ..., "ca": null},          # as received (null = not given)
     "imputed_features": {"age": 63, ..., "ca": 0.0},   # what the model saw
     "probability": 0.71, "prediction": 1,
     "shadow_model": "heart-disease-knn/2", "shadow_probability": 0.64}

``seq`` numbers the records of one worker when the request is answered: a number missing from
the files is a record that never reached the disk (a drop, or a crash before the writer got to
it), and ``heartml monitor`` counts them. When a served model's training profile is
known, ``reference-<name>-v<version>.json`` is written beside the records once, so that the
monitor report needs nothing but this directory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from heartml.data.profile import impute_rows
from heartml.data.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from heartml.data.profile import ReferenceProfile

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own id is kept when it is a plain token that cannot forge a log line or a header.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
FILE_MODE = 0o600


def request_id(client_value: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new random one."""
    if client_value:
        try:
            text = client_value.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _SANE_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


@dataclass(slots=True)
class Answered:
    """What one request (or a part of its rows) was answered with, as the shadow process
    reads it from the server; the shadow fills in its own fields before it is logged."""

    request_id: str
    time: float  # epoch seconds
    model_name: str
    model_version: int
    rows: NDArray[np.float64]  # as received, NaN = missing
    classes: list[int]
    probabilities: list[float]
    impute_values: NDArray[np.float64] | None
    shadow_model: str | None = None
    shadow_probabilities: list[float] | None = None
    first_seq: int | None = None  # the log's number of its first row, given on the request path
    first_row: int = 0  # the first row's position in its request (a request sent in parts)


def _json_values(matrix: NDArray[np.float64]) -> list[list[float | int | None]]:
    """Each row's values as JSON would have them: missing (NaN) → None, whole numbers → int."""
    values = matrix.astype(object)
    # False for NaN and infinities; whole numbers past 2**53 stay floats (int64 would wrap).
    whole = (matrix == np.floor(matrix)) & (np.abs(matrix) < 2.0**53)
    values[whole] = matrix[whole].astype(np.int64)
    values[np.isnan(matrix)] = None
    rows: list[list[float | int | None]] = values.tolist()
    return rows


def _imputed(batch: list[Answered], rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """``rows`` (the batch's, concatenated) as each answer's model saw them: all at once when
    the answers share one model's impute values."""
    first = batch[0].impute_values
    if all(a.impute_values is first for a in batch):
        return rows if first is None else impute_rows(rows, first)
    return np.concatenate(
        [a.rows if a.impute_values is None else impute_rows(a.rows, a.impute_values) for a in batch]
    )


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _timestamp(seconds: float) -> str:
    return f"{_utc_second(int(seconds))}.{int(seconds % 1 * 1000):03d}Z"


def records_of(batch: list[Answered], first_seqs: list[int]) -> list[dict[str, Any]]:
    """The log records of answered requests, one per row; ``first_seqs``: each one's first
    record number. Whole-batch numpy for the values, one Python pass per record."""
    rows = np.concatenate([a.rows for a in batch])
    received = _json_values(rows)
    imputed = _json_values(_imputed(batch, rows))
    records = []
    k = 0
    for answered, first_seq in zip(batch, first_seqs, strict=True):
        stamp = _timestamp(answered.time)
        shadow = answered.shadow_model is not None and answered.shadow_probabilities is not None
        for i in range(len(answered.rows)):
            record: dict[str, Any] = {
                "request_id": answered.request_id,
                "row": answered.first_row + i,
                "time": stamp,
                "seq": first_seq + i,
                "model_name": answered.model_name,
                "model_version": answered.model_version,
                "features": dict(zip(FEATURE_NAMES, received[k], strict=True)),
                "imputed_features": dict(zip(FEATURE_NAMES, imputed[k], strict=True)),
                "probability": answered.probabilities[i],
                "prediction": answered.classes[i],
            }
            if shadow:
                record["shadow_model"] = answered.shadow_model
                record["shadow_probability"] = answered.shadow_probabilities[i]  # type: ignore[index]
            records.append(record)
            k += 1
    return records


class SeqNumbers:
    """The log's record numbers, given on the request path: a record that never reaches the
    disk (dropped, or queued when a process died) leaves a gap in the numbers."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self, rows: int) -> int:
        """Reserve ``rows`` numbers; the first of them."""
        with self._lock:
            first = self._next
            self._next += rows
        return first


def write_reference(directory: Path, name: str, version: int, profile: ReferenceProfile) -> bool:
    """The served model's training profile beside the records, once per model (False: it was
    there already)."""
    path = directory / f"reference-{name}-v{version}.json"
    if path.exists():
        return False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(profile.as_dict(), out)
    return True


def log_prefix(pid: int | None = None) -> str:
    """The name the files of one worker's log start with: ``predictions-<UTC now>-<pid>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"predictions-{stamp}-{os.getpid() if pid is None else pid}"


class PredictionLog:
    """Append-only JSON-lines files in ``directory`` named ``<prefix>-<n>.jsonl``: the shadow
    process's writer (one thread, synchronous)."""

    def __init__(self, directory: Path, max_bytes: int, prefix: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._prefix = prefix
        # A restarted process goes on after the files of the one before it.
        taken = [
            int(match.group(1))
            for path in directory.glob(f"{prefix}-*.jsonl")
            if (match := re.fullmatch(re.escape(prefix) + r"-(\d+)\.jsonl", path.name))
        ]
        self._part = max(taken, default=0)
        self._seq = SeqNumbers()  # for answers given without numbers
        self._fd: int | None = None
        self._size = 0
        self.written = 0
        self.path: Path | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def close(self) -> None:
        """Make what was written durable and close the file."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        self._part += 1
        self.path = self.directory / f"{self._prefix}-{self._part:04d}.jsonl"
        self._size = 0
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)

    def write(self, batch: list[Answered]) -> int:
        """Append the records of ``batch`` (each with its ``first_seq``); how many."""
        if not batch:
            return 0
        seqs = [self._seq.take(len(a.rows)) if a.first_seq is None else a.first_seq for a in batch]
        lines = [orjson.dumps(r) for r in records_of(batch, seqs)]
        data = b"\n".join(lines) + b"\n"
        if self._fd is None or self._size >= self.max_bytes:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        self.written += len(lines)
        return len(lines)
