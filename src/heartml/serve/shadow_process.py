"""The shadow process: scores the challenger on the server's answers and writes the prediction log.

Each server process (each uvicorn worker) starts one (:mod:`heartml.serve.feed`) when it has a
challenger to shadow or a log to write. Its work then never runs in the server's interpreter,
so it cannot hold the GIL the event loop needs; and it keeps off the server's CPU while the
server needs it (:mod:`heartml.serve.giveway`): its scoring thread runs under ``SCHED_IDLE``,
looks before each piece of work (``PIECE_ROWS`` rows) whether the server waits for its CPU,
and if so sleeps until the server's event loop goes idle. When the CPU stays saturated it
falls behind, and the server drops and counts instead of waiting.

A new challenger comes on a control pipe of its own, read by a thread at normal priority and
loaded (its ONNX session built) by the scoring thread. The server writes it whole before it
flags any answer for it, and each step reads the control pipe after the answers: no flagged
answer is handled before its challenger is in place.

The server writes its answers (:mod:`heartml.serve.frames`) when its event loop is idle; the
scoring thread wakes up then (or every ``LINGER_S`` where there is no eventfd), reads what is
there, scores the SHADOW rows with the challenger, counts agreement, writes the log records
(with the challenger's probability for the shadowed rows), and sends its running totals back
for the server's metrics and ``/model`` (at most every ``REPORT_S``). The end of its input
(the server closed the pipe: a clean shutdown, or the server died) ends it once everything
read is handled, the log is flushed and the final totals are sent. SIGTERM and SIGINT are
ignored: only its server decides when it ends, after the drain. A watchdog ends it, too, if
its server is gone and the input did not close (another process holding the pipe).

    python -m heartml.serve.shadow_process --data FD --control FD --totals FD --parent PID \\
        [--idle-flag FD --idle-event FD] [--log-dir DIR --log-prefix PREFIX --log-max-bytes N]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heartml.errors import one_line
from heartml.lifeline import exit_with
from heartml.serve.frames import (
    ABS_DIFF_BUCKETS,
    ANSWERS,
    LAST,
    MODEL,
    SHADOW,
    STOP_SIGNALS,
    AnswerBatch,
    Challenger,
    MessageReader,
    ModelInfo,
    ObjectReader,
    PairStats,
    Totals,
    merge,
    object_message,
    read_answers,
    read_model,
)
from heartml.serve.giveway import IdleBell, ServerWatch
from heartml.serve.predlog import Answered, PredictionLog

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

logger = logging.getLogger("heartml.serve.shadow_process")

# Without the server's bell (no eventfd): how often the process looks at its pipe.
LINGER_S = 0.05
# How often, at most, the running totals go back to the server: each wakes a thread of the
# server's that takes the interpreter from the event loop; the metrics are scraped every few
# seconds, not every step.
REPORT_S = 1.0
# Rows of answers handled between two looks at the server (ServerWatch). A piece begun in an
# idle moment and interrupted by the server's wakeup is finished when the scheduler next hands
# this thread the CPU, maybe at a tick while the server is runnable: the server waits for the
# rest. With the caches cold the gradient boosting challenger took (p50/p90) 370/1,000 us for
# 64 rows, 170/350 us for 16; perf over 4 s at c=8: the longest such wait 1,074 us at 64 rows,
# 220 us at 16, and the shadow bench's median p99 ratio 1.08-1.10x, then 1.00-1.04x.
PIECE_ROWS = 16
# The longest it sleeps for its server to go idle or to write: a ring missed (a server whose
# event loop is not heartml's) costs this much delay, not an answer.
IDLE_WAIT_S = 1.0
# At most this many rows per call of the challenger.
BATCH = 1024
# Read at most this much per step (about 380 one-row answers): what it reads, it copies.
READ_BYTES = 1 << 16
# Once its server is gone, how long it may still take to handle what it read.
ORPHAN_GRACE_S = 3.0
ABS_DIFF_BOUNDS = np.array((*ABS_DIFF_BUCKETS, np.inf))


def bucket_counts(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """How many of ``values`` fall in each histogram bucket (the first upper bound >= value,
    as prometheus_client's ``observe`` finds it)."""
    found = np.searchsorted(ABS_DIFF_BOUNDS, values, side="left")
    return np.bincount(found, minlength=len(ABS_DIFF_BOUNDS)).astype(np.int64)


def lower_priority() -> str:
    """Run below the server: SCHED_IDLE where the kernel has it, else 19 nicer. Says which."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
    with contextlib.suppress(OSError):
        os.nice(19)
        return "nice 19"
    return "unchanged"


class ShadowWorker:
    """The shadow's scoring and the log's writing, over the answers the server sent."""

    def __init__(self, log: PredictionLog | None) -> None:
        self.log = log
        self.models: dict[int, ModelInfo] = {}
        self.challenger = Challenger(None, None, None)
        self.pair: PairStats | None = None
        self.shadow_rows = 0
        self.disagreements = 0
        self.abs_diff_counts = np.zeros(len(ABS_DIFF_BOUNDS), dtype=np.int64)
        self.abs_diff_sum = 0.0
        self.errors = 0
        self.shadow_answers = 0
        self.log_answers = 0
        self.last_error: str | None = None

    def use(self, challenger: Challenger) -> None:
        self.challenger = challenger
        given = challenger.pair
        # The counts of the pair being counted are this process's: the server's copy may be
        # behind (it has not read the latest totals yet). A new process takes the server's.
        if given is None or self.pair is None or given.key != self.pair.key:
            self.pair = given
        if challenger.ref is not None:
            logger.info("shadowing %s", challenger.ref)

    def declare(self, model_id: int, info: ModelInfo) -> None:
        self.models[model_id] = info

    def handle(self, batch: AnswerBatch) -> None:
        """Score, count and log the answers of ``batch``."""
        n = len(batch.rows)
        row_flags = np.repeat(batch.flags, batch.counts)
        row_model = np.repeat(batch.model, batch.counts)
        wanted = (row_flags & SHADOW) != 0
        theirs = self._score(batch, wanted, row_model) if wanted.any() else None
        last = (batch.flags & LAST) != 0
        self.shadow_answers += int(((batch.flags & SHADOW) != 0)[last].sum())
        if self.log is None:
            return
        self.log_answers += int(last.sum())
        self._write(batch, theirs, n)

    def _score(
        self, batch: AnswerBatch, wanted: NDArray[np.bool_], row_model: NDArray[np.uint32]
    ) -> NDArray[np.float64] | None:
        """The challenger's P(disease) for every row (NaN: not scored); None: none scored."""
        challenger = self.challenger
        if challenger.engine is None:
            return None
        rows = batch.rows[wanted]
        try:
            proba = np.concatenate(
                [
                    np.asarray(challenger.engine.predict_proba(rows[i : i + BATCH]), np.float64)
                    for i in range(0, len(rows), BATCH)
                ]
            )
        except Exception as exc:
            self.errors += 1
            self.last_error = f"challenger {challenger.ref} failed: {one_line(exc)}"
            logger.warning(self.last_error)
            return None
        mine = proba[:, 1]
        their_class = (proba[:, 1] > proba[:, 0]).astype(np.int64)  # ties to 0, as the champion
        ours = batch.probabilities[wanted]
        diff = np.abs(ours - mine)
        disagree = their_class != batch.classes[wanted]
        self.shadow_rows += len(rows)
        self.disagreements += int(disagree.sum())
        self.abs_diff_counts += bucket_counts(diff)
        self.abs_diff_sum += float(diff.sum())
        pair = self.pair
        if pair is not None and pair.challenger == challenger.ref:
            # Only the answers of the pair's champion count towards its agreement.
            ids = [i for i, m in self.models.items() if f"{m.name}/{m.version}" == pair.champion]
            answered = np.isin(row_model[wanted], ids)
            self.pair = PairStats(
                pair.champion,
                pair.challenger,
                pair.since,
                pair.rows + int(answered.sum()),
                pair.disagreements + int((disagree & answered).sum()),
                pair.abs_diff_sum + float(diff[answered].sum()),
            )
        theirs = np.full(len(batch.rows), np.nan)
        theirs[wanted] = mine
        return theirs

    def _write(self, batch: AnswerBatch, theirs: NDArray[np.float64] | None, n: int) -> None:
        assert self.log is not None
        probabilities = batch.probabilities.tolist()
        classes = batch.classes.tolist()
        shadowed = None if theirs is None else theirs.tolist()
        name = self.challenger.ref
        answers = []
        start = 0
        for k, count in enumerate(batch.counts.tolist()):
            end = start + count
            model = self.models.get(int(batch.model[k]))
            if model is None:  # never: a MODEL message precedes its first answer
                logger.warning("an answer of an undeclared model: not logged")
                start = end
                continue
            flags = int(batch.flags[k])
            scored = shadowed is not None and flags & SHADOW
            answers.append(
                Answered(
                    request_id=batch.request_ids[k],
                    time=float(batch.time[k]),
                    model_name=model.name,
                    model_version=model.version,
                    rows=batch.rows[start:end],
                    classes=classes[start:end],
                    probabilities=probabilities[start:end],
                    impute_values=model.impute_values,
                    shadow_model=name if scored else None,
                    shadow_probabilities=shadowed[start:end] if scored else None,  # type: ignore[index]
                    first_seq=int(batch.seq[k]),
                    first_row=int(batch.first_row[k]),
                )
            )
            start = end
        assert start == n
        try:
            self.log.write(answers)
        except OSError as exc:
            self.last_error = f"could not write the prediction log: {one_line(exc)}"
            logger.warning(self.last_error)

    def totals(self, *, final: bool = False) -> Totals:
        return Totals(
            shadow_rows=self.shadow_rows,
            disagreements=self.disagreements,
            abs_diff_counts=tuple(self.abs_diff_counts.tolist()),
            abs_diff_sum=self.abs_diff_sum,
            errors=self.errors,
            written=0 if self.log is None else self.log.written,
            shadow_answers=self.shadow_answers,
            log_answers=self.log_answers,
            pair=self.pair,
            last_error=self.last_error,
            final=final,
        )


def _read_available(fd: int) -> tuple[bytes, bool]:
    """What the pipe holds now, and whether its writers are all gone (end of input)."""
    chunks: list[bytes] = []
    size = 0
    while size < READ_BYTES:
        try:
            chunk = os.read(fd, READ_BYTES - size)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


class Pipes:
    """The process's ends of its three pipes, and what it has read and sent on them."""

    def __init__(self, worker: ShadowWorker, data: int, control: int, totals: int) -> None:
        self.worker = worker
        self.data, self.control, self.totals = data, control, totals
        os.set_blocking(data, False)
        os.set_blocking(control, False)
        os.set_blocking(totals, False)
        self.messages = MessageReader()
        self.objects = ObjectReader()
        self.sent: Totals | None = None
        self.sent_at = -REPORT_S
        self.challenger: bytes | None = None  # the latest received, pickled, not yet in use
        self.control_lock = threading.Lock()
        self.control_closed = False
        self.stopping = threading.Event()
        # Messages read and not yet handled; whether the last read stopped at READ_BYTES (the
        # pipe may hold more) and whether the server has closed the pipe.
        self.backlog: deque[tuple[int, memoryview]] = deque()
        self.more = False
        self.ended = False

    def read_control(self) -> None:
        """Receive challengers until the server closes the pipe. This thread keeps the
        process's normal priority (a new challenger is taken in while the scoring waits);
        the scoring thread loads it, below the server."""
        while not self.control_closed:
            select.select([self.control], [], [])
            self._drain_control()

    def _drain_control(self) -> None:
        """Decode whatever the control pipe holds now (either thread; one at a time)."""
        with self.control_lock:
            while not self.control_closed:
                try:
                    chunk = os.read(self.control, 1 << 16)
                except BlockingIOError:
                    return
                if not chunk:
                    self.control_closed = True
                    return
                pickles = self.objects.feed_pickles(chunk)
                if pickles:  # only challengers come this way: the last one counts
                    self.challenger = pickles[-1]

    def step(self, give_way: Callable[[], bool] | None = None) -> bool:
        """Handle what the server has written so far, a piece at a time; True at the end of
        its input. Before each piece ``give_way`` waits while the server needs the CPU; when
        it returns False (told to stop meanwhile) the rest is left for the next step."""
        if not self.backlog:
            received, self.ended = _read_available(self.data)
            self.more = len(received) >= READ_BYTES
            # The server writes a challenger whole before it flags any answer for it: once
            # these answers are read, what the control pipe still holds is read too, so that
            # no flagged answer meets the challenger before it.
            self._drain_control()
            with self.control_lock:  # the control thread may be setting the next one
                pickled, self.challenger = self.challenger, None
            if pickled is not None:
                self._load(pickled)
            self.backlog.extend(self.messages.feed(received))
        while self.backlog:
            if give_way is not None and not give_way():
                return False
            self._handle_piece()
        self.report(final=self.ended)
        return self.ended

    def _load(self, pickled: bytes) -> None:
        """Take a challenger in (here, below the server: it builds its ONNX session). One
        that cannot be loaded is an error of the shadow's, counted; the one before goes on."""
        try:
            challenger = pickle.loads(pickled)
        except Exception as exc:
            self.worker.errors += 1
            self.worker.last_error = f"could not load the challenger: {one_line(exc)}"
            logger.warning(self.worker.last_error)
            return
        if isinstance(challenger, Challenger):
            self.worker.use(challenger)

    def _handle_piece(self) -> None:
        """Handle the backlog's next messages, up to PIECE_ROWS rows of answers."""
        batches: list[AnswerBatch] = []
        rows = 0
        while self.backlog and rows < PIECE_ROWS:
            kind, message = self.backlog.popleft()
            if kind == MODEL:
                self.worker.declare(*read_model(message))
            elif kind == ANSWERS:
                batches.append(read_answers(message))
                rows += len(batches[-1].rows)
        if batches:
            self.worker.handle(merge(batches))

    def report(self, *, final: bool) -> None:
        if not final and time.monotonic() - self.sent_at < REPORT_S:
            return
        current = self.worker.totals(final=final)
        if current == self.sent:
            return
        try:
            if final:
                os.set_blocking(self.totals, True)  # the last word must get through
            os.write(self.totals, object_message(current))
            self.sent, self.sent_at = current, time.monotonic()
        except BlockingIOError:
            pass  # the server reads them later; the next totals include these
        except BrokenPipeError:
            pass  # the server is gone

    def score(self, server_pid: int, bell: IdleBell | None) -> None:
        """The scoring thread: below the server, a step each time the server writes (at once
        while the pipe holds more) until told to stop; out of the server's way before each
        piece."""
        lower_priority()
        watch = ServerWatch(server_pid)

        def give_way() -> bool:
            """Not runnable while the server waits for this CPU (:mod:`heartml.serve.giveway`);
            False when told to stop meanwhile."""
            while watch.waiting():
                if bell is None:
                    self.stopping.wait(LINGER_S)
                else:
                    bell.sleep(IDLE_WAIT_S)  # rung when the server idles, or stops us
                if self.stopping.is_set():
                    return False
            return True

        try:
            while not self.stopping.is_set():
                if self.step(give_way):
                    return
                if not self.more:
                    self.wait_for_answers(bell)
        except Exception:
            # A process that no longer scores must not linger: its server restarts it (and
            # counts it), and counts what it held as dropped.
            logger.exception("the scoring thread failed")
            os._exit(1)
        finally:
            watch.close()

    def wait_for_answers(self, bell: IdleBell | None) -> None:
        """Until the server writes again (it does when its event loop is idle), rings the bell
        (to stop this thread) or the totals are due; a timed look without a bell."""
        if bell is None:
            self.stopping.wait(LINGER_S)
            return
        timeout = IDLE_WAIT_S
        if self.worker.totals() != self.sent:  # progress the server has not heard of yet
            timeout = min(timeout, max(0.0, REPORT_S - (time.monotonic() - self.sent_at)))
        with contextlib.suppress(OSError, ValueError):
            select.select([self.data, bell.event_fd], [], [], timeout)
        bell.clear()


def serve(
    worker: ShadowWorker,
    data: int,
    control: int,
    totals: int,
    server_pid: int,
    bell: IdleBell | None = None,
) -> None:
    """Handle what the server sends until it closes its pipes.

    The scoring runs in a thread below the server's priority; this thread keeps the
    process's own and waits on the control pipe. When the server closes it (a clean
    shutdown, or the server died), the rest (the answers still in the pipe, the log's
    flush) is done here, at normal priority: a busy CPU would otherwise hold the drain back.
    """
    pipes = Pipes(worker, data, control, totals)
    scoring = threading.Thread(
        target=pipes.score, args=(server_pid, bell), name="shadow-scoring", daemon=True
    )
    scoring.start()
    pipes.read_control()
    pipes.stopping.set()
    if bell is not None:
        bell.ring()  # it may sleep until the server idles
    scoring.join()
    os.set_blocking(data, True)  # the server has closed its end: reads end at EOF
    while not pipes.step():
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heartml.serve.shadow_process")
    parser.add_argument("--data", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--totals", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--idle-flag", type=int, help="the server's IdleBell: its shared flag")
    parser.add_argument("--idle-event", type=int, help="and its eventfd")
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--log-prefix", default="")
    parser.add_argument("--log-max-bytes", type=int, default=64 << 20)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # The server started this process with them blocked; one already pending is now discarded.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    level = logging.getLevelName(args.log_level.upper())
    logging.basicConfig(
        stream=sys.stderr,
        level=level if isinstance(level, int) else logging.INFO,  # uvicorn's "trace": INFO
        format=f"%(levelname)s:     shadow process {os.getpid()}: %(message)s",
    )
    # Any end of the server ends this process, after a grace for handling what was read.
    exit_with(args.parent, grace_s=ORPHAN_GRACE_S, name="exit-with-server")
    log = None
    if args.log_dir is not None:
        log = PredictionLog(args.log_dir, args.log_max_bytes, args.log_prefix)
        log.start()
    worker = ShadowWorker(log)
    bell = None
    if args.idle_flag is not None and args.idle_event is not None:
        bell = IdleBell(args.idle_flag, args.idle_event)
    logger.info("started for server %d", args.parent)
    try:
        serve(worker, args.data, args.control, args.totals, args.parent, bell)
    finally:
        if log is not None:
            log.close()
        if bell is not None:
            bell.close()
    logger.info(
        "done: %d rows shadowed, %d records written",
        worker.shadow_rows,
        0 if log is None else log.written,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
