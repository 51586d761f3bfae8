"""Fitting and selection, pure: data and the experiment in, fitted pipelines and scores out.

Nothing here logs, draws or touches MLflow; :mod:`heartml.train` wires these functions to the
worker pool (:mod:`heartml.workers`) and to MLflow (:mod:`heartml.tracking`). Scoring itself
is :func:`heartml.evaluate.score_predictions`, a function of predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heartml.candidates import TrainingError, build_candidate, first_line

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from heartml.evaluate import Metrics
    from heartml.experiment import ExperimentConfig


@dataclass(frozen=True, slots=True)
class HeldOutSplit:
    """The training rows and the held-out rows of one experiment."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True, slots=True)
class FittedCandidate:
    """A candidate fitted on every training row, with its cross-validated ROC-AUCs."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    cv_scores: np.ndarray


def split_data(
    features: pd.DataFrame, target: np.ndarray, config: ExperimentConfig
) -> HeldOutSplit:
    """The held-out split of the experiment: stratified by default, seeded."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=target if config.split.stratify else None,
    )
    return HeldOutSplit(x_train, x_test, y_train, y_test)


def cross_validate(
    model: Pipeline, features: pd.DataFrame, target: np.ndarray, config: ExperimentConfig
) -> np.ndarray:
    """The ROC-AUC of each fold of the experiment's stratified, seeded K-fold."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=config.cv.folds, shuffle=True, random_state=config.split.seed)
    # error_score="raise": a fold that fails is a broken candidate, not a score to average.
    scores: np.ndarray = cross_val_score(
        clone(model), features, target, cv=folds, scoring="roc_auc", error_score="raise"
    )
    return scores


def fit_candidate(
    name: str, params: dict[str, Any], config: ExperimentConfig, split: HeldOutSplit
) -> FittedCandidate:
    """Cross-validate on the training rows, then fit on all of them."""
    model = build_candidate(name, params, config.split.seed)
    try:
        cv_scores = cross_validate(model, split.x_train, split.y_train, config)
        model.fit(split.x_train, split.y_train)
    except ValueError as exc:
        raise TrainingError(f"candidate {name}: {first_line(exc)}") from exc
    return FittedCandidate(name, params, model, cv_scores)


def predict_held_out(model: Pipeline, split: HeldOutSplit) -> np.ndarray:
    """P(disease) for each held-out row."""
    probability: np.ndarray = model.predict_proba(split.x_test)[:, 1]
    return probability


def rank_key(name: str, metrics: Metrics, config: ExperimentConfig) -> tuple[float, float, str]:
    """Higher is better: the primary metric, then the tie-break; the name keeps it total."""
    scores = metrics.as_dict()
    primary = scores[config.selection.primary_metric]
    tie_break = scores[config.selection.tie_break]
    # Rounded so that a difference in the 12th decimal does not decide between candidates.
    return round(primary, 10), round(tie_break, 10), name
