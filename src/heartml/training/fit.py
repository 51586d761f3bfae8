"""Fitting and validation, pure: data and the experiment in, fitted pipelines and predictions out.

Nothing here logs, draws or touches MLflow; :mod:`heartml.training.train` wires these functions
to the worker pool (:mod:`heartml.training.workers`) and to MLflow
(:mod:`heartml.training.tracking`). The statistics computed from the predictions are
:mod:`heartml.evidence.measures`.

Every row carries a stable id, ``site:line`` (the line of the UCI file it was read from), so
that predictions of two models, or of two training sessions, can be paired row by row.

Cross-validation fits the preprocessing once per fold and every candidate on its output: the
same computation as fitting each candidate's pipeline on the fold (``Pipeline.fit`` is the
preprocessing's ``fit_transform`` followed by the estimator's ``fit`` on its output; a test
checks the predictions are identical), at a fifth of the preprocessing cost. Nothing leaks:
each fold's preprocessing sees that fold's training rows only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.errors import first_line
from heartml.training.candidates import TrainingError, build_candidate

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from heartml.training.experiment import ExperimentConfig


@dataclass(frozen=True, slots=True)
class LabelledRows:
    """Rows of the 13 features (schema order), their outcomes, ids and sites."""

    features: pd.DataFrame
    target: np.ndarray
    ids: np.ndarray  # "site:line"
    sites: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def take(self, index: np.ndarray) -> LabelledRows:
        return LabelledRows(
            self.features.iloc[index].reset_index(drop=True),
            self.target[index],
            self.ids[index],
            self.sites[index],
        )

    def where_site(self, site: str, *, equal: bool = True) -> LabelledRows:
        return self.take(np.flatnonzero((self.sites == site) == equal))


@dataclass(frozen=True, slots=True)
class HeldOutSplit:
    """The training rows and the held-out rows of one experiment."""

    train: LabelledRows
    test: LabelledRows

    @property
    def x_train(self) -> pd.DataFrame:
        return self.train.features

    @property
    def x_test(self) -> pd.DataFrame:
        return self.test.features

    @property
    def y_train(self) -> np.ndarray:
        return self.train.target

    @property
    def y_test(self) -> np.ndarray:
        return self.test.target


def labelled_rows(frame: pd.DataFrame) -> LabelledRows:
    """The features, binary target, ids and sites of a loaded data frame."""
    from heartml.training.features import split_features_target

    features, target = split_features_target(frame)
    ids = (frame["site"].astype(str) + ":" + frame["line"].astype(str)).to_numpy(dtype=object)
    return LabelledRows(features, target, ids, frame["site"].to_numpy(dtype=object))


def strata_of(rows: LabelledRows) -> np.ndarray:
    """What stratified splits keep in proportion: the outcome, within each site."""
    return np.asarray([f"{site}:{y}" for site, y in zip(rows.sites, rows.target, strict=True)])


def split_data(rows: LabelledRows, config: ExperimentConfig) -> HeldOutSplit:
    """The held-out split of the experiment: stratified (outcome within site) by default."""
    from sklearn.model_selection import train_test_split

    train_index, test_index = train_test_split(
        np.arange(len(rows)),
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=strata_of(rows) if config.split.stratify else None,
    )
    return HeldOutSplit(rows.take(train_index), rows.take(test_index))


# --------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------


def plan_folds(rows: LabelledRows, folds: int, repeats: int, seed: int) -> np.ndarray:
    """The fold of every row in every repeat: a (repeats, rows) matrix of fold numbers.

    Repeated stratified k-fold (outcome within site), seeded: the same rows, config and seed
    give the same folds, whichever process fits which repeat.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    plan = np.empty((repeats, len(rows)), dtype=np.int64)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), strata_of(rows))):
        plan[i // folds, test] = i % folds
    return plan


def plan_sites(rows: LabelledRows, sites: tuple[str, ...]) -> np.ndarray:
    """Leave-one-site-out as a fold plan: one repeat whose fold is the row's site."""
    return np.asarray([[sites.index(site) for site in rows.sites]], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class FoldPredictions:
    """One candidate over one repeat of a fold plan: each fold's ROC-AUC, and P(disease) of
    every row from the model fitted without it (plain, and with each masking's fields
    missing)."""

    fold_scores: np.ndarray  # (folds,), NaN for a fold with one outcome only
    probability: np.ndarray  # (rows,)
    masked: dict[str, np.ndarray]  # masking name -> (rows,)


def stack_maskings(features: pd.DataFrame, maskings: Mapping[str, tuple[str, ...]]) -> pd.DataFrame:
    """The rows, then the rows again for each masking with its fields missing (a patient who
    had not had those tests), in one frame."""
    import pandas as pd

    values = features.to_numpy(dtype=np.float64)
    blocks = [values]
    for fields in maskings.values():
        masked = values.copy()
        masked[:, [features.columns.get_loc(f) for f in fields]] = np.nan
        blocks.append(masked)
    return pd.DataFrame(np.vstack(blocks), columns=features.columns)


def cross_validate_repeat(
    candidates: Mapping[str, dict[str, Any]],
    rows: LabelledRows,
    folds: np.ndarray,
    seed: int,
    maskings: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, FoldPredictions]:
    """Fit every candidate on every fold of one repeat (``folds``: the fold number of each row).

    Each fold's preprocessing is fitted once, on that fold's training rows, and shared by the
    candidates (see the module doc). A failing fit is a broken candidate: TrainingError.
    """
    from sklearn.metrics import roc_auc_score

    from heartml.training.features import build_preprocessor

    maskings = dict(maskings or {})
    n = len(rows)
    fold_numbers = sorted(set(folds.tolist()))
    scores = {name: np.full(len(fold_numbers), np.nan) for name in candidates}
    probability = {name: np.full(n, np.nan) for name in candidates}
    masked = {name: {m: np.full(n, np.nan) for m in maskings} for name in candidates}
    for position, fold in enumerate(fold_numbers):
        test = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        # The fold's rows and each masked copy of them, transformed at once.
        stacked = stack_maskings(rows.features.iloc[test], maskings)
        preprocess = build_preprocessor()
        matrix = preprocess.fit_transform(rows.features.iloc[train])
        queries = preprocess.transform(stacked)
        y_test = rows.target[test]
        for name, params in candidates.items():
            estimator = build_candidate(name, params, seed).steps[-1][1]
            try:
                estimator.fit(matrix, rows.target[train])
                predicted = estimator.predict_proba(queries)[:, 1]
            except ValueError as exc:
                raise TrainingError(f"candidate {name}: {first_line(exc)}") from exc
            predicted = predicted.reshape(1 + len(maskings), -1)
            probability[name][test] = predicted[0]
            for row, masking in enumerate(maskings, start=1):
                masked[name][masking][test] = predicted[row]
            if 0 < y_test.sum() < len(y_test):
                scores[name][position] = roc_auc_score(y_test, predicted[0])
    return {
        name: FoldPredictions(scores[name], probability[name], masked[name]) for name in candidates
    }


# --------------------------------------------------------------------------------------------
# The final fit, and selection
# --------------------------------------------------------------------------------------------


def fit_pipeline(name: str, params: dict[str, Any], rows: LabelledRows, seed: int) -> Pipeline:
    """The candidate's whole pipeline fitted on ``rows``."""
    model = build_candidate(name, params, seed)
    try:
        model.fit(rows.features, rows.target)
    except ValueError as exc:
        raise TrainingError(f"candidate {name}: {first_line(exc)}") from exc
    return model


def predict(model: Pipeline, features: pd.DataFrame) -> np.ndarray:
    """P(disease) for each row."""
    probability: np.ndarray = model.predict_proba(features)[:, 1]
    return probability


def rank_key(
    name: str, scores: Mapping[str, float], config: ExperimentConfig
) -> tuple[float, float, str]:
    """Higher is better: the primary metric, then the tie-break; the name keeps it total."""
    primary = scores[config.selection.primary_metric]
    tie_break = scores[config.selection.tie_break]
    # Rounded as the roc_auc tag is (4 decimals), so that a candidate never ranks above one
    # whose tag shows the same score for a difference nobody can see; the tie-break decides.
    return round(primary, 4), round(tie_break, 10), name
