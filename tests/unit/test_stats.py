"""The statistics module against definitions written out the slow way, and known limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from heartml.evidence.stats import (
    Z_95,
    calibration,
    calibration_curve,
    logit,
    paired_auc_difference,
    repeated_cv_interval,
    roc_auc,
    roc_auc_interval,
    unpaired_auc_difference,
)


def _brute_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components straight from the definition, O(m·n) per model."""
    pos, neg = y.astype(bool), ~y.astype(bool)
    v10, v01 = [], []
    for s in scores:
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = pos.sum(), neg.sum()
    aucs = np.array([v.mean() for v in v10])
    cov = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    return aucs, np.atleast_2d(cov)


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    a = y * 0.8 + rng.normal(0, 0.7, y.size)
    # b shares part of a's noise (two models of the same rows are correlated) and has ties.
    b = np.round(y * 0.5 + 0.6 * (a - y * 0.8) + rng.normal(0, 0.5, y.size), 1)
    return y, a, b


def test_auc_and_its_interval_match_the_definition(rows: tuple[np.ndarray, ...]) -> None:
    y, a, _ = rows
    interval = roc_auc_interval(y, a)
    aucs, cov = _brute_delong(y, [a])
    assert interval.estimate == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    half = Z_95 * math.sqrt(cov[0, 0])
    assert interval.low == pytest.approx(aucs[0] - half, abs=1e-12)
    assert interval.high == pytest.approx(aucs[0] + half, abs=1e-12)


def test_paired_difference_uses_the_covariance_of_both_models(
    rows: tuple[np.ndarray, ...],
) -> None:
    y, a, b = rows
    paired = paired_auc_difference(y, a, b)
    aucs, cov = _brute_delong(y, [a, b])
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert paired.a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert paired.b == pytest.approx(roc_auc_score(y, b), abs=1e-12)  # ties count one half
    assert paired.difference.estimate == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert paired.difference.high - paired.difference.estimate == pytest.approx(Z_95 * se)
    assert paired.p_value == pytest.approx(math.erfc(abs(aucs[0] - aucs[1]) / se / math.sqrt(2)))
    assert paired.rows == y.size
    # Pairing matters: correlated models have a narrower interval than independent ones.
    unpaired = math.sqrt(cov[0, 0] + cov[1, 1])
    assert se < unpaired


def test_a_model_compared_with_itself_differs_by_exactly_zero(
    rows: tuple[np.ndarray, ...],
) -> None:
    y, a, _ = rows
    paired = paired_auc_difference(y, a, a.copy())
    assert paired.difference.estimate == 0.0
    assert paired.difference.low == 0.0 == paired.difference.high
    assert paired.p_value == 1.0


def test_auc_needs_both_outcomes() -> None:
    with pytest.raises(ValueError, match="both outcomes"):
        roc_auc_interval([1, 1, 1], [0.2, 0.5, 0.9])


def test_repeated_cv_interval_is_the_corrected_resampled_t() -> None:
    from scipy.stats import t

    scores = np.array([0.85, 0.9, 0.95, 0.88, 0.92, 0.87, 0.91, 0.93, 0.86, 0.9])
    interval = repeated_cv_interval(scores, test_fraction=0.25)
    variance = (1 / 10 + 0.25) * scores.var(ddof=1)
    half = t.ppf(0.975, 9) * math.sqrt(variance)
    assert interval.estimate == pytest.approx(scores.mean())
    assert interval.low == pytest.approx(scores.mean() - half)
    assert interval.high == pytest.approx(scores.mean() + half)
    # Wider than the naive interval that treats the folds as independent.
    naive = t.ppf(0.975, 9) * scores.std(ddof=1) / math.sqrt(10)
    assert half > naive


def test_calibration_matches_an_unpenalised_logistic_fit() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 2000)
    # Outcomes drawn from a distorted version of p: true logit = 0.3 + 0.6 * logit(p).
    y = (rng.uniform(size=p.size) < 1 / (1 + np.exp(-(0.3 + 0.6 * logit(p))))).astype(int)
    result = calibration(y, p)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)
    reference.fit(logit(p).reshape(-1, 1), y)
    assert result.slope == pytest.approx(reference.coef_[0][0], abs=1e-6)
    assert result.slope == pytest.approx(0.6, abs=0.1)
    assert result.mean_predicted == pytest.approx(p.mean())
    assert result.observed == pytest.approx(y.mean())
    assert result.rows == 2000


def test_a_calibrated_model_has_slope_one_and_intercept_zero() -> None:
    rng = np.random.default_rng(11)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    result = calibration(y, p)
    assert result.slope == pytest.approx(1.0, abs=0.05)
    assert result.intercept == pytest.approx(0.0, abs=0.05)


def test_risks_too_high_give_a_negative_intercept() -> None:
    rng = np.random.default_rng(5)
    true = rng.uniform(0.05, 0.6, 5000)
    y = (rng.uniform(size=true.size) < true).astype(int)
    inflated = 1 / (1 + np.exp(-(logit(true) + 1.0)))  # every risk overstated
    assert calibration(y, inflated).intercept == pytest.approx(-1.0, abs=0.1)


def test_separable_outcomes_give_no_made_up_slope() -> None:
    result = calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert math.isnan(result.slope)


def test_roc_auc_is_scikit_learn_s_with_ties(rows: tuple[np.ndarray, ...]) -> None:
    y, _, b = rows  # b has ties
    assert roc_auc(y, b) == pytest.approx(roc_auc_score(y, b), abs=1e-12)


def test_an_unpaired_difference_adds_the_two_delong_variances(
    rows: tuple[np.ndarray, ...],
) -> None:
    y, a, b = rows
    first, second = slice(0, 70), slice(70, None)
    result = unpaired_auc_difference(y[first], a[first], y[second], b[second])
    (auc_a,), cov_a = _brute_delong(y[first], [a[first]])
    (auc_b,), cov_b = _brute_delong(y[second], [b[second]])
    se = math.sqrt(cov_a[0, 0] + cov_b[0, 0])
    assert result.difference.estimate == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert result.difference.low == pytest.approx(auc_a - auc_b - Z_95 * se, abs=1e-12)
    assert result.difference.high == pytest.approx(auc_a - auc_b + Z_95 * se, abs=1e-12)
    assert result.rows == y.size
    assert result.p_value == pytest.approx(math.erfc(abs(auc_a - auc_b) / se / math.sqrt(2)))


def _wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval from its textbook form."""
    p, z = k / n, Z_95
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_the_calibration_curve_is_equal_size_groups_with_wilson_intervals() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 103)
    y = (rng.uniform(size=p.size) < p).astype(int)
    bins = calibration_curve(y, p, bins=10)
    assert [b.rows for b in bins] == [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]
    order = np.argsort(p, kind="mergesort")
    start = 0
    for b in bins:
        group = order[start : start + b.rows]
        start += b.rows
        assert b.mean_predicted == pytest.approx(p[group].mean())
        assert b.observed == pytest.approx(y[group].mean())
        low, high = _wilson(int(y[group].sum()), b.rows)
        assert b.low == pytest.approx(max(0.0, low), abs=1e-12)
        assert b.high == pytest.approx(min(1.0, high), abs=1e-12)
        assert b.low <= b.observed <= b.high
    assert [b.mean_predicted for b in bins] == sorted(b.mean_predicted for b in bins)
