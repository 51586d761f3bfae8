"""Train stage: fit every candidate, evaluate it, log and register it, tag the best one."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heartml.data import load_dataset
from heartml.evaluate import (
    Metrics,
    feature_importance,
    plot_calibration,
    plot_confusion_matrix,
    plot_importance,
    plot_roc_curves,
    score_predictions,
)
from heartml.experiment import CANDIDATE_ESTIMATORS, ExperimentConfig, load_experiment
from heartml.features import build_preprocessor, split_features_target

if TYPE_CHECKING:
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


class TrainingError(Exception):
    """Training could not complete; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class FittedCandidate:
    """A candidate fitted on the training rows and scored on the held-out rows."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    probability: np.ndarray
    metrics: Metrics


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
    except TypeError as exc:
        raise TrainingError(f"candidate {name}: {exc}") from exc
    if name == "svm":
        # Risk scores need probabilities: Platt scaling fitted on cross-validated decision
        # values, the replacement scikit-learn recommends for SVC(probability=True).
        from sklearn.calibration import CalibratedClassifierCV

        estimator = CalibratedClassifierCV(estimator, method="sigmoid", ensemble=False, cv=5)
    return Pipeline([("preprocess", build_preprocessor()), ("model", estimator)])


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
    """Cross-validate on the training rows, fit on all of them, score on the held-out rows."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model = build_candidate(name, params, config.split.seed)
    folds = StratifiedKFold(n_splits=config.cv.folds, shuffle=True, random_state=config.split.seed)
    try:
        cv_scores = cross_val_score(clone(model), x_train, y_train, cv=folds, scoring="roc_auc")
        model.fit(x_train, y_train)
    except ValueError as exc:
        raise TrainingError(f"candidate {name}: {str(exc).splitlines()[0]}") from exc
    probability = model.predict_proba(x_test)[:, 1]
    return FittedCandidate(
        name=name,
        params=params,
        model=model,
        probability=probability,
        metrics=score_predictions(y_test, probability, cv_scores),
    )


def fit_all(
    config: ExperimentConfig,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
) -> list[FittedCandidate]:
    """Fit the candidates two at a time: the heavy parts (trees, libsvm, BLAS) release the GIL.

    Each candidate has its own seeded estimator and folds, so threads change nothing in the
    results, only the wall time.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        futures = [
            pool.submit(fit_candidate, name, params, config, x_train, y_train, x_test, y_test)
            for name, params in config.candidates.items()
        ]
        return [future.result() for future in futures]


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
    x_test: pd.DataFrame,
    y_test: np.ndarray,
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
        mlflow.log_figure(
            plot_roc_curves(y_test, {fitted.name: fitted.probability}), "plots/roc_curve.png"
        )
        mlflow.log_figure(
            plot_confusion_matrix(y_test, fitted.probability), "plots/confusion_matrix.png"
        )
        mlflow.log_figure(
            plot_calibration(y_test, fitted.probability), "plots/calibration_curve.png"
        )
        kind, importance = feature_importance(fitted.model, x_test, y_test, config.split.seed)
        mlflow.log_figure(plot_importance(kind, importance), "plots/feature_importance.png")
        mlflow.log_dict({"kind": kind, "values": importance}, "feature_importance.json")

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


def _open_store(settings: Settings) -> str:
    """Import what logging needs and make sure the experiment exists; returns its id."""
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    from heartml import registry

    registry.configure_mlflow(settings)
    return registry.ensure_experiment(settings)


def train_candidates(settings: Settings, *, promote: bool = True) -> TrainResult:
    """Run one training session: every candidate of the experiment, logged and registered.

    The best version is tagged ``best_model=true``; then, like the seed's training script,
    training attempts the promotion. A refused or failed promotion is reported in the result
    (``promotion_warning``) and never fails training: the pipeline's promote step decides.
    """
    from concurrent.futures import ThreadPoolExecutor

    from heartml import registry

    config = load_experiment(settings.experiment_config)
    dataset = load_dataset(settings, config.data.sites)
    features, target = split_features_target(dataset.frame)
    x_train, x_test, y_train, y_test = split_data(features, target, config)

    # Opening the store (importing MLflow, migrating a new database) is slow Python work; the
    # model fits mostly run in C without the GIL, so the two overlap well.
    with ThreadPoolExecutor(max_workers=1) as opener:
        store = opener.submit(_open_store, settings)
        started = time.perf_counter()
        fitted = fit_all(config, x_train, y_train, x_test, y_test)
        logger.info("fitted %d candidates in %.1f s", len(fitted), time.perf_counter() - started)
        experiment_id = store.result()
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
        results = [
            _log_candidate(f, settings, config, x_train, x_test, y_test, lineage, experiment_id)
            for f in fitted
        ]
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
