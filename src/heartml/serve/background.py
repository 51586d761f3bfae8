"""One bounded queue and one worker thread: the shape of every job done off the request path.

A request hands its item over with :meth:`BackgroundQueue.offer`, which never waits: when the
queue is full the item is dropped and counted in ``heartml_background_dropped_total{queue}``,
so a slow challenger or a slow disk can cost evidence, never latency. The worker takes what
is queued in batches (one wake-up for many items). :meth:`BackgroundQueue.close` lets it finish
everything queued before it returns, within a deadline: how a clean shutdown loses nothing.

The worker thread runs at a lower CPU priority than the server's other threads (``NICENESS``):
when the CPU is short, the kernel gives it to the event loop first, and the evidence waits,
or is dropped and counted. (On Linux a thread's nice value is its own.)

The queue is a :class:`collections.deque`, whose ``append`` and ``popleft`` are atomic, rather
than a :class:`queue.Queue`: an offer then takes no lock and wakes no thread, and the worker
looks at the queue every ``LINGER_S`` instead of being woken by each request. The bound is
checked before appending, without a lock: when two threads offer at once (the event loop and
the shadow, to the log's queue) it may be passed by what the other added meanwhile (a batch at
most), never waited on. Only counting a drop takes a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from heartml.errors import one_line

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

# At most this many items per call of the handler: one ONNX call or one write for many.
BATCH = 1024
# How often the worker looks at the queue. One wake-up, one ONNX call and one write per 50 ms
# instead of per request: the shadow and the log then take a small share of the CPU and of
# the GIL that the event loop needs (measured by bench/shadow.py).
LINGER_S = 0.05
# How much nicer than the server the worker is (bench/shadow.py, two runs each: with 0 the
# prediction log cost the answer's p99 1.39-1.45x, with 10 1.13-1.17x).
NICENESS = 10


def lower_priority(niceness: int = NICENESS) -> None:
    """Make the calling thread ``niceness`` nicer (at most 19); nothing where it cannot."""
    if not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))


class BackgroundQueue(Generic[Item]):
    """A bounded queue drained by one daemon thread that calls ``handle(batch)``."""

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Item]], None],
        maxsize: int,
        on_drop: Callable[[int], None],
    ) -> None:
        self.name = name
        self._handle = handle
        self._on_drop = on_drop
        self._maxsize = maxsize
        self._items: deque[Item] = deque()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._drop_lock = threading.Lock()
        self.dropped = 0
        self.handled = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is None:
            self._closing.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"heartml-{self.name}", daemon=True
            )
            self._thread.start()

    def offer(self, item: Item) -> bool:
        """Queue ``item`` unless the queue is full (then drop and count it). Never blocks."""
        if len(self._items) >= self._maxsize:
            self._count_drops(1)
            return False
        self._items.append(item)
        return True

    def offer_many(self, items: list[Item]) -> int:
        """Queue as many of ``items`` as fit, in order; drop and count the rest. Never blocks."""
        room = max(0, self._maxsize - len(self._items))
        if room < len(items):
            self._count_drops(len(items) - room)
            items = items[:room]
        self._items.extend(items)
        return len(items)

    def _count_drops(self, count: int) -> None:
        with self._drop_lock:
            self.dropped += count
        self._on_drop(count)

    @property
    def pending(self) -> int:
        return len(self._items)

    def close(self, timeout: float) -> bool:
        """Handle everything queued so far, then stop; False when ``timeout`` ran out first."""
        thread = self._thread
        if thread is None:
            return True
        self._closing.set()  # no more waiting: handle what is queued now
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        lower_priority()
        while True:
            closing = self._closing.wait(LINGER_S)
            self._handle_queued()
            if closing:
                self._handle_queued()  # offered while the last batch was handled
                return

    def _handle_queued(self) -> None:
        take = self._items.popleft
        while self._items:
            batch = [take() for _ in range(min(BATCH, len(self._items)))]
            try:
                self._handle(batch)
                self.handled += len(batch)
            except Exception as exc:  # a failing handler must not end the thread
                self.failures += 1
                logger.warning("%s: %d items lost: %s", self.name, len(batch), one_line(exc))
