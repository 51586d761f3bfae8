"""The numbers a candidate is judged by, computed from its predictions table alone.

Pure: :mod:`heartml.evidence.predictions` sets (and, for subgroups and missing tests, a few
facts about the rows) in, JSON-ready dictionaries out. Training logs them as metrics and on
the model card; a test recomputes each of them from the logged table. Methods:

- cross-validated ROC-AUC: the mean of the repeat × fold ROC-AUCs with Nadeau and Bengio's
  corrected resampled t interval (:func:`heartml.evidence.stats.repeated_cv_interval`);
- every other ROC-AUC (held-out rows, out-of-fold predictions averaged over the repeats,
  a site, a subgroup): DeLong's interval; a difference on the same rows: DeLong's paired one;
- calibration: slope and intercept (Van Calster et al. 2019) and a decile curve with Wilson
  intervals, out-of-fold (averaged over repeats) and held-out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from heartml.evidence.predictions import (
    CV,
    HOLDOUT,
    INTERNAL,
    LOSO,
    MASKED_PREFIX,
    SITE_PREFIX,
    PredictionSet,
)
from heartml.evidence.stats import (
    Calibration,
    Interval,
    calibration,
    calibration_curve,
    paired_auc_difference,
    repeated_cv_interval,
    roc_auc_interval,
)

# A site, subgroup or set of rows needs this many rows of each outcome for a ROC-AUC.
MIN_ROWS_PER_OUTCOME = 5
AGE_CUT = 55


@dataclass(frozen=True, slots=True)
class CalibrationBand:
    """Acceptable calibration: slope within [slope_min, slope_max], |intercept| at most
    ``intercept_max`` (on the logit scale)."""

    slope_min: float
    slope_max: float
    intercept_max: float

    def problems(self, slope: float | None, intercept: float | None) -> list[str]:
        """Why a calibration is outside the band (empty when it is inside)."""
        found = []
        if slope is None or not self.slope_min <= slope <= self.slope_max:
            shown = "undefined" if slope is None else f"{slope:.2f}"
            found.append(
                f"calibration slope {shown} outside [{self.slope_min:g}, {self.slope_max:g}]"
            )
        if intercept is None or abs(intercept) > self.intercept_max:
            shown = "undefined" if intercept is None else f"{intercept:+.2f}"
            found.append(f"calibration intercept {shown} beyond ±{self.intercept_max:g}")
        return found


@dataclass(frozen=True, slots=True)
class RowFacts:
    """What subgroups and missing tests need to know about each row, by row id."""

    sex: Mapping[str, float]
    age: Mapping[str, float]
    missing: Mapping[str, frozenset[str]]  # the fields missing in the data


def finite(value: float) -> float | None:
    """JSON has no NaN: an undefined number is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def interval_json(interval: Interval) -> dict[str, float | None]:
    return {
        "estimate": finite(interval.estimate),
        "low": finite(interval.low),
        "high": finite(interval.high),
    }


def calibration_json(cal: Calibration) -> dict[str, float | int | None]:
    return {
        "slope": finite(cal.slope),
        "intercept": finite(cal.intercept),
        "mean_predicted": cal.mean_predicted,
        "observed": cal.observed,
        "rows": cal.rows,
    }


def has_both_outcomes(y: np.ndarray, least: int = 1) -> bool:
    positives = int(np.sum(y))
    return positives >= least and len(y) - positives >= least


def auc_json(y: np.ndarray, probability: np.ndarray) -> dict[str, float | None] | None:
    """ROC-AUC with DeLong's interval, or None with too few rows of an outcome."""
    if not has_both_outcomes(y, MIN_ROWS_PER_OUTCOME):
        return None
    return interval_json(roc_auc_interval(y, probability))


def curve_json(y: np.ndarray, probability: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "mean_predicted": b.mean_predicted,
            "observed": b.observed,
            "low": b.low,
            "high": b.high,
            "rows": b.rows,
        }
        for b in calibration_curve(y, probability, bins)
    ]


def population_json(rows: PredictionSet) -> dict[str, Any]:
    """Rows, prevalence, mean prediction, ROC-AUC and calibration of one set of rows."""
    y, p = rows.y, rows.probability
    cal = calibration(y, p)
    return {
        "rows": len(rows),
        "prevalence": float(np.mean(y)),
        "mean_predicted": float(np.mean(p)),
        "roc_auc": auc_json(y, p),
        "calibration": calibration_json(cal),
    }


def threshold_json(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 at risk 0.5; Brier score and log loss."""
    predicted = probability >= 0.5
    positive = y == 1
    tp = float(np.sum(predicted & positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    # scikit-learn's clipping (machine epsilon): a probability of exactly 0 or 1 (a 1-NN) costs
    # the same here as in sklearn.metrics.log_loss.
    eps = float(np.finfo(np.float64).eps)
    clipped = np.clip(probability, eps, 1 - eps)
    return {
        "accuracy": float(np.mean(predicted == positive)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "brier_score": float(np.mean((probability - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
    }


def resampled_json(rows: PredictionSet, test_fraction: float) -> dict[str, Any]:
    """A repeated cross-validation: the corrected interval of its fold ROC-AUCs, and the
    discrimination and calibration of its out-of-fold predictions averaged per row."""
    scores = rows.fold_scores()
    per_row = rows.by_row()
    return {
        "repeats": rows.repeats,
        "folds": len(scores) // max(rows.repeats, 1),
        "rows": len(per_row),
        "roc_auc": interval_json(repeated_cv_interval(scores, test_fraction)),
        "fold_roc_auc_sd": float(np.std(scores, ddof=1)),
        "out_of_fold": population_json(per_row),
        "calibration_curve": curve_json(per_row.y, per_row.probability),
    }


def holdout_json(rows: PredictionSet) -> dict[str, Any]:
    return {
        **population_json(rows),
        "at_threshold": threshold_json(rows.y, rows.probability),
        "calibration_curve": curve_json(rows.y, rows.probability, bins=5),
    }


def site_json(rows: PredictionSet, missing_values: int, band: CalibrationBand) -> dict[str, Any]:
    """A site's numbers and whether the model may be used there as it is."""
    found = population_json(rows)
    cal = found["calibration"]
    problems = band.problems(cal["slope"], cal["intercept"])
    return {
        **found,
        "missing_values": missing_values,
        "recalibrate": bool(problems),
        "why": "; ".join(problems),
    }


def subgroups_json(per_row: PredictionSet, facts: RowFacts) -> dict[str, Any]:
    """Sex and age (< 55, ≥ 55) subgroups of the out-of-fold predictions (keys: ``female``,
    ``male``, ``age_under_55``, ``age_55_plus``)."""
    sex = np.asarray([facts.sex[r] for r in per_row.row_ids])
    age = np.asarray([facts.age[r] for r in per_row.row_ids])
    groups = {
        "female": sex == 0,
        "male": sex == 1,
        f"age_under_{AGE_CUT}": age < AGE_CUT,
        f"age_{AGE_CUT}_plus": age >= AGE_CUT,
    }
    return {name: population_json(_take(per_row, chosen)) for name, chosen in groups.items()}


def _take(rows: PredictionSet, chosen: np.ndarray) -> PredictionSet:
    return PredictionSet(
        rows.row_ids[chosen],
        rows.y[chosen],
        rows.probability[chosen],
        rows.repeat[chosen],
        rows.fold[chosen],
    )


def missing_tests_json(
    sets: Mapping[str, PredictionSet],
    maskings: Mapping[str, tuple[str, ...]],
    facts: RowFacts,
) -> dict[str, Any]:
    """What a missing test costs: out-of-fold ROC-AUC with the masking's fields removed, paired
    with the same rows complete (the masked predictions are of the first repeat's folds, so
    they are paired with that repeat's), and the ROC-AUC on the other sites' rows that really
    lack every one of those fields."""
    cv = sets[CV]
    plain = _take(cv, cv.repeat == 0)
    external = [rows for name, rows in sets.items() if name.startswith(SITE_PREFIX)]
    result: dict[str, Any] = {}
    for masking, fields in maskings.items():
        masked = sets[MASKED_PREFIX + masking]
        plain = plain.restricted_to(masked.row_ids)
        paired = paired_auc_difference(plain.y, masked.probability, plain.probability)
        lacking = [
            _take(rows, np.asarray([set(fields) <= facts.missing[r] for r in rows.row_ids]))
            for rows in external
        ]
        y = np.concatenate([rows.y for rows in lacking]) if lacking else np.zeros(0)
        p = np.concatenate([rows.probability for rows in lacking]) if lacking else np.zeros(0)
        result[masking] = {
            "fields": list(fields),
            "rows": len(masked),
            "roc_auc": interval_json(roc_auc_interval(masked.y, masked.probability)),
            "complete_roc_auc": paired.b,
            "delta_roc_auc": interval_json(paired.difference),
            "other_sites": {"rows": len(y), "roc_auc": auc_json(y, p)},
        }
    return result


def candidate_evidence(
    sets: Mapping[str, PredictionSet],
    *,
    test_fraction: float,
    facts: RowFacts,
    maskings: Mapping[str, tuple[str, ...]],
    missing_values: Mapping[str, int],
    band: CalibrationBand,
    sites: tuple[str, ...],
) -> dict[str, Any]:
    """Every number of one candidate, from its predictions table.

    ``missing_values``: missing values per scored site (from the data); ``sites``: the sites
    of the experiment, in order (the folds of leave-one-site-out).
    """
    cv = resampled_json(sets[CV], test_fraction)
    evidence: dict[str, Any] = {
        "cv": cv,
        "holdout": holdout_json(sets[HOLDOUT]),
        "sites": {
            name.removeprefix(SITE_PREFIX): site_json(
                rows, missing_values[name.removeprefix(SITE_PREFIX)], band
            )
            for name, rows in sets.items()
            if name.startswith(SITE_PREFIX)
        },
        "subgroups": subgroups_json(sets[CV].by_row(), facts),
        "missing_tests": missing_tests_json(sets, maskings, facts),
    }
    if LOSO in sets:
        loso = sets[LOSO]
        evidence["leave_one_site_out"] = {
            site: site_json(_take(loso, loso.fold == i), missing_values[site], band)
            for i, site in enumerate(sites)
        }
    if INTERNAL in sets:
        evidence["internal_validation"] = resampled_json(sets[INTERNAL], test_fraction)
    return evidence


def selection_scores(evidence: Mapping[str, Any]) -> dict[str, float]:
    """The scores selection may rank by (:data:`heartml.training.experiment.SelectionMetric`)."""
    return {
        "cv_roc_auc_mean": float(evidence["cv"]["roc_auc"]["estimate"]),
        "holdout_roc_auc": float(evidence["holdout"]["roc_auc"]["estimate"]),
    }
