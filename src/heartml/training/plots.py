"""Evaluate stage: what drives each model, and the plots logged with it and drawn on its card.

The numbers themselves are :mod:`heartml.evidence.measures`'s; the plots draw those numbers (a
calibration curve is drawn from the card's own bins), so a plot never disagrees with its card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


def _figure(width: float = 5.0, height: float = 4.0, left: float = 0.14) -> Figure:
    # A bare Figure (no pyplot) keeps no global state and needs no GUI backend. Fixed margins
    # instead of a layout engine: rendering is twice as fast and the plots are simple.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    fig.subplots_adjust(left=left, right=0.96, top=0.9, bottom=0.13)
    return fig


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes: plots are rendered where the model is fitted, logged elsewhere."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def draw_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """:func:`plot_roc_curves` as PNG, for a worker to draw: the process that logs the session
    then never imports matplotlib."""
    return render_png(plot_roc_curves(curves))


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """ROC curves, each of its own rows: label -> (outcomes, P(disease))."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    for name, (y_true, probability) in curves.items():
        fpr, tpr, _ = roc_curve(y_true, probability)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_true, probability):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_confusion_matrix(y_true: np.ndarray, probability: np.ndarray) -> Figure:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, (probability >= 0.5).astype(int), labels=[0, 1])
    fig = _figure(4.5, 3.8, left=0.26)
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


def plot_calibration(
    curves: Mapping[str, Sequence[Mapping[str, float]]], title: str = "Calibration"
) -> Figure:
    """Calibration curves from the card's bins (label -> bins of :mod:`heartml.evidence.measures`):
    observed frequency against mean predicted risk, with the bins' 95 % intervals."""
    fig = _figure(5.0, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    for name, bins in curves.items():
        x = [b["mean_predicted"] for b in bins]
        y = [b["observed"] for b in bins]
        below = [b["observed"] - b["low"] for b in bins]
        above = [b["high"] - b["observed"] for b in bins]
        ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=2, label=name)
    ax.set(
        xlabel="Predicted risk",
        ylabel="Observed frequency",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right", fontsize="small")
    return fig


def feature_importance(
    model: Any, graph: bytes, training: np.ndarray, held_out: np.ndarray, seed: int
) -> tuple[str, dict[str, float]]:
    """What drives the model: each field's mean |contribution| to the log-odds over the held-out
    rows, computed by the explainer the API answers with (:mod:`heartml.model.explain`, built
    from the registered ``graph`` as registration builds it), so the card agrees with the API.

    ``training`` and ``held_out``: float64 rows in schema order. Returns the kind (naming the
    method) and field -> value.
    """
    import numpy as np

    from heartml.data.schema import FEATURE_NAMES
    from heartml.model.explainer_files import build_explainer
    from heartml.model.onnx_form import OnnxEngine

    explainer = build_explainer(model, training, seed).explainer(OnnxEngine(graph))
    size = np.abs(explainer.explain(held_out).contributions).mean(axis=0)
    kind = f"mean |contribution| to the log-odds, held-out rows ({explainer.method})"
    return kind, dict(zip(FEATURE_NAMES, map(float, size), strict=True))


def plot_importance(kind: str, importance: dict[str, float]) -> Figure:
    ordered = sorted(importance.items(), key=lambda item: abs(item[1]))
    fig = _figure(6.0, max(3.0, 0.25 * len(ordered) + 1), left=0.38)
    ax = fig.add_subplot()
    ax.barh([name for name, _ in ordered], [value for _, value in ordered])
    method = kind[kind.find("(") + 1 : -1] if kind.endswith(")") else kind
    ax.set(title=f"What drives the model: {method}", xlabel=kind.split(" (", maxsplit=1)[0])
    ax.tick_params(axis="y", labelsize="small")
    return fig
