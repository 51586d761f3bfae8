"""One bounded queue and one worker thread: the shape of every job done off the request path.

A request hands its item over with :meth:`BackgroundQueue.offer`, which never waits: when the
queue is full the item is dropped and counted in ``heartml_background_dropped_total{queue}``,
so a slow challenger or a slow disk can cost evidence, never latency. The worker takes what
is queued in batches (one wake-up for many items). :meth:`BackgroundQueue.close` lets it finish
everything queued before it returns, within a deadline: how a clean shutdown loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from heartml.errors import one_line

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

# At most this many items per call of the handler: one ONNX call or one write for many.
BATCH = 1024
# After the first item of a batch, the worker waits this long for more. One wake-up, one ONNX
# call and one write per 50 ms instead of per request: the shadow and the log then take a small
# share of the CPU and of the GIL that the event loop needs (measured by bench/shadow.py).
LINGER_S = 0.05
_STOP = object()


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
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.dropped = 0
        self.handled = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"heartml-{self.name}", daemon=True
            )
            self._thread.start()

    def offer(self, item: Item) -> bool:
        """Queue ``item`` unless the queue is full (then drop and count it). Never blocks."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            self._on_drop(1)
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float) -> bool:
        """Handle everything queued so far, then stop; False when ``timeout`` ran out first."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        self._closing.set()  # no more lingering: write what is queued now
        while True:  # the stop marker must get in, even behind a full queue
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False
        thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is not _STOP:
                self._closing.wait(LINGER_S)
            batch: list[object] = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items: list[Item] = [item for item in batch if item is not _STOP]  # type: ignore[misc]
            if items:
                try:
                    self._handle(items)
                    self.handled += len(items)
                except Exception as exc:  # a failing handler must not end the thread
                    self.failures += 1
                    logger.warning("%s: %d items lost: %s", self.name, len(items), one_line(exc))
            if stop:
                self._drain_after_stop()
                return

    def _drain_after_stop(self) -> None:
        """Items offered while the stop marker was on its way: handle them too."""
        rest: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)  # type: ignore[arg-type]
        if rest:
            try:
                self._handle(rest)
                self.handled += len(rest)
            except Exception as exc:
                self.failures += 1
                logger.warning("%s: %d items lost: %s", self.name, len(rest), one_line(exc))
