"""The candidates an experiment can name: each one a scikit-learn pipeline built from the schema."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heartml.errors import UserError, first_line
from heartml.training.experiment import CANDIDATE_ESTIMATORS
from heartml.training.features import build_preprocessor

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


class TrainingError(UserError):
    """Training could not complete; the message is one line for the user."""


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
        raise TrainingError(f"candidate {name}: {first_line(exc)}") from exc
    if name == "svm":
        # Risk scores need probabilities: Platt scaling fitted on cross-validated decision
        # values, the replacement scikit-learn recommends for SVC(probability=True).
        from sklearn.calibration import CalibratedClassifierCV

        estimator = CalibratedClassifierCV(estimator, method="sigmoid", ensemble=False, cv=5)
    return Pipeline([("preprocess", build_preprocessor()), ("model", estimator)])
