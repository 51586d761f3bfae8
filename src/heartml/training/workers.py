"""The worker processes that fit, score, draw and convert the candidates, one per core.

Fitting a candidate on 300 rows is mostly scikit-learn's Python overhead, and drawing its
plots is all Python, so threads would queue on the GIL. Processes fit two candidates at once
while the main process imports MLflow and opens the store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from heartml.lifeline import exit_with, stop_pool
from heartml.training.candidates import TrainingError
from heartml.training.experiment import CANDIDATE_ESTIMATORS

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

T = TypeVar("T")

# What every worker needs, imported once by the fork server.
WORKER_PRELOAD = [
    "heartml.training.train",
    "pandas",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.preprocessing",
    "sklearn.model_selection",
    "sklearn.metrics",
    "sklearn.calibration",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "skl2onnx",
    "onnxruntime",
    "threadpoolctl",
]


def worker_context() -> BaseContext:
    """How the candidate workers start: forked by a fork server, started early.

    Not plain ``fork``: by the time training forks, this process may run native threads
    (OpenMP's pool, once scikit-learn used it, deadlocks a forked child) or Python ones (a
    caller's). The fork server is a fresh single-threaded interpreter that imports pandas,
    scikit-learn, matplotlib and the candidates' estimators once; every worker it forks
    inherits them. ``spawn`` where there is no fork server.
    """
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    estimators = sorted({module for module, _ in CANDIDATE_ESTIMATORS.values()})
    context.set_forkserver_preload([*WORKER_PRELOAD, *estimators])
    # Starts the server now (a no-op once it runs), so that it imports while this process
    # loads the data and imports MLflow.
    multiprocessing.forkserver.ensure_running()
    return context


def start_worker(session_pid: int) -> None:
    """Run in each worker as it starts: follow the session's process, leave Ctrl-C to it, and
    run one native thread (:func:`limit_native_threads`)."""
    exit_with(session_pid, name="exit-with-session")
    # Ctrl-C in a terminal reaches the whole process group: the session stops its workers
    # itself, and a worker interrupted mid-task would print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_native_threads()


def limit_native_threads() -> None:
    """One thread for OpenMP and BLAS.

    There is one worker per core already; scikit-learn's OpenMP loops (nearest neighbours'
    distances, forests' predictions) would start a thread per core in each worker, and on two
    busy cores those threads spin waiting for one another: measured, half of the CPU time of
    a cross-validation went to them. Parameter validation is skipped too: every candidate's
    hyper-parameters are validated once, explicitly, when it is built
    (:func:`heartml.training.candidates.build_candidate`), and the checks repeated on every fit
    of every fold and tree cost a tenth of the time.
    """
    import sklearn
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    sklearn.set_config(skip_parameter_validation=True)


@contextmanager
def candidate_pool(
    candidates: int, context: BaseContext | None = None
) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for the candidates, one per core (at most two: the machines have two)."""
    size = max(1, min(2, candidates, os.cpu_count() or 1))
    pool = ProcessPoolExecutor(
        max_workers=size,
        mp_context=context or worker_context(),
        initializer=start_worker,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
        pool.shutdown(wait=True)  # here: a signal while the idle workers stop stops them too
    except BaseException:
        # Nobody will log the candidates still queued or running: stop them now rather than
        # keep the user waiting for fits whose results are thrown away.
        stop_pool(pool)
        raise


def collect_results(futures: list[Future[T]]) -> list[T]:
    """The results in submission order; a worker that died becomes a TrainingError."""
    try:
        return [future.result() for future in futures]
    except BrokenProcessPool as exc:
        raise TrainingError(f"a training worker process died ({exc})") from exc
