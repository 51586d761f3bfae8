"""Recalibration and Vergouwe's closed test on outcomes drawn from a known truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from heartml.evidence.recalibration import (
    Method,
    Recalibration,
    closed_test,
    fit_recalibration,
    likelihood_ratio,
    log_likelihood,
    sample_check,
)
from heartml.evidence.stats import logit, roc_auc


def drawn(
    intercept: float, slope: float, rows: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A model's probabilities and outcomes drawn from ``logit P = intercept + slope·logit p``."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, rows)))
    truth = 1.0 / (1.0 + np.exp(-(intercept + slope * logit(p))))
    return (rng.random(rows) < truth).astype(np.float64), p


def test_intercept_and_logistic_fits_recover_the_truth() -> None:
    y, p = drawn(0.8, 0.5, 20_000)
    assert fit_recalibration(y, p, Method.LOGISTIC).intercept == pytest.approx(0.8, abs=0.06)
    assert fit_recalibration(y, p, Method.LOGISTIC).slope == pytest.approx(0.5, abs=0.04)
    y, p = drawn(-0.7, 1.0, 20_000, seed=1)
    update = fit_recalibration(y, p, Method.INTERCEPT)
    assert update.slope == 1.0
    assert update.intercept == pytest.approx(-0.7, abs=0.06)


def test_the_fitted_update_is_calibrated_on_its_rows() -> None:
    y, p = drawn(1.2, 0.4, 3_000, seed=2)
    updated = fit_recalibration(y, p, Method.LOGISTIC).apply(p)
    assert updated.mean() == pytest.approx(y.mean(), abs=1e-8)  # the score equation of a
    again = fit_recalibration(y, updated, Method.LOGISTIC)
    assert again.intercept == pytest.approx(0.0, abs=1e-6)
    assert again.slope == pytest.approx(1.0, abs=1e-6)


def test_a_monotone_update_leaves_the_roc_auc_unchanged() -> None:
    y, p = drawn(0.5, 0.6, 500, seed=3)
    for update in (
        fit_recalibration(y, p, Method.INTERCEPT),
        fit_recalibration(y, p, Method.LOGISTIC),
    ):
        assert update.monotone
        assert roc_auc(y, update.apply(p)) == roc_auc(y, p)
    assert not Recalibration(Method.LOGISTIC, 0.0, -1.0).monotone


@pytest.mark.parametrize(
    ("intercept", "slope", "expected"),
    [(0.0, 1.0, Method.NONE), (1.0, 1.0, Method.INTERCEPT), (0.5, 0.4, Method.LOGISTIC)],
)
def test_the_closed_test_updates_only_as_far_as_the_data_show(
    intercept: float, slope: float, expected: Method
) -> None:
    y, p = drawn(intercept, slope, 4_000, seed=4)
    found = closed_test(y, p)
    assert found.chosen is expected
    assert found.considered == (Method.NONE, Method.INTERCEPT, Method.LOGISTIC)
    assert found.tests[0].simpler is Method.NONE
    assert all(test.extensive is Method.LOGISTIC for test in found.tests)


def test_the_likelihood_ratio_is_the_textbook_one() -> None:
    y, p = drawn(0.6, 0.7, 800, seed=5)
    q = fit_recalibration(y, p, Method.LOGISTIC).apply(p)
    test = likelihood_ratio(y, (Method.NONE, p, 0), (Method.LOGISTIC, q, 2))
    statistic = 2 * (log_likelihood(y, q) - log_likelihood(y, p))
    assert test.statistic == pytest.approx(statistic)
    assert test.df == 2
    assert test.p_value == pytest.approx(chi2.sf(statistic, 2))


def test_a_sample_too_small_is_left_out_with_its_counts() -> None:
    y = np.array([1.0] * 115 + [0.0] * 8)
    p = np.full(y.size, 0.5)
    check = sample_check(Method.INTERCEPT, y)
    assert not check.ok
    assert check.message.startswith("115 with disease and 8 without: too few")
    assert "at least 10 rows of each outcome" in check.message
    found = closed_test(y, p)
    assert found.chosen is Method.NONE
    assert [c.method for c in found.left_out] == [Method.INTERCEPT, Method.LOGISTIC]
    assert found.fell_back
    assert sample_check(Method.INTERCEPT, np.array([1.0] * 10 + [0.0] * 10)).ok
    assert not sample_check(Method.LOGISTIC, np.array([1.0] * 19 + [0.0] * 40)).ok


def test_a_refit_is_the_most_extensive_model_when_the_sample_supports_it() -> None:
    y, p = drawn(0.0, 1.0, 2_000, seed=6)
    refit = np.clip(p + 0.0, 1e-6, 1 - 1e-6)
    found = closed_test(y, p, refit=(refit, 14))
    assert found.considered[-1] is Method.REFIT
    assert found.chosen is Method.NONE
    small = closed_test(y[:200], p[:200], refit=(refit[:200], 14))
    assert Method.REFIT not in small.considered
    assert [c.method for c in small.left_out] == [Method.REFIT]
