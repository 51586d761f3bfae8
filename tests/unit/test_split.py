"""The held-out split and the cross-validation folds: stratified, reproducible, no leak, and
cross-validation with one shared preprocessing per fold gives what each pipeline gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from heartml.data.schema import FEATURE_NAMES, synthetic_rows
from heartml.training.candidates import build_candidate
from heartml.training.experiment import ExperimentConfig
from heartml.training.fit import (
    LabelledRows,
    cross_validate_repeat,
    plan_folds,
    plan_sites,
    split_data,
)


def config(seed: int = 42) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"version": 1, "split": {"seed": seed}, "candidates": {"knn": {}}}
    )


def labelled(n: int = 200, sites: tuple[str, ...] = ("cleveland",)) -> LabelledRows:
    values = synthetic_rows(n, seed=4)
    features = pd.DataFrame(values, columns=list(FEATURE_NAMES))
    rng = np.random.default_rng(0)
    risk = np.nan_to_num(values[:, FEATURE_NAMES.index("oldpeak")]) + rng.normal(0, 2, n)
    site = np.asarray([sites[i % len(sites)] for i in range(n)], dtype=object)
    lines = [sum(s == site[i] for s in site[:i]) + 1 for i in range(n)]
    ids = np.asarray([f"{s}:{line}" for s, line in zip(site, lines, strict=True)], dtype=object)
    return LabelledRows(features, (risk > 2).astype(np.int64), ids, site)


def test_same_seed_same_split_other_seed_other_split() -> None:
    rows = labelled()
    first, second = split_data(rows, config()), split_data(rows, config())
    assert first.test.ids.tolist() == second.test.ids.tolist()
    assert split_data(rows, config(1)).test.ids.tolist() != first.test.ids.tolist()


def test_split_is_stratified_twenty_percent_and_disjoint() -> None:
    rows = labelled()
    split = split_data(rows, config())
    assert len(split.test) == 40 and len(split.train) == 160
    assert not set(split.train.ids) & set(split.test.ids)
    assert abs(split.y_test.mean() - rows.target.mean()) < 0.02
    assert abs(split.y_train.mean() - rows.target.mean()) < 0.02


def test_with_several_sites_each_site_is_split_in_proportion() -> None:
    rows = labelled(400, ("cleveland", "hungarian"))
    split = split_data(rows, config())
    for site in ("cleveland", "hungarian"):
        assert (split.test.sites == site).sum() == 40


def test_fold_plan_puts_each_row_in_one_fold_per_repeat_stratified_and_seeded() -> None:
    rows = labelled()
    plan = plan_folds(rows, folds=5, repeats=3, seed=42)
    assert plan.shape == (3, 200)
    assert np.array_equal(plan, plan_folds(rows, folds=5, repeats=3, seed=42))
    assert not np.array_equal(plan[0], plan[1])  # each repeat shuffles anew
    for repeat in plan:
        assert sorted(np.bincount(repeat).tolist()) == [40] * 5
        for fold in range(5):
            assert abs(rows.target[repeat == fold].mean() - rows.target.mean()) < 0.03


def test_leave_one_site_out_is_a_plan_whose_folds_are_the_sites() -> None:
    rows = labelled(90, ("cleveland", "hungarian", "va"))
    plan = plan_sites(rows, ("cleveland", "hungarian", "va"))
    assert plan.shape == (1, 90)
    assert [("cleveland", "hungarian", "va")[f] for f in plan[0]] == rows.sites.tolist()


CANDIDATES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 0.3, "max_iter": 2000},
    "random_forest": {"n_estimators": 20, "max_depth": 4},
    "svm": {},
    "knn": {"n_neighbors": 7, "weights": "distance"},
}


def test_shared_preprocessing_gives_each_pipeline_s_own_predictions() -> None:
    # One preprocessing per fold, shared by the candidates, must be the very computation of
    # fitting each candidate's pipeline on the fold: otherwise the shortcut changes results.
    rows = labelled(150)
    folds = plan_folds(rows, folds=3, repeats=1, seed=7)[0]
    maskings = {"ca": ("ca",), "both": ("ca", "thal")}
    results = cross_validate_repeat(CANDIDATES, rows, folds, seed=42, maskings=maskings)
    for name, params in CANDIDATES.items():
        for fold in range(3):
            test, train = folds == fold, folds != fold
            pipeline = build_candidate(name, params, 42).fit(
                rows.features[train], rows.target[train]
            )
            x_test = rows.features[test]
            expected = pipeline.predict_proba(x_test)[:, 1]
            # Equal but for the last bits of BLAS sums over a matrix of another height.
            assert np.allclose(results[name].probability[test], expected, rtol=0, atol=1e-12)
            for masking, fields in maskings.items():
                masked = x_test.copy()
                masked.loc[:, list(fields)] = np.nan
                want = pipeline.predict_proba(masked)[:, 1]
                got = results[name].masked[masking][test]
                assert np.allclose(got, want, rtol=0, atol=1e-12), (name, masking)
        assert results[name].fold_scores.shape == (3,)
        assert np.all((results[name].fold_scores > 0.5) & (results[name].fold_scores <= 1))


def test_a_candidate_that_cannot_fit_fails_the_session_naming_it() -> None:
    from heartml.training.candidates import TrainingError

    rows = labelled(60)
    folds = plan_folds(rows, folds=3, repeats=1, seed=7)[0]
    with pytest.raises(TrainingError, match="candidate knn"):
        cross_validate_repeat({"knn": {"n_neighbors": 100}}, rows, folds, seed=42)
