"""How the live evidence keeps out of the answers' way: its work is done when the server idles.

The server: its event loop hands an answer over by appending it to a queue
(:mod:`heartml.serve.feed`); packing and writing them for the shadow process is *idle work*,
done by the loop's selector (:class:`BellSelector`, the selector of the loops
:func:`new_event_loop` makes) once the loop has waited ``IDLE_S`` with nothing to do, a piece
at a time while nothing becomes ready. A server busy with requests is back at its requests
within microseconds of each wait, so it never pays for the evidence: the answers wait (and
beyond their queue are dropped and counted).

The shadow process: ``SCHED_IDLE`` keeps it below its server in the common case (a server
that wakes up takes the CPU back at once). Not in every case: the kernel's fair scheduler
(EEVDF) still owes a runnable idle-policy thread its small share and hands it the CPU at a
tick even while the server is runnable; ``sched_yield`` does not give it back while the
thread is owed time. Measured with the kernel's scheduler events (the server at c=8 on one
CPU, the shadow with work to do): the server waited 0.2-1.4 ms that way 9-16 times a second,
and its p99 paid for it (1.2-1.4x). So the shadow process is not runnable while its server
is busy:

* before each piece of its work it asks :meth:`ServerWatch.waiting`: is the server's event
  loop (its main thread) runnable on the CPU this thread is running on? Then the server is
  waiting for us (two reads of ``/proc`` stat lines, a few microseconds);
* if so, it sleeps on an :class:`IdleBell` until the server's event loop is idle: the
  selector rings the bell then, when the shadow process has said it sleeps (a flag in shared
  memory: no system call otherwise). A ring that is missed costs a timeout, never an answer;
* with nothing to score it sleeps until the server writes, which it does only when idle.

Where ``/proc`` has no stat lines the process never gives way (``SCHED_IDLE`` alone); where
``memfd_create`` or ``eventfd`` are missing there is no bell, and it looks again every
``LINGER_S`` (:mod:`heartml.serve.shadow_process`) instead of waiting for a ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import select
import selectors
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from selectors import SelectorKey

logger = logging.getLogger(__name__)

# How long the event loop must have had nothing to do before the evidence's work is done:
# a server busy with requests (a new one within microseconds) never pays for it.
IDLE_S = 0.001
# /proc/<pid>/stat: "pid (comm) state ..."; after the comm, the state is field 3 and the CPU
# the task last ran on (for a runnable task: the CPU whose run queue it is on) field 39.
_CPU_FIELD = 39 - 3
_STAT_BYTES = 1024


def state_and_cpu(stat_line: bytes) -> tuple[str, int]:
    """The scheduler state letter and the CPU of a ``/proc/<pid>/stat`` line."""
    fields = stat_line[stat_line.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[_CPU_FIELD])


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class ServerWatch:
    """Looks at a server's main thread from the thread that may be in its way.

    Create and use it in the thread that asks: it reads that thread's own CPU."""

    def __init__(self, server_pid: int) -> None:
        self._server = _open(f"/proc/{server_pid}/stat")
        self._mine = _open("/proc/thread-self/stat") if self._server is not None else None

    def waiting(self) -> bool:
        """True when the server's main thread is runnable on this thread's CPU: runnable
        there and not running, since this thread is."""
        if self._server is None or self._mine is None:
            return False
        try:
            state, cpu = state_and_cpu(os.pread(self._server, _STAT_BYTES, 0))
            if state != "R":
                return False
            return cpu == state_and_cpu(os.pread(self._mine, _STAT_BYTES, 0))[1]
        except (OSError, ValueError, IndexError):  # the server is gone (ESRCH)
            return False

    def close(self) -> None:
        for fd in (self._server, self._mine):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._server = self._mine = None


class IdleBell:
    """A flag in shared memory (the shadow process is waiting) and an eventfd (the server's
    event loop has gone idle), made by the server and passed to each shadow process."""

    def __init__(self, flag_fd: int, event_fd: int) -> None:
        self.flag_fd, self.event_fd = flag_fd, event_fd
        self.flag = mmap.mmap(flag_fd, 1)  # 1: the shadow process sleeps until a ring

    @classmethod
    def create(cls) -> IdleBell | None:
        """A new bell, or None where the system has no memfd or eventfd."""
        try:
            flag_fd = os.memfd_create("heartml-idle-bell", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        try:
            os.ftruncate(flag_fd, 1)
            event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except (AttributeError, OSError):
            os.close(flag_fd)
            return None
        return cls(flag_fd, event_fd)

    # --- the server's side (its event loop) ----------------------------------------------

    @property
    def awaited(self) -> bool:
        """Whether the shadow process sleeps until the loop goes idle."""
        return bool(self.flag[0])

    def ring(self) -> None:
        """Wake the shadow process (the event loop is idle, or the process must stop)."""
        self.flag[0] = 0
        with contextlib.suppress(OSError):
            os.eventfd_write(self.event_fd, 1)

    # --- the shadow process's side -------------------------------------------------------

    def sleep(self, timeout_s: float) -> None:
        """Sleep until the server's event loop goes idle, or ``timeout_s``.

        Called when the server waits for this thread's CPU. A ring can still be missed (this
        thread preempted between that look and the flag going up, while the loop goes idle):
        that costs a wait until the loop's next idle moment or ``timeout_s``, never an
        answer."""
        self.flag[0] = 1
        with contextlib.suppress(OSError, ValueError):
            select.select([self.event_fd], [], [], timeout_s)
        self.flag[0] = 0
        self.clear()

    def clear(self) -> None:
        """Forget a ring (so that the next wait waits)."""
        with contextlib.suppress(OSError):  # BlockingIOError: it did not ring
            os.eventfd_read(self.event_fd)

    def close(self) -> None:
        self.flag.close()
        for fd in (self.flag_fd, self.event_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class BellSelector(selectors.DefaultSelector):
    """The selector of a :func:`new_event_loop` loop: before the loop waits for I/O with
    nothing ready, it runs the loop's idle work, a piece at a time while nothing becomes
    ready and no timer is due, then rings the process's bell if the shadow process sleeps on
    it."""

    # The process's: a server process (each uvicorn worker) has one event loop and one shadow
    # process; where a process builds several apps (tests), the latest started feed's.
    bell: IdleBell | None = None

    def __init__(self) -> None:
        super().__init__()
        # Callables run when the loop is idle, each doing one piece of its work and saying
        # whether more is left (then it is called again, else forgotten).
        self.idle_work: list[Callable[[], bool]] = []

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> BellSelector | None:
        """The selector of ``loop`` if :func:`new_event_loop` made it, else None."""
        return _SELECTORS.get(loop)

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        bell = BellSelector.bell
        awaited = bell is not None and bell.flag[0]
        if (self.idle_work or awaited) and (timeout is None or timeout > IDLE_S):
            # About to wait: first for IDLE_S only. Busy, the loop is back at once with the
            # next request (and the work waits; beyond its queue it is dropped); idle, the
            # work is done now, a piece at a time while nothing becomes ready.
            began = time.monotonic()
            ready: list[tuple[SelectorKey, int]] = super().select(IDLE_S)
            if ready:
                return ready
            while self.idle_work:
                self.idle_work = [work for work in self.idle_work if _run(work)]
                if self.idle_work and (ready := super().select(0)):
                    return ready
                if timeout is not None and time.monotonic() - began >= timeout:
                    return []  # a timer is due: the rest at the next idle moment
            if awaited and bell is not None:
                bell.ring()
            if timeout is not None:
                timeout -= time.monotonic() - began
                if timeout <= 0:
                    return []  # a timer is due
        result: list[tuple[SelectorKey, int]] = super().select(timeout)
        return result


def _run(work: Callable[[], bool]) -> bool:
    """One piece of idle work; whether it has more. Its failure is logged and ends it: it
    must never end the event loop, which calls the selector unguarded."""
    try:
        return work()
    except Exception:
        logger.exception("idle work %r failed; dropped", work)
        return False


_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BellSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Python's own event loop over a :class:`BellSelector` (uvicorn's ``loop`` setting)."""
    selector = BellSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop
