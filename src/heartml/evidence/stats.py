"""The statistics a promotion decision rests on: intervals, paired differences, calibration.

Pure numpy (and scipy's t quantile): arrays in, small frozen results out, no I/O. Training uses
them to score candidates, the promotion gate to compare a challenger with the champion, the
model card and the monitoring report to show the same numbers.

- ROC-AUC and its variance follow DeLong, DeLong & Clarke-Pearson (1988), computed with the
  midrank algorithm of Sun & Xu (2014); two models scored on the *same* rows get the variance
  of their difference from the same structural components (the paired test).
- A mean over repeated k-fold cross-validation gets the corrected resampled t interval of
  Nadeau & Bengio (2003): fold scores share most of their training rows, so the naive standard
  error of their mean is far too small.
- Calibration is summarised as Van Calster et al. (2019) recommend: the calibration slope
  (logistic regression of the outcome on the logit of the prediction) and the calibration
  intercept (calibration-in-the-large: the same regression with the logit as an offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
# Predictions are clipped this far from 0 and 1 before taking logits: a model that says 0 or 1
# exactly would otherwise give an infinite logit and no calibration fit at all.
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_tag(self, digits: int = 4) -> str:
        """``low-high``, the format of the ``*_ci`` registry tags."""
        return f"{self.low:.{digits}f}-{self.high:.{digits}f}"

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """``a - b`` for two models scored on the same rows, with its interval and p-value."""

    a: float
    b: float
    difference: Interval
    rows: int
    p_value: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """How far predicted risks are from observed frequencies.

    ``slope`` 1 and ``intercept`` 0 are perfect; a slope below 1 means predictions that are too
    extreme (typical of a model used outside the population it was fitted on), an intercept
    below 0 risks that are too high on average.
    """

    slope: float
    intercept: float
    mean_predicted: float
    observed: float
    rows: int


def _labels_and_scores(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[np.newaxis, :]
    if s.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but {s.shape[1]} scores per model")
    if y.all() or not y.any():
        raise ValueError("ROC-AUC needs both outcomes among the rows")
    return y, s


def _midranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Ranks 1..n along the last axis, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ranked = np.take_along_axis(values, order, axis=-1)
    result = np.empty_like(values)
    for row in range(values.shape[0]):
        sorted_row = ranked[row]
        # Boundaries of runs of equal values; each run gets the mean of its 1-based ranks.
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        ends = np.r_[starts[1:], sorted_row.size]
        mean_rank = (starts + ends + 1) / 2.0
        result[row, order[row]] = np.repeat(mean_rank, ends - starts)
    return result


def _delong(
    y: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The AUC of every row of ``scores`` and their DeLong covariance matrix."""
    positives, negatives = scores[:, y], scores[:, ~y]
    m, n = positives.shape[1], negatives.shape[1]
    within_pos = _midranks(positives)
    within_neg = _midranks(negatives)
    overall = _midranks(np.concatenate([positives, negatives], axis=1))
    auc = (overall[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    # Structural components: each positive's share of negatives it outranks, and vice versa.
    v_pos = (overall[:, :m] - within_pos) / n
    v_neg = 1.0 - (overall[:, m:] - within_neg) / m
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return auc, cov


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """ROC-AUC (the Mann-Whitney statistic, ties counting one half)."""
    y, s = _labels_and_scores(y_true, scores)
    ranks = _midranks(s[:1])[0]
    m, n = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() / m - (m + 1) / 2.0) / n)


def roc_auc_interval(y_true: ArrayLike, scores: ArrayLike, level: float = 0.95) -> Interval:
    """ROC-AUC with DeLong's interval (normal approximation, clipped to [0, 1])."""
    y, s = _labels_and_scores(y_true, scores)
    auc, cov = _delong(y, s[:1])
    z = _z(level)
    half = z * math.sqrt(max(float(cov[0, 0]), 0.0))
    estimate = float(auc[0])
    return Interval(estimate, max(0.0, estimate - half), min(1.0, estimate + half), level)


def paired_auc_difference(
    y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, level: float = 0.95
) -> PairedDifference:
    """AUC(a) - AUC(b) on the same rows, with DeLong's paired interval and two-sided p-value."""
    y, s = _labels_and_scores(y_true, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
    auc, cov = _delong(y, s)
    difference = float(auc[0] - auc[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(variance, 0.0))
    z = _z(level)
    if se == 0.0:  # identical rankings: no doubt about a difference of exactly zero
        p_value = 1.0 if difference == 0.0 else 0.0
    else:
        p_value = math.erfc(abs(difference) / se / math.sqrt(2.0))
    return PairedDifference(
        a=float(auc[0]),
        b=float(auc[1]),
        difference=Interval(difference, difference - z * se, difference + z * se, level),
        rows=int(y.size),
        p_value=p_value,
    )


def unpaired_auc_difference(
    y_a: ArrayLike,
    scores_a: ArrayLike,
    y_b: ArrayLike,
    scores_b: ArrayLike,
    level: float = 0.95,
) -> PairedDifference:
    """AUC(a) - AUC(b) for two models scored on *different* rows: independent samples, so the
    variance of the difference is the sum of the two DeLong variances (``rows``: both counts).
    Wider than the paired interval, which should be used whenever the rows can be shared."""
    ya, sa = _labels_and_scores(y_a, scores_a)
    yb, sb = _labels_and_scores(y_b, scores_b)
    auc_a, cov_a = _delong(ya, sa[:1])
    auc_b, cov_b = _delong(yb, sb[:1])
    difference = float(auc_a[0] - auc_b[0])
    se = math.sqrt(max(float(cov_a[0, 0] + cov_b[0, 0]), 0.0))
    z = _z(level)
    if se == 0.0:
        p_value = 1.0 if difference == 0.0 else 0.0
    else:
        p_value = math.erfc(abs(difference) / se / math.sqrt(2.0))
    return PairedDifference(
        a=float(auc_a[0]),
        b=float(auc_b[0]),
        difference=Interval(difference, difference - z * se, difference + z * se, level),
        rows=int(ya.size + yb.size),
        p_value=p_value,
    )


def repeated_cv_interval(
    fold_scores: ArrayLike, test_fraction: float, level: float = 0.95
) -> Interval:
    """Mean of repeated k-fold scores with Nadeau & Bengio's corrected resampled t interval.

    ``test_fraction`` is n_test / n_train of one fold (1 / (k - 1) for k folds): the term that
    accounts for the overlap of training sets between folds.
    """
    from scipy.stats import t

    scores = np.asarray(fold_scores, dtype=np.float64).ravel()
    if scores.size < 2:
        raise ValueError("an interval needs at least two fold scores")
    mean = float(scores.mean())
    variance = (1.0 / scores.size + test_fraction) * float(scores.var(ddof=1))
    half = float(t.ppf(0.5 + level / 2.0, scores.size - 1)) * math.sqrt(variance)
    return Interval(mean, max(0.0, mean - half), min(1.0, mean + half), level)


def logit(probability: ArrayLike) -> NDArray[np.float64]:
    p = np.clip(np.asarray(probability, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    result: NDArray[np.float64] = np.log(p / (1.0 - p))
    return result


def calibration(y_true: ArrayLike, probability: ArrayLike) -> Calibration:
    """Calibration slope and intercept (Van Calster et al. 2019), by Newton's method."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(probability, dtype=np.float64).ravel()
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    if y.size == 0:
        raise ValueError("calibration needs at least one row")
    lp = logit(p)
    design = np.column_stack([np.ones_like(lp), lp])
    _, slope = logistic_fit(y, design, offset=np.zeros_like(lp))
    (intercept,) = logistic_fit(y, design[:, :1], offset=lp)
    return Calibration(
        slope=float(slope),
        intercept=float(intercept),
        mean_predicted=float(p.mean()),
        observed=float(y.mean()),
        rows=int(y.size),
    )


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    """One group of rows of similar predicted risk: their mean prediction, the observed
    frequency of the outcome with its Wilson interval, and how many rows."""

    mean_predicted: float
    observed: float
    low: float
    high: float
    rows: int


def calibration_curve(
    y_true: ArrayLike, probability: ArrayLike, bins: int = 10, level: float = 0.95
) -> tuple[CalibrationBin, ...]:
    """The calibration curve by groups of equal size (deciles of predicted risk by default).

    Rows are sorted by prediction (ties kept in input order) and cut into ``bins`` groups whose
    sizes differ by at most one; each group's observed frequency gets a Wilson score interval,
    which stays inside [0, 1] for the small groups of a 60-row split.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(probability, dtype=np.float64).ravel()
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    bins = max(1, min(bins, y.size))
    order = np.argsort(p, kind="mergesort")
    z = _z(level)
    result = []
    for group in np.array_split(order, bins):
        n = group.size
        observed = float(y[group].mean())
        centre = (observed + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(observed * (1 - observed) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        result.append(
            CalibrationBin(
                mean_predicted=float(p[group].mean()),
                observed=observed,
                # Clipped so that rounding never puts the observed value outside its interval.
                low=min(max(0.0, centre - half), observed),
                high=max(min(1.0, centre + half), observed),
                rows=int(n),
            )
        )
    return tuple(result)


def logistic_fit(
    y: NDArray[np.float64], design: NDArray[np.float64], offset: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Maximum-likelihood coefficients of ``logit P(y) = offset + design @ beta``.

    Newton-Raphson from zero; a separable outcome (all rows one class, or perfectly ordered)
    has no finite maximum and comes back as ±inf or nan rather than a made-up number.
    """
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        eta = offset + design @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        gradient = design.T @ (y - mu)
        hessian = design.T @ (design * (mu * (1.0 - mu))[:, np.newaxis])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return np.full(design.shape[1], np.nan)
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 1e6:
            return np.full(design.shape[1], np.nan)
        if np.abs(step).max() < 1e-10:
            return beta
    return beta


def _z(level: float) -> float:
    if level == 0.95:
        return Z_95
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))
