"""The prediction log: one JSON line per answered row, written off the request path.

Opt-in (these are health data): ``HEARTML_PREDICTION_LOG_DIR`` names the directory; unset, no
record is ever built. Each worker process appends to its own file,
``predictions-<UTC start>-<pid>-<n>.jsonl``, created 0600 (the service user only) and rotated
when it passes ``HEARTML_PREDICTION_LOG_MAX_BYTES``. Files are only ever appended to and, once
rotated, never touched again: a shipper or a data team can pick them up as they close.

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

``seq`` numbers the records of one process when the request is answered: a number missing from
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

from heartml.data.profile import ReferenceProfile, impute_rows
from heartml.data.schema import FEATURE_NAMES
from heartml.serve.background import BackgroundQueue

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from heartml.serve.livemetrics import LiveMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own id is kept when it is a plain token that cannot forge a log line or a header.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
FILE_MODE = 0o600
# The writer thread formats and writes this many answered requests at a time, then sleeps
# YIELD_S: the event loop, which has been waiting for the GIL, takes it (a plain release
# around a write is usually won back by the writer before the loop's thread wakes up).
WRITE_SLICE = 16
YIELD_S = 0.0002


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
    """What one request was answered with: built on the request path from what it had.

    Handed from the request to the shadow thread and then to the log's, one owner at a time:
    the shadow fills in its own fields in place before passing it on.
    """

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
    record number. Whole-batch numpy for the values: the log thread holds the GIL meanwhile."""
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
                "row": i,
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


class PredictionLog:
    """Append-only JSON-lines files in ``directory``, written by one background thread."""

    def __init__(
        self, directory: Path, max_bytes: int, queue_size: int, metrics: LiveMetrics
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.queue: BackgroundQueue[Answered] = BackgroundQueue(
            "predlog", self._write, queue_size, metrics.dropped.labels("predlog").inc
        )
        self._prefix = f"predictions-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        self._part = 0
        self._fd: int | None = None
        self._size = 0
        self._seq = 0
        self._seq_lock = threading.Lock()
        self.written = 0
        self.path: Path | None = None
        self._references: set[str] = set()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.queue.start()

    def number(self, rows: int) -> int:
        """Reserve ``rows`` record numbers; the first of them. Called on the request path, so
        that a record that never reaches the disk (dropped, or queued when the process died)
        leaves a gap in the numbers."""
        with self._seq_lock:
            first = self._seq
            self._seq += rows
        return first

    def offer(self, answered: Answered) -> bool:
        return self.queue.offer(answered)

    def offer_many(self, answered: list[Answered]) -> int:
        return self.queue.offer_many(answered)

    def close(self, timeout: float) -> None:
        """Write everything queued (SIGTERM: within the drain), then close the file."""
        flushed = self.queue.close(timeout)
        if not flushed:
            # The writer is still at work: its file stays open under it (the process is ending).
            logger.warning(
                "prediction log: %d records not written before the deadline", self.queue.pending
            )
        elif self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        logger.info(
            "prediction log: %d records written, %d dropped", self.written, self.queue.dropped
        )

    def write_reference(self, name: str, version: int, profile: ReferenceProfile) -> None:
        """The served model's training profile beside the records (once per model)."""
        path = self.directory / f"reference-{name}-v{version}.json"
        if path.name in self._references or path.exists():
            self._references.add(path.name)
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(profile.as_dict(), out)
        self._references.add(path.name)

    # --- the writer thread -----------------------------------------------------------------

    def _open(self) -> int:
        self._part += 1
        self.path = self.directory / f"{self._prefix}-{self._part:04d}.jsonl"
        self._size = 0
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)

    def _write(self, batch: list[Answered]) -> None:
        # In slices, each written before the next is built: the GIL goes back to the event
        # loop between them (see WRITE_SLICE).
        for start in range(0, len(batch), WRITE_SLICE):
            if start:
                time.sleep(YIELD_S)
            self._write_slice(batch[start : start + WRITE_SLICE])

    def _write_slice(self, batch: list[Answered]) -> None:
        seqs = [self.number(len(a.rows)) if a.first_seq is None else a.first_seq for a in batch]
        lines = [orjson.dumps(r) for r in records_of(batch, seqs)]
        data = b"\n".join(lines) + b"\n"
        if self._fd is None or self._size >= self.max_bytes:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = self._open()
        os.write(self._fd, data)
        self._size += len(data)
        self.written += len(lines)
        self.metrics.log_written.inc(len(lines))
