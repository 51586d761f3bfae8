"""The live evidence out of the answers' way: the server's idle work, its bell, and how the
shadow process sees that its server waits for the CPU. Real processes, a real event loop,
the real kernel's /proc."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from conftest import wait_until
from heartml.data.schema import synthetic_rows
from heartml.serve.evidence import FLUSH_TIMEOUT_S
from heartml.serve.feed import AnswerQueue, ShadowFeed
from heartml.serve.frames import LAST, SHADOW
from heartml.serve.giveway import (
    IDLE_S,
    BellSelector,
    IdleBell,
    ServerWatch,
    new_event_loop,
    state_and_cpu,
)
from heartml.serve.livemetrics import LiveMetrics

ROW = np.array(synthetic_rows(1, seed=3, missing=0.0))


def test_a_stat_line_gives_the_state_and_the_cpu() -> None:
    state, cpu = state_and_cpu(Path(f"/proc/{os.getpid()}/stat").read_bytes())
    assert state == "R"  # this very thread, reading it
    assert cpu in os.sched_getaffinity(0)
    fields = " ".join(str(n) for n in range(4, 53))
    odd = f"42 (a) (b c) S {fields}".encode()  # a command name may hold ") ("
    assert state_and_cpu(odd) == ("S", 39)


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """This thread on ``cpu`` only, for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_the_watch_sees_a_server_waiting_for_this_cpu_and_no_other() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpus[0]})
        with pinned(cpus[0]):
            watch = ServerWatch(busy.pid)
            try:
                # Runnable on the CPU this thread runs on: it waits for us.
                wait_until(watch.waiting, 5, "the busy process seen waiting")
                os.kill(busy.pid, signal.SIGSTOP)
                wait_until(lambda: not watch.waiting(), 5, "stopped: waits for nobody")
                os.kill(busy.pid, signal.SIGCONT)
                wait_until(watch.waiting, 5, "running again: waiting")
                if len(cpus) > 1:  # running on a CPU of its own: not in our way
                    os.sched_setaffinity(busy.pid, {cpus[1]})
                    wait_until(lambda: not watch.waiting(), 5, "on a CPU of its own")
                    assert not any(watch.waiting() for _ in range(100))
            finally:
                watch.close()
        assert not watch.waiting()  # closed: never waits
    finally:
        busy.kill()
        busy.wait()
    gone = ServerWatch(busy.pid)
    assert not gone.waiting()
    gone.close()


def test_the_bell_wakes_a_sleeper_at_once_and_only_one_that_sleeps() -> None:
    bell = IdleBell.create()
    assert bell is not None
    try:
        assert not bell.awaited
        began = time.monotonic()
        bell.sleep(0.05)  # nobody rings: the timeout
        assert 0.04 < time.monotonic() - began < 1.0
        slept: list[float] = []

        def sleeper() -> None:
            began = time.monotonic()
            bell.sleep(30)
            slept.append(time.monotonic() - began)

        thread = threading.Thread(target=sleeper)
        thread.start()
        wait_until(lambda: bell.awaited, 5, "the sleeper's flag")
        bell.ring()
        thread.join(10)
        assert slept and slept[0] < 5
        assert not bell.awaited
    finally:
        bell.close()


def test_the_loop_does_its_idle_work_only_once_idle() -> None:
    loop = new_event_loop()
    plain = asyncio.new_event_loop()
    assert BellSelector.of(plain) is None  # not one of ours
    plain.close()
    selector = BellSelector.of(loop)
    assert selector is not None
    pieces: list[float] = []

    def work() -> bool:  # three pieces, each in an idle moment
        pieces.append(time.monotonic())
        return len(pieces) < 3

    async def main() -> float:
        selector.idle_work.append(work)
        until = time.monotonic() + 0.2
        while time.monotonic() < until:  # busy: a callback always ready
            await asyncio.sleep(0)
        assert pieces == []
        busy_until = time.monotonic()
        await asyncio.sleep(0.2)  # idle
        return busy_until

    try:
        busy_until = loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(pieces) == 3 and selector.idle_work == []
    assert pieces[0] - busy_until >= IDLE_S * 0.9  # only after the loop waited IDLE_S


def test_waiting_answers_are_columns_the_collector_never_walks() -> None:
    queue = AnswerQueue(2003)
    rows = [np.array(synthetic_rows(k, seed=k, missing=0.0)) for k in (1, 3)]
    gc.disable()
    try:
        before = gc.get_count()[0]
        for i in range(2000):
            assert queue.add(f"r{i}", 1.5, i, 0, SHADOW | LAST, rows[0], [1], [0.75])
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert grown < 100, grown  # as tuples or lists, one or more per answer
    assert queue.add("many", 2.0, -1, 1, LAST, rows[1], [0, 1, 1], [0.1, 0.6, 0.9])
    assert len(queue) == 2001  # 2003 rows: full
    assert not queue.add("one too many", 2.0, -1, 1, LAST, rows[0], [0], [0.1])
    assert queue.entry(0) == ("r0", 1.5, 0, 0, SHADOW | LAST, rows[0], [1], [0.75])
    queue.skip(2000)
    assert queue.waiting_flags() == [LAST]
    assert queue.entry(0)[5:] == (rows[1], [0, 1, 1], [0.1, 0.6, 0.9])
    assert queue.add("room again", 2.0, -1, 1, LAST, rows[0], [0], [0.1])
    queue.skip(2)
    assert len(queue) == 0 and queue.ids == []  # emptied: its columns start again
    assert AnswerQueue(5).add("alone", 0.0, -1, 0, LAST, rows[1], [0] * 3, [0.1] * 3)
    big = AnswerQueue(1)  # a request of more rows than the limit, into an empty queue
    assert big.add("batch", 0.0, -1, 0, LAST, rows[1], [0] * 3, [0.1] * 3)


def test_a_queue_that_never_empties_lets_go_of_what_was_taken() -> None:
    queue = AnswerQueue(10_000)
    for i in range(50_000):
        queue.add(f"r{i}", 0.0, i, 0, LAST, ROW, [0], [0.5])
        if i % 10 == 9:
            queue.skip(9)  # one answer more each time than is handed over
    assert len(queue) == 5_000
    assert len(queue.ids) < 2 * 5_000 + 1_024  # held: what waits, not all that passed
    assert queue.entry(0)[0] == "r45000"


REGISTRY = CollectorRegistry()
METRICS = LiveMetrics(REGISTRY)


@pytest.fixture
def feed() -> Iterator[ShadowFeed]:
    started = ShadowFeed(METRICS, None, 1 << 20, 50, "warning")
    started.start()
    yield started
    started.close(10)


def test_a_busy_loop_only_appends_and_drops_beyond_its_queue(feed: ShadowFeed) -> None:
    """Answers given while the loop is busy wait, unpacked; beyond ``queue_size`` they are
    dropped and counted; once the loop idles they are written and the shadow process
    handles them."""
    model = feed.model_id("m", "heart-disease-test", 1, None)
    counted = {"queue": "shadow"}
    before = REGISTRY.get_sample_value("heartml_background_dropped_total", counted) or 0.0
    loop = new_event_loop()

    async def main() -> tuple[int, int]:
        for i in range(80):
            feed.record(f"r{i}", model, ROW, [1], [0.75], -1, True)
            await asyncio.sleep(0)  # busy: the next request is ready
        busy = (feed.sent["shadow"], feed.dropped["shadow"])
        await asyncio.sleep(0.2)
        return busy

    try:
        sent, dropped = loop.run_until_complete(main())
    finally:
        loop.close()
    assert (sent, dropped) == (0, 30)
    assert feed.sent["shadow"] == 50
    feed.report_drops()  # as /metrics does before it answers (the idle work did already)
    assert REGISTRY.get_sample_value("heartml_background_dropped_total", counted) == before + 30
    wait_until(lambda: feed.pending("shadow") == 0, 30, "every answer handled")


def test_a_clean_shutdown_hands_over_more_than_the_pipe_holds() -> None:
    """Answers queued while the loop was busy can outnumber what the pipe holds (1 MiB at
    most, ~6,000 one-row answers): closing waits for room instead of dropping them."""
    queued = 9_000
    feed = ShadowFeed(METRICS, None, 1 << 20, queued, "warning")
    feed.start()
    model = feed.model_id("m", "heart-disease-test", 1, None)
    loop = new_event_loop()

    async def busy() -> None:
        for i in range(queued):
            feed.record(f"r{i}", model, ROW, [1], [0.75], -1, True)
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(busy())
        assert feed.sent["shadow"] == 0  # never idle: all of them still queued
        assert feed.close(FLUSH_TIMEOUT_S)  # the app's own deadline
    finally:
        loop.close()
    assert feed.sent["shadow"] == queued
    # Counted as dropped: refused by a full pipe, or given and not handled by the process
    # when it ended (its last totals say how many it handled).
    assert feed.dropped["shadow"] == 0


def test_failing_idle_work_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    loop = new_event_loop()
    selector = BellSelector.of(loop)
    assert selector is not None
    done: list[str] = []

    def broken() -> bool:
        raise TypeError("a bug in some idle work")

    def next_one() -> bool:
        done.append("next")
        return False

    async def main() -> None:
        selector.idle_work += [broken, next_one]
        await asyncio.sleep(0.05)
        done.append("the loop went on")

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert done == ["next", "the loop went on"]
    assert selector.idle_work == []
    assert "a bug in some idle work" in caplog.text


def test_a_full_pipe_keeps_the_answers_until_it_has_room() -> None:
    """A shadow process behind (stopped here): the answers wait in the queue, none dropped
    while it has room; once the process reads again, the loop writes them by itself."""
    big = ShadowFeed(METRICS, None, 1 << 20, 20_000, "warning")
    big.start()
    model = big.model_id("m", "heart-disease-test", 1, None)
    assert big.pid is not None
    os.kill(big.pid, signal.SIGSTOP)
    loop = new_event_loop()
    given = 12_000  # twice what its 1 MiB pipe holds

    async def main() -> tuple[int, int]:
        for i in range(given):
            big.record(f"r{i}", model, ROW, [1], [0.75], -1, True)
            if i % 100 == 99:
                await asyncio.sleep(0.002)  # idle moments: the loop writes what fits
        await asyncio.sleep(0.2)
        stuck = (big.sent["shadow"], big.dropped["shadow"])
        assert big.pid is not None
        os.kill(big.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while big.sent["shadow"] < given and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # nothing records: the pipe's room wakes the loop
        return stuck

    try:
        sent, dropped = loop.run_until_complete(main())
        assert dropped == 0 and 0 < sent < given  # the pipe filled; the rest waited
        assert big.sent["shadow"] == given and big.dropped["shadow"] == 0
        assert big.close(FLUSH_TIMEOUT_S)
        assert big.dropped["shadow"] == 0
    finally:
        loop.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(big.pid, signal.SIGCONT)  # never left stopped
        big.close(FLUSH_TIMEOUT_S)
