"""End a helper process when the process it serves has ended, even one killed outright.

A process killed by SIGKILL (the OOM killer, an evicted pod) runs no clean-up, so the
processes it started must notice by themselves: training's pool workers (whose parent is the
fork server, which outlives the session, so ``PR_SET_PDEATHSIG`` would not fire) and serving's
shadow process. A daemon thread waits on a pidfd of the process (readable the moment it exits;
no polling), or polls its pid twice a second where there is no pidfd, then ends this process
without clean-up: what it was doing has nowhere to go.
"""

from __future__ import annotations

import os
import select
import threading
import time


def wait_for_exit(pid: int) -> None:
    """Return once process ``pid`` has ended."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
    try:
        select.select([descriptor], [], [])
    finally:
        os.close(descriptor)


def exit_with(pid: int, *, grace_s: float = 0.0, name: str = "exit-with-parent") -> None:
    """End this process ``grace_s`` seconds after process ``pid`` has ended."""

    def wait_then_exit() -> None:
        wait_for_exit(pid)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=wait_then_exit, name=name, daemon=True).start()
