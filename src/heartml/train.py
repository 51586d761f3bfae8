"""Train stage: fit every candidate, evaluate it, log and register it, tag the best one.

A thin orchestration. Fitting and selection are pure (:mod:`heartml.fit`), scoring and plots
are :mod:`heartml.evaluate`, the worker processes are :mod:`heartml.workers`, and MLflow is
only in :mod:`heartml.tracking`.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heartml.candidates import TrainingError
from heartml.convert import TrainingRows, convert_pipeline
from heartml.data import load_dataset
from heartml.evaluate import (
    feature_importance,
    plot_calibration,
    plot_confusion_matrix,
    plot_importance,
    plot_roc_curves,
    render_png,
    score_predictions,
)
from heartml.experiment import ExperimentConfig, load_experiment
from heartml.features import split_features_target
from heartml.fit import HeldOutSplit, fit_candidate, predict_held_out, rank_key, split_data
from heartml.tracking import (
    CandidateRecord,
    CandidateResult,
    git_commit,
    log_candidate,
    log_session_summary,
    open_store,
)
from heartml.workers import candidate_pool, collect_results, worker_context

if TYPE_CHECKING:
    import numpy as np

    from heartml.registry import PromotionResult
    from heartml.settings import Settings

__all__ = ["CandidateResult", "Progress", "TrainResult", "TrainingError", "train_candidates"]

logger = logging.getLogger(__name__)


# Called each time training moves on (a candidate fitted, one registered, the promotion
# attempted) with a line saying so and the session's number of steps. The CLI draws a progress
# bar from it. "fitted" events come from the worker pool's own thread, so the callback must be
# thread-safe (Rich's Progress is).
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class TrainResult:
    parent_run_id: str
    experiment_id: str
    candidates: tuple[CandidateResult, ...]
    best: CandidateResult
    promotion: PromotionResult | None
    promotion_warning: str | None


def prepare_candidate(
    name: str,
    params: dict[str, Any],
    config: ExperimentConfig,
    split: HeldOutSplit,
    probe_rows: np.ndarray,
) -> CandidateRecord:
    """Everything heavy about one candidate, done in the worker process that fits it:
    fit, score on the held-out rows, explain, draw, and convert to ONNX, checked on
    ``probe_rows`` (every row trained on; a disagreement fails the session)."""
    fitted = fit_candidate(name, params, config, split)
    probability = predict_held_out(fitted.model, split)
    kind, importance = feature_importance(
        fitted.model, split.x_test, split.y_test, config.split.seed
    )
    plots = {
        "roc_curve.png": plot_roc_curves(split.y_test, {name: probability}),
        "confusion_matrix.png": plot_confusion_matrix(split.y_test, probability),
        "calibration_curve.png": plot_calibration(split.y_test, probability),
        "feature_importance.png": plot_importance(kind, importance),
    }
    return CandidateRecord(
        name=name,
        params=params,
        model=fitted.model,
        probability=probability,
        metrics=score_predictions(split.y_test, probability, fitted.cv_scores),
        importance_kind=kind,
        importance=importance,
        plots={path: render_png(fig) for path, fig in plots.items()},
        onnx=convert_pipeline(
            fitted.model,
            probe_rows,
            TrainingRows(split.x_train.to_numpy(dtype="float64"), split.y_train),
        ),
    )


def prepare_candidate_pickled(
    name: str,
    params: dict[str, Any],
    config: ExperimentConfig,
    split: HeldOutSplit,
    probe_rows: np.ndarray,
) -> bytes:
    """``prepare_candidate``'s record, pickled in the worker.

    The pool unpickles a result in its own thread. A fitted pipeline's classes would then be
    imported there while the main thread imports MLflow and skops, which import scikit-learn
    too: two threads importing the same modules in opposite orders, and Python's import
    deadlock detection hands one of them a partially initialised module ("cannot import name
    'BaseLibSVM' from partially initialized module"). As bytes, the record is unpickled by the
    main thread, once the store is open.
    """
    return pickle.dumps(prepare_candidate(name, params, config, split, probe_rows))


def _on_fitted(name: str, report: Callable[[str], None]) -> Callable[[Future[Any]], None]:
    """A done-callback that reports a fitted candidate (it runs in the pool's own thread)."""

    def on_done(future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            report(f"fitted {name}")

    return on_done


def train_candidates(
    settings: Settings, *, promote: bool = True, progress: Progress | None = None
) -> TrainResult:
    """Run one training session: every candidate of the experiment, logged and registered.

    The best version is tagged ``best_model=true``; then, like the seed's training script,
    training attempts the promotion. A refused or failed promotion is reported in the result
    (``promotion_warning``) and never fails training: the pipeline's promote step decides.

    The candidates are prepared in worker processes (:mod:`heartml.workers`). As with any use
    of multiprocessing, a script that calls this must keep its top-level code under
    ``if __name__ == "__main__":`` (the ``heartml`` command, ``python -m heartml`` and pytest do).
    """
    from heartml import registry

    workers = worker_context()
    config = load_experiment(settings.experiment_config)
    dataset = load_dataset(settings, config.data.sites)
    features, target = split_features_target(dataset.frame)
    split = split_data(features, target, config)
    probe_rows = features.to_numpy(dtype="float64")

    steps = 2 * len(config.candidates) + int(promote)  # fit and register each, then promote

    def report(step: str) -> None:
        if progress is not None:
            progress(step, steps)

    # The candidates are prepared in worker processes while this one imports MLflow and opens
    # the store (and migrates a new database): both are seconds of Python work.
    started = time.perf_counter()
    with candidate_pool(len(config.candidates), workers) as pool:
        futures = []
        for name, params in config.candidates.items():
            future = pool.submit(prepare_candidate_pickled, name, params, config, split, probe_rows)
            future.add_done_callback(_on_fitted(name, report))
            futures.append(future)
        experiment_id = open_store(settings)
        prepared: list[CandidateRecord] = [pickle.loads(b) for b in collect_results(futures)]
    logger.info("fitted %d candidates in %.1f s", len(prepared), time.perf_counter() - started)
    best_name = max(prepared, key=lambda c: rank_key(c.name, c.metrics, config)).name

    import mlflow

    lineage = {
        "data_sha256": dataset.files.fingerprint,
        "data_sites": ",".join(config.data.sites),
        "git_commit": git_commit(),
        "config_hash": config.config_hash,
        "experiment_version": str(config.version),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="training-session", tags=lineage
    ) as parent:
        mlflow.log_params({"candidates": ",".join(config.candidates), "rows": len(features)})
        results = []
        for candidate in prepared:
            result = log_candidate(
                candidate, settings, config, split.x_train, lineage, experiment_id
            )
            report(f"registered {result.model_name} v{result.model_version}")
            results.append(result)
        log_session_summary(prepared, split.y_test, best_name)
        best = next(r for r in results if r.name == best_name)
        registry.tag_best_version(
            settings, best.model_name, best.model_version, best.metrics.roc_auc, best.name
        )
        for result in results:
            if result is not best:
                registry.tag_candidate_version(
                    settings,
                    result.model_name,
                    result.model_version,
                    result.metrics.roc_auc,
                    result.name,
                )
    # On an authenticated registry, the promoters may promote the models just created.
    for note in registry.share_with_promoters(settings, [r.model_name for r in results]):
        logger.warning(note)

    promotion, warning = None, None
    if promote:
        report("promoting the best version")
        try:
            promotion = registry.promote_best(
                settings, reason="training session " + parent.info.run_id
            )
            if promotion.refused:
                warning = promotion.message
        except registry.RegistryError as exc:
            warning = f"promotion did not complete: {exc} (run `heartml promote --auto`)"
        if warning:
            logger.warning(warning)
    return TrainResult(
        parent_run_id=parent.info.run_id,
        experiment_id=experiment_id,
        candidates=tuple(results),
        best=best,
        promotion=promotion,
        promotion_warning=warning,
    )
