"""A candidate's numbers from its predictions table, against their definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, f1_score, log_loss, roc_auc_score

from heartml.evidence.measures import (
    CalibrationBand,
    RowFacts,
    candidate_evidence,
    selection_scores,
    threshold_json,
)
from heartml.evidence.predictions import PredictionSet, prediction_set, resampled_set
from heartml.evidence.stats import calibration, paired_auc_difference, repeated_cv_interval

BAND = CalibrationBand(0.7, 1.3, 0.35)


def make_sets(seed: int = 1) -> tuple[dict[str, PredictionSet], RowFacts]:
    rng = np.random.default_rng(seed)
    n = 120
    ids = np.array([f"cleveland:{i + 1}" for i in range(n)], dtype=object)
    y = (rng.uniform(size=n) < 0.45).astype(int)
    plan = np.vstack([rng.permutation(np.arange(n) % 4) for _ in range(3)])
    signal = y * 1.5 + rng.normal(0, 1, (3, n))
    cv = resampled_set(ids, y, plan, 1 / (1 + np.exp(-signal + 0.7)))
    masked = resampled_set(ids, y, plan[:1], 1 / (1 + np.exp(-signal[:1] * 0.6 + 0.4)))
    site_ids = np.array([f"va:{i + 1}" for i in range(80)], dtype=object)
    site_y = (rng.uniform(size=80) < 0.75).astype(int)
    site_p = 1 / (1 + np.exp(-(site_y * 0.8 + rng.normal(0, 1, 80) - 0.5)))
    hold_y = np.tile([0, 1], 15)
    sets = {
        "cv": cv,
        "cv_masked:ca": masked,
        "holdout": prediction_set(
            [f"cleveland:{200 + i}" for i in range(30)],
            hold_y,
            1 / (1 + np.exp(-(hold_y * 1.2 + rng.normal(0, 1, 30) - 0.6))),
        ),
        "site:va": prediction_set(site_ids, site_y, site_p),
    }
    facts = RowFacts(
        sex={**{r: float(i % 2) for i, r in enumerate(ids)}, **dict.fromkeys(site_ids, 1.0)},
        age={**{r: 40.0 + i % 30 for i, r in enumerate(ids)}, **dict.fromkeys(site_ids, 60.0)},
        missing={
            **{r: frozenset() for r in ids},
            **{r: frozenset({"ca"}) if i % 2 else frozenset() for i, r in enumerate(site_ids)},
        },
    )
    return sets, facts


def evidence_of(sets: dict[str, PredictionSet], facts: RowFacts) -> dict[str, Any]:
    return candidate_evidence(
        sets,
        test_fraction=1 / 3,
        facts=facts,
        maskings={"ca": ("ca",)},
        missing_values={"va": 17, "cleveland": 0},
        band=BAND,
        sites=("cleveland",),
    )


def test_cross_validation_numbers_follow_their_definitions() -> None:
    sets, facts = make_sets()
    found = evidence_of(sets, facts)
    cv = sets["cv"]
    scores = [
        roc_auc_score(cv.y[(cv.repeat == r) & (cv.fold == f)],
                      cv.probability[(cv.repeat == r) & (cv.fold == f)])
        for r in range(3) for f in range(4)
    ]  # fmt: skip
    interval = repeated_cv_interval(scores, 1 / 3)
    assert found["cv"]["roc_auc"]["estimate"] == pytest.approx(np.mean(scores), abs=1e-12)
    assert found["cv"]["roc_auc"]["low"] == pytest.approx(interval.low, abs=1e-12)
    assert (found["cv"]["repeats"], found["cv"]["folds"], found["cv"]["rows"]) == (3, 4, 120)
    per_row = cv.probability.reshape(3, -1).mean(axis=0)
    oof = found["cv"]["out_of_fold"]
    assert oof["roc_auc"]["estimate"] == pytest.approx(roc_auc_score(cv.y[:120], per_row))
    assert oof["calibration"]["slope"] == pytest.approx(calibration(cv.y[:120], per_row).slope)
    assert sum(b["rows"] for b in found["cv"]["calibration_curve"]) == 120
    assert selection_scores(found) == {
        "cv_roc_auc_mean": found["cv"]["roc_auc"]["estimate"],
        "holdout_roc_auc": found["holdout"]["roc_auc"]["estimate"],
    }


def test_threshold_metrics_are_scikit_learn_s() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50)
    p = rng.uniform(size=50)
    found = threshold_json(y, p)
    assert found["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    assert found["brier_score"] == pytest.approx(brier_score_loss(y, p))
    assert found["log_loss"] == pytest.approx(log_loss(y, p))


def test_a_site_outside_the_band_is_flagged_with_its_numbers() -> None:
    sets, facts = make_sets()
    va = evidence_of(sets, facts)["sites"]["va"]
    rows = sets["site:va"]
    cal = calibration(rows.y, rows.probability)
    assert va["rows"] == 80 and va["missing_values"] == 17
    assert va["prevalence"] == pytest.approx(rows.y.mean())
    assert va["mean_predicted"] == pytest.approx(rows.probability.mean())
    assert va["calibration"]["intercept"] == pytest.approx(cal.intercept)
    assert va["recalibrate"] == bool(BAND.problems(cal.slope, cal.intercept))
    assert va["recalibrate"]  # a 75 % prevalence scored near 45 %
    assert "intercept" in va["why"]


def test_the_band_says_what_is_outside_it() -> None:
    assert BAND.problems(1.0, 0.0) == []
    assert BAND.problems(0.5, 0.0) == ["calibration slope 0.50 outside [0.7, 1.3]"]
    assert BAND.problems(1.0, -0.4) == ["calibration intercept -0.40 beyond ±0.35"]
    assert len(BAND.problems(None, None)) == 2  # no finite fit is no calibration


def test_a_missing_test_is_paired_with_the_same_repeat_complete() -> None:
    sets, facts = make_sets()
    found = evidence_of(sets, facts)["missing_tests"]["ca"]
    complete = sets["cv"].probability[:120]  # repeat 0
    masked = sets["cv_masked:ca"]
    paired = paired_auc_difference(masked.y, masked.probability, complete)
    assert found["delta_roc_auc"]["estimate"] == pytest.approx(paired.difference.estimate)
    assert found["complete_roc_auc"] == pytest.approx(roc_auc_score(masked.y, complete))
    # The other sites' rows that really lack ca: every second VA row.
    va = sets["site:va"]
    lacking = np.arange(80) % 2 == 1
    assert found["other_sites"]["rows"] == 40
    assert found["other_sites"]["roc_auc"]["estimate"] == pytest.approx(
        roc_auc_score(va.y[lacking], va.probability[lacking])
    )


def test_subgroups_split_the_out_of_fold_rows_by_sex_and_age() -> None:
    sets, facts = make_sets()
    groups = evidence_of(sets, facts)["subgroups"]
    assert list(groups) == ["female", "male", "age_under_55", "age_55_plus"]
    assert groups["female"]["rows"] + groups["male"]["rows"] == 120
    assert groups["age_under_55"]["rows"] + groups["age_55_plus"]["rows"] == 120
