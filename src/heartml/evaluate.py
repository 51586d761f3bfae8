"""Evaluate stage: held-out metrics and the plots logged with every candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass(frozen=True, slots=True)
class Metrics:
    """Held-out and cross-validated scores of one fitted candidate."""

    cv_roc_auc_mean: float
    cv_roc_auc_std: float
    roc_auc: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    brier_score: float
    log_loss: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def score_predictions(
    y_true: np.ndarray, probability: np.ndarray, cv_scores: np.ndarray
) -> Metrics:
    """All the metrics of one candidate from its held-out probabilities and CV scores."""
    from sklearn import metrics as skm

    predicted = (probability >= 0.5).astype(int)
    return Metrics(
        cv_roc_auc_mean=float(cv_scores.mean()),
        cv_roc_auc_std=float(cv_scores.std()),
        roc_auc=float(skm.roc_auc_score(y_true, probability)),
        accuracy=float(skm.accuracy_score(y_true, predicted)),
        precision=float(skm.precision_score(y_true, predicted, zero_division=0)),
        recall=float(skm.recall_score(y_true, predicted, zero_division=0)),
        f1=float(skm.f1_score(y_true, predicted, zero_division=0)),
        brier_score=float(skm.brier_score_loss(y_true, probability)),
        log_loss=float(skm.log_loss(y_true, probability, labels=[0, 1])),
    )


def _figure(width: float = 5.0, height: float = 4.0) -> Figure:
    # A bare Figure (no pyplot) keeps no global state and needs no GUI backend.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def plot_roc_curves(y_true: np.ndarray, curves: dict[str, np.ndarray]) -> Figure:
    """ROC curves of one or several candidates on the same held-out rows."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    for name, probability in curves.items():
        fpr, tpr, _ = roc_curve(y_true, probability)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_true, probability):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_confusion_matrix(y_true: np.ndarray, probability: np.ndarray) -> Figure:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, (probability >= 0.5).astype(int), labels=[0, 1])
    fig = _figure(4.0, 3.5)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in _cells(matrix):
        ax.text(col, row, str(count), ha="center", va="center")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["no disease", "disease"],
        yticklabels=["no disease", "disease"],
        xlabel="Predicted",
        ylabel="Actual",
        title="Confusion matrix (threshold 0.5)",
    )
    return fig


def _cells(matrix: np.ndarray) -> list[tuple[tuple[int, int], int]]:
    return [((r, c), int(matrix[r, c])) for r in range(matrix.shape[0]) for c in range(2)]


def plot_calibration(y_true: np.ndarray, probability: np.ndarray) -> Figure:
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y_true, probability, n_bins=8, strategy="quantile")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(predicted, observed, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.set(xlabel="Predicted probability", ylabel="Observed frequency", title="Calibration")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def feature_importance(
    model: Any, features: pd.DataFrame, y_true: np.ndarray, seed: int
) -> tuple[str, dict[str, float]]:
    """What drives the model: coefficients, impurity importances, or permutation importance.

    Returns the kind of importance and a mapping from feature name to value.
    """
    estimator = model.steps[-1][1]
    names = list(model[:-1].get_feature_names_out())
    if hasattr(estimator, "coef_"):
        return "coefficient", dict(zip(names, map(float, estimator.coef_[0]), strict=True))
    if hasattr(estimator, "feature_importances_"):
        values = map(float, estimator.feature_importances_)
        return "impurity importance", dict(zip(names, values, strict=True))
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        model, features, y_true, scoring="roc_auc", n_repeats=5, random_state=seed
    )
    values = map(float, result.importances_mean)
    return "permutation importance (ROC-AUC)", dict(zip(features.columns, values, strict=True))


def plot_importance(kind: str, importance: dict[str, float]) -> Figure:
    ordered = sorted(importance.items(), key=lambda item: abs(item[1]))
    fig = _figure(5.5, max(3.0, 0.25 * len(ordered) + 1))
    ax = fig.add_subplot()
    ax.barh([name for name, _ in ordered], [value for _, value in ordered])
    ax.set(title=kind.capitalize(), xlabel=kind)
    ax.tick_params(axis="y", labelsize="small")
    return fig
