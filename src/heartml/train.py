"""Train stage: fit every candidate, evaluate it, log and register it, tag the best one."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.data import load_dataset
from heartml.evaluate import (
    Metrics,
    feature_importance,
    plot_calibration,
    plot_confusion_matrix,
    plot_importance,
    plot_roc_curves,
    render_png,
    score_predictions,
)
from heartml.experiment import CANDIDATE_ESTIMATORS, ExperimentConfig, load_experiment
from heartml.features import build_preprocessor, split_features_target

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from heartml.registry import PromotionResult
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"

# Types a fitted heartml pipeline holds that skops does not trust by default, reviewed one by
# one: all scikit-learn or numpy internals. They are recorded in each model's MLmodel, and
# loading (pyfunc or skops) refuses any type not on this list, so a pipeline change that brings
# a new type fails the registration check and the load tests instead of being trusted blindly.
SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",  # dtype attributes of imputers and encoders
        "sklearn.tree._tree.Tree",  # random_forest, gradient_boosting, extra_trees
        "sklearn.calibration._CalibratedClassifier",  # svm: Platt scaling
        "sklearn.calibration._SigmoidCalibration",
    }
)


# Called each time training moves on (a candidate fitted, one registered, the promotion
# attempted) with a line saying so and the session's number of steps. The CLI draws a progress
# bar from it. "fitted" events come from the worker pool's own thread, so the callback must be
# thread-safe (Rich's Progress is).
Progress = Callable[[str, int], None]


class TrainingError(Exception):
    """Training could not complete; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class FittedCandidate:
    """A candidate fitted on the training rows, scored on the held-out rows, its plots drawn."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    probability: np.ndarray
    metrics: Metrics
    importance_kind: str
    importance: dict[str, float]
    plots: dict[str, bytes]  # artifact path -> PNG


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """Where a candidate ended up in MLflow."""

    name: str
    metrics: Metrics
    run_id: str
    model_name: str
    model_version: str


@dataclass(frozen=True, slots=True)
class TrainResult:
    parent_run_id: str
    experiment_id: str
    candidates: tuple[CandidateResult, ...]
    best: CandidateResult
    promotion: PromotionResult | None
    promotion_warning: str | None


def build_candidate(name: str, params: dict[str, Any], seed: int) -> Pipeline:
    """The preprocessing followed by the candidate's estimator, seeded when it takes a seed."""
    from sklearn.pipeline import Pipeline

    module_name, class_name = CANDIDATE_ESTIMATORS[name]
    estimator_class = getattr(importlib.import_module(module_name), class_name)
    kwargs = dict(params)
    if "random_state" in estimator_class().get_params():
        kwargs.setdefault("random_state", seed)
    try:
        estimator = estimator_class(**kwargs)
        # Checked here, against the estimator itself: once wrapped (calibration, CV), a bad
        # value is reported as a parameter of cross_val_predict.
        estimator._validate_params()
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"candidate {name}: {_first_line(exc)}") from exc
    if name == "svm":
        # Risk scores need probabilities: Platt scaling fitted on cross-validated decision
        # values, the replacement scikit-learn recommends for SVC(probability=True).
        from sklearn.calibration import CalibratedClassifierCV

        estimator = CalibratedClassifierCV(estimator, method="sigmoid", ensemble=False, cv=5)
    return Pipeline([("preprocess", build_preprocessor()), ("model", estimator)])


def _first_line(exc: BaseException) -> str:
    """The first non-blank line of an error (scikit-learn's may start with a newline)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))


def split_data(
    features: pd.DataFrame, target: np.ndarray, config: ExperimentConfig
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """The held-out split of the experiment: stratified by default, seeded."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=target if config.split.stratify else None,
    )
    return x_train, x_test, y_train, y_test


def fit_candidate(
    name: str,
    params: dict[str, Any],
    config: ExperimentConfig,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
) -> FittedCandidate:
    """Cross-validate on the training rows, fit on all of them, score on the held-out rows.

    The feature importance and the plots are computed here too, so that everything heavy about
    a candidate happens in the worker process that fitted it (see ``candidate_pool``).
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model = build_candidate(name, params, config.split.seed)
    folds = StratifiedKFold(n_splits=config.cv.folds, shuffle=True, random_state=config.split.seed)
    try:
        # error_score="raise": a fold that fails is a broken candidate, not a score to average.
        cv_scores = cross_val_score(
            clone(model), x_train, y_train, cv=folds, scoring="roc_auc", error_score="raise"
        )
        model.fit(x_train, y_train)
    except ValueError as exc:
        raise TrainingError(f"candidate {name}: {_first_line(exc)}") from exc
    probability = model.predict_proba(x_test)[:, 1]
    kind, importance = feature_importance(model, x_test, y_test, config.split.seed)
    plots = {
        "roc_curve.png": plot_roc_curves(y_test, {name: probability}),
        "confusion_matrix.png": plot_confusion_matrix(y_test, probability),
        "calibration_curve.png": plot_calibration(y_test, probability),
        "feature_importance.png": plot_importance(kind, importance),
    }
    return FittedCandidate(
        name=name,
        params=params,
        model=model,
        probability=probability,
        metrics=score_predictions(y_test, probability, cv_scores),
        importance_kind=kind,
        importance=importance,
        plots={path: render_png(fig) for path, fig in plots.items()},
    )


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


# What every worker needs, imported once by the fork server.
WORKER_PRELOAD = [
    "heartml.train",
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
]


@contextmanager
def candidate_pool(
    candidates: int, context: BaseContext | None = None
) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for the candidates, one per core (at most two: the machines have two).

    Fitting a candidate on 300 rows is mostly scikit-learn's Python overhead, and drawing its
    plots is all Python, so threads would queue on the GIL. Processes fit two candidates at once
    while this process imports MLflow and opens the store.
    """
    size = max(1, min(2, candidates, os.cpu_count() or 1))
    pool = ProcessPoolExecutor(max_workers=size, mp_context=context or worker_context())
    try:
        yield pool
    except BaseException:
        # Nobody will log the candidates still queued or running: stop them now rather than
        # keep the user waiting for fits whose results are thrown away.
        # (No public API before Python 3.14's terminate_workers(); _processes is the pool's own.)
        running = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in running:
            worker.terminate()
        raise
    pool.shutdown(wait=True)


def collect_fits(futures: list[Future[FittedCandidate]]) -> list[FittedCandidate]:
    """The fitted candidates in config order; a worker that died becomes a TrainingError."""
    try:
        return [future.result() for future in futures]
    except BrokenProcessPool as exc:
        raise TrainingError(f"a training worker process died ({exc})") from exc


def rank_key(candidate: FittedCandidate, config: ExperimentConfig) -> tuple[float, float, str]:
    """Higher is better: the primary metric, then the tie-break; the name keeps it total."""
    scores = candidate.metrics.as_dict()
    primary = scores[config.selection.primary_metric]
    tie_break = scores[config.selection.tie_break]
    # Rounded so that a difference in the 12th decimal does not decide between candidates.
    return round(primary, 10), round(tie_break, 10), candidate.name


def git_commit() -> str:
    """The commit being trained, for lineage: Jenkins' GIT_COMMIT, else git, else 'unknown'."""
    if commit := os.environ.get("GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _log_candidate(
    fitted: FittedCandidate,
    settings: Settings,
    config: ExperimentConfig,
    x_train: pd.DataFrame,
    lineage: dict[str, str],
    experiment_id: str,
) -> CandidateResult:
    import mlflow
    from mlflow.models import infer_signature

    model_name = f"{settings.model_prefix}{fitted.name}"
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=fitted.name, nested=True, tags=lineage
    ) as run:
        mlflow.set_tag("candidate", fitted.name)
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in sorted(fitted.params.items())},
                "estimator": type(fitted.model.steps[-1][1]).__name__,
                "experiment_version": config.version,
                "split.test_size": config.split.test_size,
                "split.seed": config.split.seed,
                "cv.folds": config.cv.folds,
            }
        )
        mlflow.log_metrics(fitted.metrics.as_dict())
        with tempfile.TemporaryDirectory(prefix="heartml-plots-") as plots:
            for path, png in fitted.plots.items():
                Path(plots, path).write_bytes(png)
            mlflow.log_artifacts(plots, "plots")
        mlflow.log_dict(
            {"kind": fitted.importance_kind, "values": fitted.importance},
            "feature_importance.json",
        )

        example = x_train.head(5)
        signature = infer_signature(example, fitted.model.predict_proba(example))
        info = mlflow.sklearn.log_model(
            fitted.model,
            name=MODEL_ARTIFACT,
            serialization_format="skops",
            # The reviewed list, not whatever the model holds: loading refuses anything else.
            skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
            signature=signature,
            input_example=example,
            # Probabilities, not labels, are what a risk model serves.
            pyfunc_predict_fn="predict_proba",
            # Explicit requirements: inferring them would re-import the model in a subprocess.
            pip_requirements=_pip_requirements(),
            # MLflow loads the saved model through pyfunc and scores the input example before
            # registering it: every registered version is known to load the way serving loads.
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    return CandidateResult(fitted.name, fitted.metrics, run.info.run_id, model_name, version)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas")
    ]


def _log_parent_summary(
    fitted: list[FittedCandidate], y_test: np.ndarray, best: FittedCandidate
) -> None:
    import mlflow

    mlflow.log_figure(
        plot_roc_curves(y_test, {f.name: f.probability for f in fitted}), "plots/roc_curves.png"
    )
    rows = [{"candidate": f.name, **f.metrics.as_dict()} for f in fitted]
    mlflow.log_dict({"columns": list(rows[0]), "rows": rows}, "comparison.json")
    header = "| " + " | ".join(rows[0]) + " |"
    lines = [header, "|" + "---|" * len(rows[0])]
    lines += [
        "| " + " | ".join(v if isinstance(v, str) else f"{v:.4f}" for v in row.values()) + " |"
        for row in rows
    ]
    mlflow.log_text("\n".join(lines) + "\n", "comparison.md")
    mlflow.log_metric("best_roc_auc", best.metrics.roc_auc)
    mlflow.set_tag("best_candidate", best.name)


def _on_fitted(
    name: str, report: Callable[[str], None]
) -> Callable[[Future[FittedCandidate]], None]:
    """A done-callback that reports a fitted candidate (it runs in the pool's own thread)."""

    def on_done(future: Future[FittedCandidate]) -> None:
        if not future.cancelled() and future.exception() is None:
            report(f"fitted {name}")

    return on_done


def _open_store(settings: Settings) -> str:
    """Import what logging needs and make sure the experiment exists; returns its id."""
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401

    from heartml import registry

    registry.configure_mlflow(settings)
    return registry.ensure_experiment(settings)


def train_candidates(
    settings: Settings, *, promote: bool = True, progress: Progress | None = None
) -> TrainResult:
    """Run one training session: every candidate of the experiment, logged and registered.

    The best version is tagged ``best_model=true``; then, like the seed's training script,
    training attempts the promotion. A refused or failed promotion is reported in the result
    (``promotion_warning``) and never fails training: the pipeline's promote step decides.

    The candidates are fitted in worker processes (``candidate_pool``). As with any use of
    multiprocessing, a script that calls this must keep its top-level code under
    ``if __name__ == "__main__":`` (the ``heartml`` command, ``python -m heartml`` and pytest do).
    """
    from heartml import registry

    workers = worker_context()
    config = load_experiment(settings.experiment_config)
    dataset = load_dataset(settings, config.data.sites)
    features, target = split_features_target(dataset.frame)
    x_train, x_test, y_train, y_test = split_data(features, target, config)

    steps = 2 * len(config.candidates) + int(promote)  # fit and register each, then promote

    def report(step: str) -> None:
        if progress is not None:
            progress(step, steps)

    # The candidates are fitted in worker processes while this one imports MLflow and opens
    # the store (and migrates a new database): both are seconds of Python work.
    started = time.perf_counter()
    with candidate_pool(len(config.candidates), workers) as pool:
        futures = []
        for name, params in config.candidates.items():
            future = pool.submit(
                fit_candidate, name, params, config, x_train, y_train, x_test, y_test
            )
            future.add_done_callback(_on_fitted(name, report))
            futures.append(future)
        experiment_id = _open_store(settings)
        fitted = collect_fits(futures)
    logger.info("fitted %d candidates in %.1f s", len(fitted), time.perf_counter() - started)
    best_fit = max(fitted, key=lambda f: rank_key(f, config))

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
        for candidate in fitted:
            result = _log_candidate(candidate, settings, config, x_train, lineage, experiment_id)
            report(f"registered {result.model_name} v{result.model_version}")
            results.append(result)
        _log_parent_summary(fitted, y_test, best_fit)
        best = next(r for r in results if r.name == best_fit.name)
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
