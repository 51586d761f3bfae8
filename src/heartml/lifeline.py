"""End a helper process when the process it serves has ended, even one killed outright.

A process killed by SIGKILL (the OOM killer, an evicted pod) runs no clean-up, so the
processes it started must notice by themselves: training's pool workers (whose parent is the
fork server, which outlives the session, so ``PR_SET_PDEATHSIG`` would not fire) and serving's
shadow process. A daemon thread waits on a pidfd of the process (readable the moment it exits;
no polling), or polls its pid twice a second where there is no pidfd, then ends this process
without clean-up: what it was doing has nowhere to go. The other way round, a command that
ends early stops its process pool's workers at once (:func:`stop_pool`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from concurrent.futures import ProcessPoolExecutor


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


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued, end its workers and wait for them (so that a
    command that returns, or exits, leaves none behind) and for the pool's own thread.

    (No public API before Python 3.14's terminate_workers(); ``_processes`` and
    ``_executor_manager_thread`` are the pool's own.) The thread is waited for because it
    closes a pipe that Python's exit handler for pools writes to without a lock: exiting
    while it closes printed "OSError: [Errno 9] Bad file descriptor" under a traceback.
    """
    running = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in running:
        if worker.is_alive():
            worker.terminate()
    for worker in running:
        worker.join(timeout=5)  # the fork server follows by itself once they are gone
    if manager is not None and manager.is_alive():
        manager.join(timeout=5)
