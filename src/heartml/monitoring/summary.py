"""What the monitor report shows, computed from the log: PSI per window against the profile
of the model that answered it, the missing shares of the last window, the shadow's agreement
with the champion, and, with labels, each side's live ROC-AUC (DeLong's 95 % interval) and
calibration on the same labelled rows. Pure numbers: :mod:`heartml.monitoring.report` draws
and lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.profile import feature_stability, missing_ratios
from heartml.data.schema import FEATURE_NAMES
from heartml.monitoring.log import MonitorError, PredictionLogData

if TYPE_CHECKING:
    import pandas as pd

PSI_ALERT = 0.2
DEFAULT_WINDOW = 500


@dataclass(frozen=True)
class LiveScore:
    """One model's live ROC-AUC and calibration on the labelled rows."""

    model: str
    rows: int
    auc: Any  # heartml.evidence.stats.Interval
    slope: float
    intercept: float
    curve: tuple[list[float], list[float]]  # mean predicted, observed, per decile


@dataclass(frozen=True)
class Summary:
    """What the report shows, computed; the figures are drawn from it."""

    data: PredictionLogData
    window: int
    psi: pd.DataFrame  # one row per window: end time, model, PSI per feature
    recent_missing: dict[str, float]
    agreement: dict[str, Any] | None
    scores: list[LiveScore] = field(default_factory=list)
    labelled: int = 0


def _windows(records: pd.DataFrame, window: int) -> list[pd.DataFrame]:
    count = len(records)
    if count <= window:
        return [records]
    return [records.iloc[start : start + window] for start in range(0, count - window + 1, window)]


def _calibration_curve(
    y: np.ndarray, p: np.ndarray, bins: int = 10
) -> tuple[list[float], list[float]]:
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, len(p)))
    return [float(p[g].mean()) for g in groups], [float(y[g].mean()) for g in groups]


def _score(model: str, y: np.ndarray, p: np.ndarray) -> LiveScore:
    from heartml.evidence.stats import calibration, roc_auc_interval

    fit = calibration(y, np.clip(p, 1e-6, 1 - 1e-6))
    return LiveScore(
        model, len(y), roc_auc_interval(y, p), fit.slope, fit.intercept, _calibration_curve(y, p)
    )


def summarise(
    data: PredictionLogData, labels: pd.DataFrame | None = None, window: int = DEFAULT_WINDOW
) -> Summary:
    """The numbers behind every plot of the report."""
    import pandas as pd

    records = data.records
    features = list(FEATURE_NAMES)
    psi_rows = []
    for chunk in _windows(records, window):
        model = chunk["model"].mode().iloc[0]
        profile = data.profiles.get(model)
        if profile is None:
            continue
        values = feature_stability(profile, chunk[features].to_numpy(dtype="float64"))
        psi_rows.append(
            {
                "time": chunk["time"].iloc[-1],
                "model": model,
                "rows": len(chunk),
                **dict(zip(features, values, strict=True)),
            }
        )
    psi = pd.DataFrame(psi_rows)
    recent = records.tail(window)[features].to_numpy(dtype="float64")
    recent_missing = dict(zip(features, missing_ratios(recent).tolist(), strict=True))

    shadowed = records.dropna(subset=["shadow_probability"])
    agreement = None
    if len(shadowed):
        theirs = shadowed["shadow_probability"].astype(float).to_numpy()
        their_class = (theirs > 1 - theirs).astype(int)
        agreement = {
            "rows": len(shadowed),
            "pairs": sorted(set(zip(shadowed["model"], shadowed["shadow_model"], strict=True))),
            "agreement": float((their_class == shadowed["prediction"].to_numpy()).mean()),
            "mean_abs_diff": float(np.abs(shadowed["probability"].to_numpy() - theirs).mean()),
        }

    scores: list[LiveScore] = []
    labelled = 0
    if labels is not None:
        joined = records.merge(labels, on=["request_id", "row"], how="inner")
        labelled = len(joined)
        if labelled == 0:
            raise MonitorError("no labelled request_id matches a logged prediction")
        y = joined["outcome"].to_numpy()
        if y.min() == y.max():
            raise MonitorError(f"the {labelled} labelled rows all have outcome {y[0]}: no ROC-AUC")
        both = joined.dropna(subset=["shadow_probability"])
        # Side by side on the same rows: those the shadow scored too, when there are any.
        rows = both if len(both) and both["outcome"].nunique() == 2 else joined
        champion = " + ".join(sorted(rows["model"].unique()))
        scores.append(
            _score(
                f"champion ({champion})", rows["outcome"].to_numpy(), rows["probability"].to_numpy()
            )
        )
        if rows is both:
            shadow = " + ".join(sorted(both["shadow_model"].unique()))
            scores.append(
                _score(
                    f"shadow ({shadow})",
                    both["outcome"].to_numpy(),
                    both["shadow_probability"].astype(float).to_numpy(),
                )
            )
    return Summary(data, window, psi, recent_missing, agreement, scores, labelled)
