"""Stopping a training session on SIGINT or SIGTERM without leaving a version half-registered.

SIGINT is Ctrl-C; SIGTERM is what Jenkins sends when a build is aborted and what Kubernetes
sends before it kills a pod. Either one raises :class:`Interrupted` in the main thread, at once,
except inside :meth:`SignalGuard.deferred`: a candidate's registration (its version, then the
card and predictions that name that version, then its tags) is finished first and the signal
acted on right after it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the session to stop. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way up mistakes it for a failure and carries on."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for
        SIGTERM."""
        return 128 + self.signum


class SignalGuard:
    """The session's handling of SIGINT and SIGTERM, installed by :func:`stop_on_signals`."""

    def __init__(self) -> None:
        self._deferring = 0
        self._pending: int | None = None
        self._stopping = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return  # already stopping: a second Ctrl-C must not break the clean-up
        if self._deferring:
            self._pending = self._pending or signum
            return
        self._stopping = True
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal that arrives inside is acted on when the block has completed."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending is not None and not self._stopping:
            self._stopping = True
            raise Interrupted(self._pending)


@contextmanager
def stop_on_signals() -> Iterator[SignalGuard]:
    """SIGINT and SIGTERM raise :class:`Interrupted` for the duration; the previous handlers
    are restored after. Signal handlers belong to the main thread: called from another one,
    the guard is returned uninstalled (a signal then does what it did before)."""
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {signum: signal.signal(signum, guard.handle) for signum in SIGNALS}
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class TrainingInterrupted(Interrupted):
    """A session stopped by a signal, and what it had registered by then."""

    def __init__(
        self,
        signum: int,
        registered: tuple[str, ...],
        not_registered: tuple[str, ...],
        *,
        promoting: bool = False,
    ) -> None:
        super().__init__(signum)
        self.registered = registered  # "<model>/<version>" of each complete version
        self.not_registered = not_registered  # the candidates' names
        self.promoting = promoting

    def __str__(self) -> str:
        parts = [f"registered {', '.join(self.registered) or 'nothing'}"]
        if self.not_registered:
            parts.append(f"not registered: {', '.join(self.not_registered)}")
        if self.promoting:
            parts.append("promotion not completed (`heartml promote --auto` completes it)")
        name = signal.Signals(self.signum).name
        return f"interrupted by {name}: {'; '.join(parts)} (no version left half-registered)"
