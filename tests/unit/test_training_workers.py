"""How training starts its worker processes, and what happens when one dies."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from heartml.training.candidates import TrainingError
from heartml.training.workers import collect_results, worker_context


def test_workers_are_forked_by_a_fork_server_that_preloads_the_estimators() -> None:
    # Never forked from this process: it may run threads (OpenMP's pool once scikit-learn used
    # it, a caller's) whose locks a forked child would inherit held.
    context = worker_context()
    assert context.get_start_method() == "forkserver"
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        preloaded = pool.submit(loaded_modules, ["sklearn.ensemble", "sklearn.svm"]).result()
    assert preloaded == {"sklearn.ensemble": True, "sklearn.svm": True}


def loaded_modules(names: list[str]) -> dict[str, bool]:
    return {name: name in sys.modules for name in names}


def test_a_dead_worker_is_a_one_line_training_error() -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=worker_context()) as pool:
        futures = [pool.submit(os._exit, 3)]
        with pytest.raises(TrainingError, match="a training worker process died") as error:
            collect_results(futures)
    assert "\n" not in str(error.value)


def test_each_worker_runs_one_native_thread() -> None:
    # One worker per core already: OpenMP's own threads in each would spin against each other.
    from heartml.training.workers import candidate_pool

    with candidate_pool(2) as pool:
        limits = pool.submit(native_thread_limits).result()
    assert limits and set(limits) == {1}


def native_thread_limits() -> list[int]:
    from threadpoolctl import threadpool_info

    return [int(pool["num_threads"]) for pool in threadpool_info()]
