"""A fitted pipeline with a site's recalibration applied, as one scikit-learn estimator.

An adapted version is logged with the sklearn flavour like every other version, so whoever
loads it (``mlflow.sklearn.load_model``, pyfunc, skops) gets the adapted model, never the base
one without its update. Its ``predict_proba`` is the base pipeline's probability updated by
:meth:`heartml.evidence.recalibration.Recalibration.apply`, the computation the ONNX graph of
:mod:`heartml.model.recalibrated` reproduces. A module of its own: that one needs no
scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

from heartml.evidence.recalibration import Method, Recalibration


class RecalibratedClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """``base`` (fitted) with ``logit p' = intercept + slope · logit p`` applied to P(disease).

    ``method``: the update's name (``intercept`` or ``logistic``). Nothing is fitted here: the
    update is estimated on the site's rows by :mod:`heartml.adaptation`.
    """

    def __init__(
        self,
        base: Any = None,
        intercept: float = 0.0,
        slope: float = 1.0,
        method: str = "logistic",
    ) -> None:
        self.base = base
        self.intercept = intercept
        self.slope = slope
        self.method = method

    @property
    def classes_(self) -> NDArray[Any]:
        classes: NDArray[Any] = self.base.classes_
        return classes

    def __sklearn_is_fitted__(self) -> bool:
        return self.base is not None

    def fit(self, x: Any, y: Any = None) -> RecalibratedClassifier:
        """Already fitted: the base model and the update come fitted."""
        return self

    @property
    def recalibration(self) -> Recalibration:
        return Recalibration(Method(self.method), float(self.intercept), float(self.slope))

    def predict_proba(self, x: Any) -> NDArray[np.float64]:
        risk = self.recalibration.apply(np.asarray(self.base.predict_proba(x))[:, 1])
        result: NDArray[np.float64] = np.column_stack([1.0 - risk, risk])
        return result

    def predict(self, x: Any) -> NDArray[Any]:
        chosen: NDArray[Any] = self.classes_[(self.predict_proba(x)[:, 1] >= 0.5).astype(int)]
        return chosen
