"""The updating procedure and its validation, pure: synthetic rows with a known miscalibration,
and the real VA rows' outcomes for the ROC-AUC a monotone update must keep."""

from __future__ import annotations

import numpy as np
import pytest

from heartml.adaptation.procedure import (
    AdaptationError,
    answered_rows,
    calibration_intervals,
    check_method,
    cross_validate,
    fold_plan,
    refused_by_field,
    run_procedure,
)
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES
from heartml.evidence.recalibration import Method, Recalibration
from heartml.evidence.stats import roc_auc


def _site(rows: int, slope: float, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from ``shift + slope · logit p``: a model miscalibrated for the site."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(0.0, 1.5, rows)
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(shift + slope * lp)))).astype(np.int64)
    return y, 1 / (1 + np.exp(-lp))


def test_a_miscalibrated_site_is_recalibrated_in_validation() -> None:
    y, p = _site(600, slope=0.5, shift=1.0)
    before = calibration_intervals(y, p)
    assert before["slope"]["high"] < 0.8
    validation = cross_validate(y, p, "auto", None, seed=1)
    after = calibration_intervals(y, validation.validated)
    assert after["slope"]["low"] <= 1.0 <= after["slope"]["high"]
    assert abs(after["difference"]["estimate"]) < 0.02
    assert validation.chosen == {"logistic": 50}


def test_a_calibrated_site_keeps_the_model() -> None:
    y, p = _site(600, slope=1.0, shift=0.0, seed=2)
    update = run_procedure(y, p, np.arange(y.size), "auto", None)
    assert update.method is Method.NONE
    assert update.test is not None and not update.test.tests[0].significant


def test_every_row_is_held_out_once_per_repeat_stratified() -> None:
    y, _ = _site(137, slope=1.0, shift=0.5, seed=3)
    plan = fold_plan(y, seed=4)
    assert plan.shape == (10, 137)
    for repeat in plan:
        counts = np.bincount(repeat)
        assert counts.max() - counts.min() <= 1
        events = [int(y[repeat == f].sum()) for f in range(5)]
        assert max(events) - min(events) <= 1
    assert np.array_equal(plan, fold_plan(y, seed=4))


def test_a_method_the_sample_cannot_support_is_refused_in_one_line() -> None:
    y = np.array([1] * 108 + [0] * 8)
    with pytest.raises(AdaptationError) as raised:
        check_method(Method.LOGISTIC, y, None)
    message = str(raised.value)
    assert "\n" not in message
    assert "108 with disease and 8 without" in message
    assert "at least 20 rows of each outcome" in message
    update = run_procedure(y, np.full(y.size, 0.5), np.arange(y.size), "auto", None)
    assert update.method is Method.NONE
    assert [str(c.method) for c in update.left_out] == ["intercept", "logistic"]


def test_monotone_update_keeps_va_roc_auc() -> None:
    """On the real VA outcomes (74 % with disease), any intercept or positive slope leaves the
    ROC-AUC exactly as it was."""
    import os
    from pathlib import Path

    from heartml.data.download import SITE_FILES

    source = os.environ.get("HEARTML_DATA_SOURCE", "")
    path = Path(source) / SITE_FILES["va"].filename
    if not path.is_file():
        pytest.skip("no local mirror of the UCI files")
    num = np.array([float(line.rsplit(",", 1)[1]) for line in path.read_text().splitlines()])
    y = (num > 0).astype(np.int64)
    p = np.random.default_rng(5).uniform(0.01, 0.99, y.size)
    for update in (
        Recalibration(Method.INTERCEPT, 1.63),
        Recalibration(Method.LOGISTIC, 1.43, 0.6),
        Recalibration(Method.LOGISTIC, -2.0, 3.0),
    ):
        assert roc_auc(y, update.apply(p)) == roc_auc(y, p)


def test_rows_lacking_a_required_field_are_refused_and_counted() -> None:
    row = np.array([EXAMPLE_PATIENT[f] for f in FEATURE_NAMES], dtype=np.float64)
    rows = np.vstack([row, row, row, row])
    rows[1, FEATURE_NAMES.index("trestbps")] = np.nan
    rows[2, FEATURE_NAMES.index("thalach")] = np.nan
    rows[2, FEATURE_NAMES.index("oldpeak")] = np.nan
    rows[3, FEATURE_NAMES.index("chol")] = np.nan  # optional: answered, imputed
    assert answered_rows(rows).tolist() == [True, False, False, True]
    assert refused_by_field(rows) == {"trestbps": 1, "thalach": 1, "oldpeak": 1}
