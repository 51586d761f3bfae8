"""The server's side of its shadow process: starting it, feeding it, restarting it, its totals.

On the request path (the event loop) :meth:`ShadowFeed.record` appends the answer, as the
request has it, to a queue (:class:`AnswerQueue`): nothing else. The packing (messages of
numpy arrays, at most ``PIPE_BUF`` bytes, :mod:`heartml.serve.frames`) and the writes to the
shadow process's pipe happen when the loop is idle, a message at a time, looking for ready
requests between two (the selector's idle work, :mod:`heartml.serve.giveway`); under a loop
that has no such hook (a test client's), a timer writes them within ``FLUSH_S``. So a
saturated server spends on the evidence an append per answer. A full pipe (the process is
behind: ``SCHED_IDLE`` on a busy CPU, or a slow disk) keeps the answers waiting until it has
room; beyond ``queue_size`` rows waiting they are dropped and counted in
``heartml_background_dropped_total{queue}`` (``shadow`` for the answers it would have
shadowed, ``predlog`` for those it would have logged). Nothing on the loop waits, and nothing
is pickled per answer.

A thread of the server's reads the process's running totals (a blocking read: no GIL while
it waits) and adds what changed to the Prometheus metrics; the end of that pipe is the end of
the process. When the process dies, the thread counts it in ``heartml_shadow_restarts_total``,
counts what it had been given and not handled as dropped, and starts a new one (after
``RESTART_S``, doubling while it keeps dying young) with the same challenger and the pair's
counts so far. Answers sent meanwhile are dropped and counted; the answers themselves are
never affected.

:meth:`ShadowFeed.close` (the app's shutdown, after the drain) writes what the queue holds
(waiting for room in a full pipe, until its deadline) and closes the pipe: the process
handles what it was given, flushes the log and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.errors import one_line
from heartml.serve.frames import (
    LAST,
    PIPE_BUF,
    ROW_BYTES,
    SHADOW,
    STOP_SIGNALS,
    Challenger,
    ObjectReader,
    PairStats,
    Pending,
    Totals,
    answers_message,
    message_size,
    model_message,
    object_message,
    rows_per_part,
)
from heartml.serve.giveway import BellSelector, IdleBell
from heartml.serve.predlog import log_prefix

if TYPE_CHECKING:
    from collections.abc import Hashable

    from numpy.typing import NDArray
    from prometheus_client import Counter

    from heartml.model.engine import Engine
    from heartml.serve.livemetrics import LiveMetrics

logger = logging.getLogger(__name__)

# Under a loop without idle hooks: how long an answer may wait on the loop before it is
# written (one write for many answers).
FLUSH_S = 0.01
# The first restart's delay; doubled (up to MAX_RESTART_S) while the process dies within
# STABLE_S of starting.
RESTART_S = 0.5
MAX_RESTART_S = 30.0
STABLE_S = 30.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Bytes of pipe per answer waiting (a one-row answer takes ~170).
_BYTES_PER_ANSWER = 200
_MIN_PIPE = 64 << 10

QUEUES = ("shadow", "predlog")
_EMPTY = message_size(0, 0, 0)
_ITEM_BYTES = message_size(1, 0, 0) - _EMPTY


# Drops are counted at once and added to the Prometheus counter this many at a time (and
# before each /metrics answer): its labels() costs more than the rest of a dropped answer.
_DROPS_PER_REPORT = 256
# Taken answers a queue lets go of (at least this many, and half of what it holds) while it
# never empties.
_COMPACT_AFTER = 1024


class AnswerQueue:
    """The answers waiting on the event loop, in columns of plain values.

    A saturated server keeps thousands of answers here for a while: held as tuples or lists
    (objects the garbage collector tracks), they set off a young collection every few hundred
    requests (~0.1 ms, and ~1 ms for the next generation); numbers, strings and arrays in
    columns add nothing for it to walk. A one-row answer's class and probability are kept as
    scalars. It holds at most ``limit_rows`` rows (an answer of more rows only when empty)."""

    __slots__ = (
        "_rows_held",
        "_start",
        "classes",
        "flags",
        "ids",
        "limit_rows",
        "models",
        "probabilities",
        "rows",
        "seqs",
        "times",
    )

    def __init__(self, limit_rows: int) -> None:
        self.limit_rows = limit_rows
        self.ids: list[str] = []
        self.times: list[float] = []
        self.seqs: list[int] = []
        self.models: list[int] = []
        self.flags: list[int] = []
        self.rows: list[NDArray[np.float64]] = []
        self.classes: list[int | list[int]] = []
        self.probabilities: list[float | list[float]] = []
        self._start = 0  # the first not yet taken
        self._rows_held = 0

    def __len__(self) -> int:
        return len(self.ids) - self._start

    def add(
        self,
        request_id: str,
        at: float,
        seq: int,
        model: int,
        flags: int,
        rows: NDArray[np.float64],
        classes: list[int],
        probabilities: list[float],
    ) -> bool:
        """Keep an answer; False (not kept) when it would hold more than ``limit_rows``."""
        held = self._rows_held + len(rows)
        if held > self.limit_rows and self._rows_held:
            return False
        self._rows_held = held
        self.ids.append(request_id)
        self.times.append(at)
        self.seqs.append(seq)
        self.models.append(model)
        self.flags.append(flags)
        self.rows.append(rows)
        if len(classes) == 1:
            self.classes.append(classes[0])
            self.probabilities.append(probabilities[0])
        else:
            self.classes.append(classes)
            self.probabilities.append(probabilities)
        return True

    def entry(
        self, k: int
    ) -> tuple[str, float, int, int, int, NDArray[np.float64], list[int], list[float]]:
        """The ``k``-th waiting answer (not taken): request id, time, seq, model, flags, rows,
        classes, probabilities."""
        i = self._start + k
        classes, probabilities = self.classes[i], self.probabilities[i]
        return (
            self.ids[i],
            self.times[i],
            self.seqs[i],
            self.models[i],
            self.flags[i],
            self.rows[i],
            classes if isinstance(classes, list) else [classes],
            probabilities if isinstance(probabilities, list) else [probabilities],
        )

    def skip(self, count: int) -> None:
        """Take the first ``count`` waiting answers out (handed over, or dropped)."""
        end = self._start + count
        self._rows_held -= sum(len(rows) for rows in self.rows[self._start : end])
        self._start = end
        if self._start == len(self.ids):
            self.clear()
        elif self._start >= _COMPACT_AFTER and 2 * self._start >= len(self.ids):
            # Under a load that never lets it empty, what was taken is let go of all the same.
            for column in self._columns():
                del column[: self._start]
            self._start = 0

    def clear(self) -> None:
        for column in self._columns():
            column.clear()
        self._start = 0
        self._rows_held = 0

    def _columns(self) -> tuple[list[Any], ...]:
        return (
            self.ids,
            self.times,
            self.seqs,
            self.models,
            self.flags,
            self.rows,
            self.classes,
            self.probabilities,
        )

    def waiting_flags(self) -> list[int]:
        return self.flags[self._start :]


@dataclass(slots=True)
class _Channel:
    """One shadow process and the server's ends of its pipes."""

    process: subprocess.Popen[bytes]
    data: int  # non-blocking: written by the event loop only
    control: int
    totals: int
    started: float
    declared: set[int] = field(default_factory=set)  # model ids it has been told


def _pipe_size(fd: int, wanted: int) -> int:
    """Make the pipe hold ``wanted`` bytes, or as much as this system lets it; how much."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    size = max(_MIN_PIPE, min(wanted, limit))
    while size >= _MIN_PIPE:
        try:
            return fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
        except OSError:
            size //= 2
    return _MIN_PIPE


class ShadowFeed:
    """A shadow process kept running, what was handed to it, and what it reported."""

    def __init__(
        self,
        metrics: LiveMetrics,
        log_dir: Path | None,
        log_max_bytes: int,
        queue_size: int,
        log_level: str = "info",
    ) -> None:
        self.metrics = metrics
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.queue_size = queue_size
        self.log_level = log_level
        self.log_prefix = log_prefix()
        self._channel: _Channel | None = None
        self._retired: list[int] = []
        self._control_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._challenger = Challenger(None, None, None)
        # The answers waiting on the event loop, as the requests had them, and whether
        # their writing is arranged (an idle hook of the loop, or a timer).
        self._buffer = AnswerQueue(queue_size)  # rows (a one-row answer: one)
        self._unreported = dict.fromkeys(QUEUES, 0)  # drops not yet in the metric
        self._patient_until = 0.0  # closing: until when a full pipe is waited for
        self._pipe_full = False  # the last write was refused for want of room
        self._room_fd: int | None = None  # the pipe the loop waits on for room
        self._armed = False
        self._models: dict[Hashable, int] = {}
        self._model_messages: list[bytes] = []
        # Answers by queue: given to a process, dropped, and settled (handled by a process,
        # or lost with one that died) by the processes before the current one.
        self.sent = dict.fromkeys(QUEUES, 0)
        self.dropped = dict.fromkeys(QUEUES, 0)
        self._settled = dict.fromkeys(QUEUES, 0)
        self.totals = Totals()  # the current process's
        self.pair: PairStats | None = None
        self.restarts = 0
        self.pid: int | None = None
        self._bell: IdleBell | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def logging(self) -> bool:
        return self.log_dir is not None

    # --- the request path (the event loop) -------------------------------------------------

    def model_id(
        self, key: Hashable, name: str, version: int, impute: NDArray[np.float64] | None
    ) -> int:
        """The id of the model ``key`` in the answers sent (declared to each process once)."""
        found = self._models.get(key)
        if found is None:
            found = len(self._model_messages)
            self._model_messages.append(model_message(found, name, version, impute))
            self._models[key] = found
        return found

    def record(
        self,
        request_id: str,
        model: int,
        rows: NDArray[np.float64],
        classes: list[int],
        probabilities: list[float],
        seq: int,
        shadow: bool,
    ) -> None:
        """Hand an answer to the shadow process: kept as it is until the event loop is idle
        (then packed and written, :meth:`write_some`); dropped and counted when
        ``queue_size`` answers wait already."""
        flags = SHADOW | LAST if shadow else LAST
        if not self._buffer.add(
            request_id, time.time(), seq, model, flags, rows, classes, probabilities
        ):
            self._drop_one(shadow)
            return
        if not self._armed:
            self._arm()

    def _drop_one(self, shadow: bool) -> None:
        unreported = self._unreported
        if shadow:
            self.dropped["shadow"] += 1
            unreported["shadow"] += 1
        if self.logging:
            self.dropped["predlog"] += 1
            unreported["predlog"] += 1
        if unreported["shadow"] + unreported["predlog"] >= _DROPS_PER_REPORT:
            self.report_drops()

    def report_drops(self) -> None:
        """Add the drops counted on the request path to the metric."""
        for queue, count in self._unreported.items():
            if count:
                self.metrics.dropped.labels(queue).inc(count)
                self._unreported[queue] = 0

    def _arm(self) -> None:
        """Have the waiting answers written: when the loop is next idle (a loop of
        :func:`heartml.serve.giveway.new_event_loop`), else within ``FLUSH_S``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop (a direct call): no waiting
            self.flush()
            return
        selector = BellSelector.of(loop)
        if selector is not None:
            selector.idle_work.append(self._write_when_idle)
        else:
            loop.call_later(FLUSH_S, self._flush_on_timer)
        self._armed = True

    def _write_when_idle(self) -> bool:
        """One message's worth, in a moment the loop has nothing else to do; True while
        more answers wait. A full pipe keeps them waiting (the loop writes again once the
        pipe has room): only a full queue drops."""
        try:
            if not self.write_some(keep_when_full=True):
                self._wait_for_room()
                return False
        except Exception as exc:  # never the event loop's: these answers only are lost
            logger.warning("could not hand answers to the shadow process: %s", one_line(exc))
            self._drop_waiting()
            self._armed = False
            return False
        if self._buffer:
            return True
        self._armed = False
        self.report_drops()
        return False

    def _wait_for_room(self) -> None:
        """Arrange for the loop to write again once the pipe has room (``_armed`` stays set:
        the answers that come meanwhile wait too)."""
        channel = self._channel
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or channel is None:
            self._armed = False
            return
        self._room_fd = channel.data
        loop.add_writer(channel.data, self._has_room, loop)

    def _has_room(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop_waiting_for_room(loop)
        self._armed = False
        if self._buffer:
            self._arm()

    def _stop_waiting_for_room(self, loop: asyncio.AbstractEventLoop | None) -> None:
        fd, self._room_fd = self._room_fd, None
        if fd is not None and loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_writer(fd)

    def _drop_waiting(self) -> None:
        flags = self._buffer.waiting_flags()
        self._buffer.clear()
        self._count(self.dropped, flags, self.metrics.dropped)

    def _flush_on_timer(self) -> None:
        self._armed = False
        self.flush()

    def flush(self) -> None:
        """Write every waiting answer (a clean shutdown; a loop without idle hooks)."""
        while self._buffer:
            self.write_some()

    def write_some(self, *, keep_when_full: bool = False) -> bool:
        """Pack and write the next waiting answers as one message of at most ``PIPE_BUF``
        bytes (a request of more rows than that: all its parts). When the pipe is full they
        are dropped and counted, or with ``keep_when_full`` kept waiting and False returned."""
        waiting = self._buffer
        batch: list[Pending] = []
        size = _EMPTY
        while len(batch) < len(waiting):
            request_id, at, seq, model, flags, rows, classes, probabilities = waiting.entry(
                len(batch)
            )
            rid = request_id.encode()[:255]
            item = _ITEM_BYTES + len(rid) + len(rows) * ROW_BYTES
            if size + item > PIPE_BUF:
                if batch:
                    break
                waiting.skip(1)  # more rows than a message holds: in parts, never kept back
                self._send_parts(rid, model, rows, classes, probabilities, seq, flags, at)
                return True
            batch.append(Pending(rid, at, seq, model, 0, flags, rows, classes, probabilities))
            size += item
        if not batch:
            return True
        flags_sent = [p.flags for p in batch]
        self._pipe_full = False
        if self._write(answers_message(batch), batch):
            waiting.skip(len(batch))
            self._count(self.sent, flags_sent)
            return True
        if keep_when_full and self._pipe_full:
            return False
        waiting.skip(len(batch))
        self._count(self.dropped, flags_sent, self.metrics.dropped)
        return True

    def _send_parts(
        self,
        rid: bytes,
        model: int,
        rows: NDArray[np.float64],
        classes: list[int],
        probabilities: list[float],
        seq: int,
        flags: int,
        at: float,
    ) -> None:
        """A request of more rows than a message holds, in parts; counted once, as given or
        as dropped (the parts before a full pipe are handled, the rest are not)."""
        per_part = rows_per_part(len(rid))
        for start in range(0, len(rows), per_part):
            end = start + per_part
            part = Pending(
                rid,
                at,
                -1 if seq < 0 else seq + start,
                model,
                start,
                flags if end >= len(rows) else flags & ~LAST,
                rows[start:end],
                classes[start:end],
                probabilities[start:end],
            )
            if not self._write(answers_message([part]), [part]):
                self._count(self.dropped, [flags], self.metrics.dropped)
                return
        self._count(self.sent, [flags])

    def _write(self, message: bytes, batch: list[Pending]) -> bool:
        channel = self._channel
        if channel is None or not self._declare(channel, batch):
            return False
        return self._put(channel.data, message)

    def _put(self, fd: int, message: bytes) -> bool:
        """Write a message (at most PIPE_BUF bytes: all or nothing). False when the pipe is
        full (the process is behind) or gone; a closing feed waits for room until its
        deadline instead: what the queue holds may be more than the pipe does."""
        while True:
            try:
                os.write(fd, message)
                return True
            except BlockingIOError:
                left = self._patient_until - time.monotonic()
                if left <= 0:
                    self._pipe_full = True
                    return False
                bell = self._bell
                if bell is not None and bell.awaited:
                    bell.ring()  # the process may sleep until this loop idles: it cannot now
                select.select([], [fd], [], left)
            except OSError:  # the process died (BrokenPipeError)
                return False

    def _count(
        self, counts: dict[str, int], flags: list[int], metric: Counter | None = None
    ) -> None:
        """Count the requests of answers with these ``flags`` (their last parts) by queue."""
        ended = [f for f in flags if f & LAST]
        for queue, count in (
            ("shadow", sum(1 for f in ended if f & SHADOW)),
            ("predlog", len(ended) if self.logging else 0),
        ):
            if count:
                counts[queue] += count
                if metric is not None:
                    metric.labels(queue).inc(count)

    def _declare(self, channel: _Channel, batch: list[Pending]) -> bool:
        for model in {p.model for p in batch} - channel.declared:
            if not self._put(channel.data, self._model_messages[model]):
                return False
            channel.declared.add(model)
        return True

    def pending(self, queue: str) -> int:
        """Answers given and not yet handled (what a crash would cost the evidence)."""
        handled = self.totals.shadow_answers if queue == "shadow" else self.totals.log_answers
        buffered = sum(
            1
            for flags in self._buffer.waiting_flags()
            if (queue == "predlog" and self.logging) or (queue == "shadow" and flags & SHADOW)
        )
        return buffered + max(0, self.sent[queue] - self._settled[queue] - handled)

    # --- the challenger (the holder's reload thread) ---------------------------------------

    def use(self, ref: str | None, engine: Engine | None, pair: PairStats | None) -> None:
        """Score with ``engine`` from now on (None: shadow nothing), counting ``pair``'s
        agreement (the counts so far are kept when the pair is the one already counted)."""
        with self._control_lock:
            if pair is not None and self.pair is not None and self.pair.key == pair.key:
                pair = self.pair
            self.pair = pair
            current = self._challenger
            # The same challenger counting the same pair: nothing to tell (its counts move on).
            if (current.ref, current.engine, _key(current.pair)) == (ref, engine, _key(pair)):
                return
            self._challenger = Challenger(ref, engine, pair)
            channel = self._channel
            if channel is not None:
                self._tell(channel, self._challenger)

    @staticmethod
    def _tell(channel: _Channel, challenger: Challenger) -> None:
        data = memoryview(object_message(challenger))
        try:
            while data:
                data = data[os.write(channel.control, data) :]
        except OSError:
            pass  # it died: its successor is told when it starts

    # --- the process ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the shadow process (here, so that it is there for the next answer) and the
        thread that follows it. Raises OSError when it cannot be started."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._closing.clear()
            if self._bell is None:
                # Rung by this process's event loop when it goes idle (heartml.serve.giveway).
                self._bell = IdleBell.create()
                BellSelector.bell = self._bell
            with self._control_lock:
                self._channel = self._spawn()
            self._thread = threading.Thread(target=self._follow, name="heartml-shadow", daemon=True)
            self._thread.start()

    def _spawn(self) -> _Channel:
        data_r, data_w = os.pipe()
        control_r, control_w = os.pipe()
        totals_r, totals_w = os.pipe()
        _pipe_size(data_w, self.queue_size * _BYTES_PER_ANSWER)
        os.set_blocking(data_w, False)
        command = [
            sys.executable,
            "-m",
            "heartml.serve.shadow_process",
            "--data",
            str(data_r),
            "--control",
            str(control_r),
            "--totals",
            str(totals_w),
            "--parent",
            str(os.getpid()),
            "--log-level",
            self.log_level,
        ]
        passed = [data_r, control_r, totals_w]
        if self._bell is not None:
            command += ["--idle-flag", str(self._bell.flag_fd)]
            command += ["--idle-event", str(self._bell.event_fd)]
            passed += [self._bell.flag_fd, self._bell.event_fd]
        if self.log_dir is not None:
            command += [
                "--log-dir",
                str(self.log_dir),
                "--log-prefix",
                self.log_prefix,
                "--log-max-bytes",
                str(self.log_max_bytes),
            ]
        # Started with SIGTERM and SIGINT blocked (a thread's mask is inherited through exec):
        # a stop sent to the whole group or cgroup (killpg, systemd) while it still imports
        # would kill it with the answers it is about to be given; it ignores both once it runs
        # and ends when the server closes its pipe. Only this thread blocks them meanwhile.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(command, pass_fds=passed, stdin=subprocess.DEVNULL)
        except OSError:
            for fd in (data_r, data_w, control_r, control_w, totals_r, totals_w):
                os.close(fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in (data_r, control_r, totals_w):  # the process's ends: its own now
            os.close(fd)
        channel = _Channel(process, data_w, control_w, totals_r, time.monotonic())
        self.pid = process.pid
        self.totals = Totals()
        if self._challenger.ref is not None:
            self._challenger = replace(self._challenger, pair=self.pair)
            self._tell(channel, self._challenger)
        return channel

    def _follow(self) -> None:
        """Read the totals of each process in turn; restart one that dies."""
        young_deaths = 0  # in a row, each within STABLE_S of its start
        channel = self._channel
        while channel is not None:
            self._read_totals(channel)
            code = channel.process.wait()
            self._settle()
            if self._closing.is_set():
                return
            if time.monotonic() - channel.started >= STABLE_S:
                young_deaths = 0
            delay = min(RESTART_S * 2**young_deaths, MAX_RESTART_S)
            young_deaths += 1
            self.restarts += 1
            self.metrics.shadow_restarts.inc()
            logger.warning(
                "the shadow process %d ended (exit code %s); starting another in %.1f s",
                channel.process.pid,
                code,
                delay,
            )
            if self._closing.wait(delay):
                return
            channel = self._restart(channel)

    def _restart(self, dead: _Channel) -> _Channel | None:
        while not self._closing.is_set():
            with self._control_lock:
                try:
                    channel = self._spawn()
                except OSError as exc:
                    logger.warning("could not start a shadow process: %s", exc)
                    channel = None
                else:
                    self._channel = channel
            if channel is not None:
                # The loop may be writing to the old data pipe this instant: close it at the
                # next restart, the one before it now.
                for fd in self._retired:
                    os.close(fd)
                self._retired = [dead.data]
                os.close(dead.control)
                return channel
            if self._closing.wait(MAX_RESTART_S):
                break
        return None

    def _read_totals(self, channel: _Channel) -> None:
        reader = ObjectReader()
        try:
            while chunk := os.read(channel.totals, 1 << 16):
                received = [t for t in reader.feed(chunk) if isinstance(t, Totals)]
                if received:
                    self._apply(received[-1])
        except OSError as exc:
            logger.warning("could not read the shadow process's totals: %s", exc)
        finally:
            os.close(channel.totals)

    def _apply(self, totals: Totals) -> None:
        """Add what the process did since its last totals to the metrics."""
        seen, self.totals = self.totals, totals
        m = self.metrics
        m.shadow_predictions.inc(totals.shadow_rows - seen.shadow_rows)
        m.shadow_disagreements.inc(totals.disagreements - seen.disagreements)
        m.shadow_errors.inc(totals.errors - seen.errors)
        m.log_written.inc(totals.written - seen.written)
        before = seen.abs_diff_counts or (0,) * len(totals.abs_diff_counts)
        m.add_abs_diffs(
            [now - then for now, then in zip(totals.abs_diff_counts, before, strict=True)],
            totals.abs_diff_sum - seen.abs_diff_sum,
        )
        pair = totals.pair
        with self._control_lock:
            if pair is not None and self.pair is not None and pair.key == self.pair.key:
                self.pair = pair

    def _settle(self) -> None:
        """The process ended: what it was given is handled, or lost with it (counted)."""
        totals = self.totals
        for queue, handled in (
            ("shadow", totals.shadow_answers),
            ("predlog", totals.log_answers),
        ):
            lost = max(0, self.sent[queue] - self._settled[queue] - handled)
            if lost:
                self.dropped[queue] += lost
                self.metrics.dropped.labels(queue).inc(lost)
                logger.warning("%d answers lost with the shadow process (%s)", lost, queue)
            self._settled[queue] += handled + lost
        self.totals = Totals()

    def close(self, timeout: float) -> bool:
        """Hand over what is buffered, let the process handle everything and exit, within
        ``timeout``; False when it was still at work then (it goes on, and ends by itself)."""
        self._patient_until = time.monotonic() + timeout
        try:
            self._stop_waiting_for_room(asyncio.get_running_loop())
        except RuntimeError:  # not on the loop: it has stopped
            self._room_fd = None
        self.flush()
        self.report_drops()
        self._closing.set()
        channel, self._channel = self._channel, None
        thread = self._thread
        if channel is None or thread is None:
            self._close_bell()
            return True
        for fd in (channel.data, channel.control, *self._retired):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._retired = []
        thread.join(max(0.0, self._patient_until - time.monotonic()))
        self._close_bell()
        if thread.is_alive():
            logger.warning(
                "shadow process: %d answers not shadowed and %d not logged before the deadline",
                self.pending("shadow"),
                self.pending("predlog"),
            )
            return False
        self._thread = None
        return True

    def _close_bell(self) -> None:
        bell, self._bell = self._bell, None
        if bell is not None:
            if BellSelector.bell is bell:
                BellSelector.bell = None
            bell.close()


def _key(pair: PairStats | None) -> tuple[str, str, str] | None:
    return None if pair is None else pair.key
