"""What the server and its shadow process say to each other: the bytes on their three pipes.

The server hands each answer to the shadow process (:mod:`heartml.serve.shadow_process`)
through a pipe, without pickling: answers wait on the event loop until it is idle and are
written as messages of numpy arrays, at most ``PIPE_BUF`` bytes so that a non-blocking write
is all or nothing (a full pipe refuses the whole message: the answers wait, or are dropped
and counted). A message is an 8-byte header, ``<kind u1, flag u1, count u2, length u4>``, then
its body:

* ``MODEL`` (flag: has impute values; count: the name's length): ``id u4, pad u4,
  version i8, [13 × f8 impute values], name``. Sent before the first answer of a model, so
  that each answer carries a 4-byte id instead of its model's name and profile.
* ``ANSWERS`` (count: K answers; the body holds n rows in all): ``n u4, id bytes u4``, then
  ``rows f8[n, 13], probability f8[n]``, K answer records ``<time f8, seq i8, model u4,
  first_row u4, rows u2, flags u1, id length u1>`` (packed on the request path; read back as
  one structured array), ``class u1[n]`` and the request ids. A request of more rows than a
  message holds is sent in parts (``first_row``: the part's first row in its request); only
  its last part has ``LAST`` set.

The other two pipes carry rare, small objects, pickled and length-prefixed: the challenger
(its engine and the champion/challenger pair it is counted for), server to process, and the
process's running totals (:class:`Totals`), process to server, once per batch it handled.
"""

from __future__ import annotations

import pickle
import select
import signal
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import NDArray

    from heartml.model.engine import Engine

HEADER = struct.Struct("<BBHI")
MODEL, ANSWERS = 1, 2
# Larger writes to a pipe may be split and interleaved; up to this size a write is atomic.
PIPE_BUF = select.PIPE_BUF
# The signals the shadow process never dies of: it is started with them blocked and ignores
# them, and ends when the server closes its pipes (after handing over every answer).
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
FIELDS = len(FEATURE_NAMES)
_MODEL_BODY = struct.Struct("<IIq")
_ANSWERS_BODY = struct.Struct("<II")
# Per row in an ANSWERS message (bytes): its values, probability and class.
ROW_BYTES = FIELDS * 8 + 8 + 1
# The upper bounds of heartml_shadow_abs_diff's buckets (without +Inf).
ABS_DIFF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)

# Flags of an answer.
SHADOW = 1  # score it with the challenger (the global champion's answers only)
LAST = 2  # the last (or only) part of its request

_LENGTH = struct.Struct("<I")


def model_message(
    model_id: int, name: str, version: int, impute: NDArray[np.float64] | None
) -> bytes:
    """The MODEL message that declares ``model_id``."""
    encoded = name.encode()
    body = _MODEL_BODY.pack(model_id, 0, version)
    values = b"" if impute is None else np.asarray(impute, dtype="<f8").tobytes()
    length = HEADER.size + len(body) + len(values) + len(encoded)
    return HEADER.pack(MODEL, impute is not None, len(encoded), length) + body + values + encoded


# Per answer in an ANSWERS message: time, seq (-1: not logged), model id, first row, rows,
# flags, request id length.
_ITEM = struct.Struct("<dqIIHBB")
ITEM_DTYPE = np.dtype(
    [
        ("time", "<f8"),
        ("seq", "<i8"),
        ("model", "<u4"),
        ("first_row", "<u4"),
        ("counts", "<u2"),
        ("flags", "u1"),
        ("id_length", "u1"),
    ]
)
assert ITEM_DTYPE.itemsize == _ITEM.size


class Pending:
    """One answer (or part of one) waiting to be written: what the request already had, its
    fixed fields packed at once (the message is then a join)."""

    __slots__ = ("classes", "flags", "head", "model", "probabilities", "request_id", "rows")

    def __init__(
        self,
        request_id: bytes,
        time: float,
        seq: int,
        model: int,
        first_row: int,
        flags: int,
        rows: NDArray[np.float64],
        classes: list[int],
        probabilities: list[float],
    ) -> None:
        self.head = _ITEM.pack(time, seq, model, first_row, len(rows), flags, len(request_id))
        self.request_id = request_id
        self.model = model
        self.flags = flags
        self.rows = rows
        self.classes = classes
        self.probabilities = probabilities


def message_size(answers: int, rows: int, id_bytes: int) -> int:
    return HEADER.size + _ANSWERS_BODY.size + answers * _ITEM.size + rows * ROW_BYTES + id_bytes


def rows_per_part(id_bytes: int) -> int:
    """How many rows of one request fit in one message."""
    return (PIPE_BUF - message_size(1, 0, id_bytes)) // ROW_BYTES


def answers_message(batch: list[Pending]) -> bytes:
    """The ANSWERS message of ``batch``: joins, one numpy call for the rows."""
    count = len(batch)
    ids = b"".join([p.request_id for p in batch])
    rows = batch[0].rows if count == 1 else np.concatenate([p.rows for p in batch])
    n = len(rows)
    probabilities = [v for p in batch for v in p.probabilities]
    return b"".join(
        (
            HEADER.pack(ANSWERS, 0, count, message_size(count, n, len(ids))),
            _ANSWERS_BODY.pack(n, len(ids)),
            rows.astype("<f8", copy=False).tobytes(),
            struct.pack(f"<{n}d", *probabilities),
            b"".join([p.head for p in batch]),
            bytes([v for p in batch for v in p.classes]),
            ids,
        )
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: int
    impute_values: NDArray[np.float64] | None


@dataclass(frozen=True, slots=True)
class AnswerBatch:
    """An ANSWERS message read back: arrays over its bytes (no copy)."""

    time: NDArray[np.float64]
    seq: NDArray[np.int64]
    rows: NDArray[np.float64]  # (n, 13)
    probabilities: NDArray[np.float64]
    model: NDArray[np.uint32]
    first_row: NDArray[np.uint32]
    counts: NDArray[np.uint16]
    flags: NDArray[np.uint8]
    classes: NDArray[np.uint8]
    request_ids: list[str]


def merge(batches: list[AnswerBatch]) -> AnswerBatch:
    """One batch of several messages' answers, in order (one call of the challenger for all)."""
    if len(batches) == 1:
        return batches[0]

    def joined(name: str) -> Any:
        return np.concatenate([getattr(b, name) for b in batches])

    return AnswerBatch(
        time=joined("time"),
        seq=joined("seq"),
        rows=joined("rows"),
        probabilities=joined("probabilities"),
        model=joined("model"),
        first_row=joined("first_row"),
        counts=joined("counts"),
        flags=joined("flags"),
        classes=joined("classes"),
        request_ids=[i for b in batches for i in b.request_ids],
    )


def read_model(message: memoryview) -> tuple[int, ModelInfo]:
    _, has_impute, name_length, _ = HEADER.unpack_from(message)
    model_id, _, version = _MODEL_BODY.unpack_from(message, HEADER.size)
    at = HEADER.size + _MODEL_BODY.size
    impute = None
    if has_impute:
        impute = np.frombuffer(message, "<f8", FIELDS, at).astype(np.float64)
        at += FIELDS * 8
    name = bytes(message[at : at + name_length]).decode()
    return model_id, ModelInfo(name, version, impute)


def read_answers(message: memoryview) -> AnswerBatch:
    _, _, count, _ = HEADER.unpack_from(message)
    n, id_bytes = _ANSWERS_BODY.unpack_from(message, HEADER.size)
    at = HEADER.size + _ANSWERS_BODY.size
    rows = np.frombuffer(message, "<f8", n * FIELDS, at).reshape(n, FIELDS)
    at += rows.nbytes
    probabilities = np.frombuffer(message, "<f8", n, at)
    at += probabilities.nbytes
    items = np.frombuffer(message, ITEM_DTYPE, count, at)
    at += items.nbytes
    classes = np.frombuffer(message, "u1", n, at)
    at += n
    ids = bytes(message[at : at + id_bytes])
    request_ids, start = [], 0
    for length in items["id_length"].tolist():
        request_ids.append(ids[start : start + length].decode())
        start += length
    return AnswerBatch(
        time=items["time"],
        seq=items["seq"],
        rows=rows,
        probabilities=probabilities,
        model=items["model"],
        first_row=items["first_row"],
        counts=items["counts"],
        flags=items["flags"],
        classes=classes,
        request_ids=request_ids,
    )


class MessageReader:
    """Whole messages out of a byte stream read in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, memoryview]]:
        """The complete messages now buffered, as (kind, its bytes); keeps a partial one."""
        self._buffer += data
        buffer = bytes(self._buffer)
        view = memoryview(buffer)
        at = 0
        while len(buffer) - at >= HEADER.size:
            kind, _, _, length = HEADER.unpack_from(buffer, at)
            if length < HEADER.size:
                raise ValueError(f"a message of {length} bytes: the stream is corrupt")
            if len(buffer) - at < length:
                break
            yield kind, view[at : at + length]
            at += length
        del self._buffer[:at]

    @property
    def partial(self) -> int:
        return len(self._buffer)


# --- the rare objects: the challenger, the process's totals ---------------------------------


def object_message(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class ObjectReader:
    """Length-prefixed pickles out of a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        return [pickle.loads(pickled) for pickled in self.feed_pickles(data)]

    def feed_pickles(self, data: bytes) -> list[bytes]:
        """The complete pickles now buffered, not yet loaded (loading may build an engine:
        the caller chooses the thread that pays for it)."""
        self._buffer += data
        found = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            found.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return found


@dataclass(frozen=True, slots=True)
class PairStats:
    """Agreement of one champion and one challenger so far."""

    champion: str
    challenger: str
    since: str
    rows: int = 0
    disagreements: int = 0
    abs_diff_sum: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "since": self.since,
            "rows": self.rows,
            "disagreements": self.disagreements,
            "agreement": None if not self.rows else 1 - self.disagreements / self.rows,
            "mean_abs_diff": None if not self.rows else self.abs_diff_sum / self.rows,
        }

    @property
    def key(self) -> tuple[str, str, str]:
        return self.champion, self.challenger, self.since


@dataclass(frozen=True, slots=True)
class Challenger:
    """Server to process: score the SHADOW answers with ``engine`` (None: with nothing), and
    count agreement for ``pair`` (its counts so far: a restarted process goes on from them)."""

    ref: str | None
    engine: Engine | None
    pair: PairStats | None


@dataclass(frozen=True, slots=True)
class Totals:
    """Process to server: what this process did since it started (cumulative, so that a
    message skipped when the pipe is full loses nothing)."""

    shadow_rows: int = 0
    disagreements: int = 0
    abs_diff_counts: tuple[int, ...] = ()  # per bucket of heartml_shadow_abs_diff, +Inf last
    abs_diff_sum: float = 0.0
    errors: int = 0
    written: int = 0  # prediction-log records
    shadow_answers: int = 0  # SHADOW answers handled (their LAST part)
    log_answers: int = 0  # answers handled while logging (their LAST part)
    pair: PairStats | None = None
    last_error: str | None = None
    final: bool = False  # the last message: everything it was given is handled
