"""The numpy predictor reproduces each kind of fitted pipeline, or falls back to one that does.

Synthetic rows only (the real Cleveland check is tests/model/test_fast_path.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from heartml.candidates import build_candidate
from heartml.experiment import CANDIDATE_ESTIMATORS
from heartml.schema import FEATURE_NAMES
from heartml.serve.fastpath import TOLERANCE, compile_predictor, probe_rows

SMALL: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 0.3, "max_iter": 500},
    "random_forest": {"n_estimators": 15, "max_depth": 4},
    "gradient_boosting": {"n_estimators": 20, "max_depth": 2, "subsample": 0.8},
    "svm": {"C": 1.0},
    "knn": {"n_neighbors": 7, "weights": "distance"},
    "extra_trees": {"n_estimators": 15, "max_depth": 4},
}


def synthetic(rows: int = 160, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    x = probe_rows(rows, seed=seed)
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    score = np.nan_to_num(x[:, 9]) + 0.5 * np.nan_to_num(x[:, 11]) - np.nan_to_num(x[:, 7]) / 60
    return frame, (score > np.nanmedian(score)).astype(np.int64)


def fitted(name: str, params: dict[str, Any] | None = None) -> Any:
    frame, target = synthetic()
    return build_candidate(name, params if params is not None else SMALL[name], 42).fit(
        frame, target
    )


@pytest.mark.parametrize("name", sorted(CANDIDATE_ESTIMATORS))
def test_every_candidate_type_compiles_to_numpy_and_matches(name: str) -> None:
    pipeline = fitted(name)
    predictor = compile_predictor(pipeline)
    assert predictor.mode.startswith("numpy:"), predictor.mode
    rows = probe_rows(300, seed=11)  # other rows than the compile-time probe, NaNs included
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.max(np.abs(predictor.predict_proba(rows) - expected)) <= TOLERANCE
    for i in range(5):  # one row at a time, as /predict calls it
        single = predictor.predict_proba(rows[i : i + 1])
        assert np.max(np.abs(single - expected[i : i + 1])) <= TOLERANCE


def test_knn_rows_that_duplicate_training_rows_match_sklearn() -> None:
    frame, target = synthetic()
    pipeline = build_candidate("knn", SMALL["knn"], 42).fit(frame, target)
    predictor = compile_predictor(pipeline)
    expected = pipeline.predict_proba(frame)
    assert np.max(np.abs(predictor.predict_proba(frame.to_numpy()) - expected)) <= TOLERANCE


def test_an_estimator_without_a_numpy_form_is_called_on_the_numpy_matrix() -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    from heartml.features import build_preprocessor

    frame, target = synthetic()
    pipeline = Pipeline(
        [("preprocess", build_preprocessor()), ("model", DecisionTreeClassifier(max_depth=3))]
    ).fit(frame, target)
    predictor = compile_predictor(pipeline)
    assert predictor.mode == "estimator"
    rows = probe_rows(50, seed=5)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.max(np.abs(predictor.predict_proba(rows) - expected)) <= TOLERANCE


def test_unknown_preprocessing_falls_back_to_the_pipeline() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame, target = synthetic()
    pipeline = Pipeline(
        [
            ("preprocess", FunctionTransformer(lambda x: np.nan_to_num(np.asarray(x)))),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, target)
    predictor = compile_predictor(pipeline)
    assert predictor.mode == "pipeline"
    rows = probe_rows(20, seed=6)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.array_equal(predictor.predict_proba(rows), expected)


def test_column_order_of_the_fitted_frame_does_not_matter() -> None:
    frame, target = synthetic()
    shuffled = frame[list(reversed(FEATURE_NAMES))]
    pipeline = build_candidate("logistic_regression", SMALL["logistic_regression"], 42)
    pipeline.fit(shuffled, target)
    predictor = compile_predictor(pipeline)
    assert predictor.mode.startswith("numpy:")
    rows = probe_rows(40, seed=8)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.max(np.abs(predictor.predict_proba(rows) - expected)) <= TOLERANCE
