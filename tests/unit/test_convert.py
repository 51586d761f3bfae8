"""Each kind of fitted pipeline converts to an ONNX graph that reproduces it, or is refused.

Synthetic rows, a share of values missing (the real Cleveland check is
tests/model/test_onnx_engine.py, on the registered models).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from heartml.data.schema import FEATURE_NAMES, synthetic_rows
from heartml.model.convert import ConversionError, TrainingRows, convert_pipeline
from heartml.model.onnx_form import TOLERANCE, OnnxEngine
from heartml.training.candidates import build_candidate
from heartml.training.experiment import CANDIDATE_ESTIMATORS

SMALL: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 0.3, "max_iter": 500},
    "random_forest": {"n_estimators": 15, "max_depth": 4},
    "gradient_boosting": {"n_estimators": 20, "max_depth": 2, "subsample": 0.8},
    "svm": {"C": 1.0},
    "knn": {"n_neighbors": 7, "weights": "distance"},
    "extra_trees": {"n_estimators": 15, "max_depth": 4},
}


def synthetic(rows: int = 160, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    x = synthetic_rows(rows, seed=seed)
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    score = np.nan_to_num(x[:, 9]) + 0.5 * np.nan_to_num(x[:, 11]) - np.nan_to_num(x[:, 7]) / 60
    return frame, (score > np.nanmedian(score)).astype(np.int64)


def fitted(name: str, frame: pd.DataFrame | None = None) -> Any:
    features, target = synthetic()
    if frame is not None:
        features = features[list(frame.columns)]
    return build_candidate(name, SMALL[name], 42).fit(features, target)


def training_rows() -> TrainingRows:
    features, target = synthetic()
    return TrainingRows(features.to_numpy(dtype="float64"), target)


# Any warning fails it: none of the estimators' or converters' APIs used is deprecated (the
# SVM's probA_ and probB_, which skl2onnx's converter reads, go in scikit-learn 1.11).
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", sorted(CANDIDATE_ESTIMATORS))
def test_every_candidate_type_reproduces_its_pipeline(name: str) -> None:
    pipeline = fitted(name)
    form = convert_pipeline(pipeline, synthetic_rows(100, seed=3), training_rows())
    assert form.deviation <= TOLERANCE
    # Other rows than the ones it was checked on, NaNs included, at once and one by one.
    rows = synthetic_rows(300, seed=11)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    engine = OnnxEngine(form.graph)
    assert np.max(np.abs(engine.predict_proba(rows) - expected)) <= TOLERANCE
    for i in range(5):
        assert np.max(np.abs(engine.predict_proba(rows[i : i + 1]) - expected[i])) <= TOLERANCE


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_nearest_neighbours_match_exactly_on_their_own_training_rows(weights: str) -> None:
    # A training row sent again is at distance zero from itself: with distance weights
    # scikit-learn lets exact matches alone vote, and the graph must do the same.
    features, target = synthetic()
    pipeline = build_candidate("knn", {"n_neighbors": 7, "weights": weights}, 42)
    pipeline.fit(features, target)
    rows = features.to_numpy(dtype="float64")
    form = convert_pipeline(pipeline, rows, training_rows())
    assert form.deviation <= TOLERANCE
    if weights == "distance":
        # Each row's own outcome, as scikit-learn gives it (its distance to itself comes out
        # a hair above zero there, so its own weight only dominates); the graph's is exact.
        assert np.allclose(form.probe.expected[:, 1], target, rtol=0, atol=TOLERANCE)
        assert np.array_equal(OnnxEngine(form.graph).predict_proba(rows)[:, 1], target)


def test_nearest_neighbours_need_their_training_rows() -> None:
    with pytest.raises(ConversionError, match="rows it was fitted on"):
        convert_pipeline(fitted("knn"), synthetic_rows(20))


def test_the_checked_rows_and_probabilities_are_kept_for_serving() -> None:
    pipeline = fitted("logistic_regression")
    rows = synthetic_rows(40, seed=5)
    form = convert_pipeline(pipeline, rows)
    assert form is not None
    assert np.array_equal(form.probe.rows, rows, equal_nan=True)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.array_equal(form.probe.expected, expected)


def test_the_column_order_of_the_fitted_frame_does_not_matter() -> None:
    reversed_columns = pd.DataFrame(columns=list(reversed(FEATURE_NAMES)))
    pipeline = fitted("logistic_regression", reversed_columns)
    assert list(pipeline.feature_names_in_) == list(reversed(FEATURE_NAMES))
    form = convert_pipeline(pipeline, synthetic_rows(50, seed=8))  # rows in schema order
    assert form is not None and form.deviation <= TOLERANCE


def test_a_pipeline_skl2onnx_cannot_convert_is_a_one_line_error() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    features, target = synthetic()
    pipeline = Pipeline(
        [
            ("preprocess", FunctionTransformer(lambda x: np.nan_to_num(np.asarray(x)))),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(features, target)
    with pytest.raises(ConversionError) as error:
        convert_pipeline(pipeline, synthetic_rows(10))
    assert "\n" not in str(error.value)


def test_an_svc_that_scales_its_own_scores_is_refused() -> None:
    # SVC(probability=True) is deprecated: the SVM candidate is calibrated by a wrapper, and
    # an SVC with Platt scaling of its own is refused rather than converted half-right.
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC

    features, target = synthetic()
    candidate = fitted("svm")
    with pytest.warns(FutureWarning, match="probability"):
        scaling = Pipeline(
            [("preprocess", candidate.steps[0][1]), ("model", SVC(probability=True))]
        ).fit(features, target)
    with pytest.raises(ConversionError, match=r"SVC\(probability=True\) is not converted"):
        convert_pipeline(scaling, synthetic_rows(10))


def test_the_logistic_regression_is_folded_into_one_float64_linear_graph() -> None:
    import onnx

    pipeline = fitted("logistic_regression")
    model = onnx.load_from_string(convert_pipeline(pipeline, synthetic_rows(100, seed=3)).graph)
    graph = model.graph
    assert {n.op_type for n in graph.node} <= {
        "IsNaN", "Where", "MatMul", "Gather", "Equal", "Cast", "Add", "Sigmoid", "Sub", "Concat"
    }  # fmt: skip
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    # An unknown code matches no one-hot column, as handle_unknown="ignore" encodes it; a
    # missing value is imputed: scikit-learn's own answers, to float64 rounding.
    rows = synthetic_rows(300, seed=5)
    rows[::3, FEATURE_NAMES.index("cp")] = 9.0
    rows[1::3, FEATURE_NAMES.index("thal")] = np.nan
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    engine = OnnxEngine(model.SerializeToString())
    assert np.max(np.abs(engine.predict_proba(rows) - expected)) <= 1e-12


def test_a_preprocessing_that_does_not_fold_is_converted_by_skl2onnx() -> None:
    from sklearn.preprocessing import MinMaxScaler

    from heartml.model.convert import fold_logistic

    pipeline = fitted("logistic_regression")
    numeric = pipeline.steps[0][1].transformers[0][1]
    numeric.steps[1] = ("scale", MinMaxScaler())
    pipeline.fit(*synthetic())
    assert fold_logistic(pipeline.steps[0][1], pipeline.steps[-1][1]) is None
    form = convert_pipeline(pipeline, synthetic_rows(100, seed=3))
    assert form.deviation <= TOLERANCE


def test_a_field_read_twice_or_an_empty_selection_does_not_fold() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from heartml.model.convert import fold_logistic

    features, target = synthetic()
    twice = ColumnTransformer(
        [
            ("all", SimpleImputer(strategy="median"), list(FEATURE_NAMES)),
            ("age_again", SimpleImputer(strategy="mean"), ["age"]),
        ]
    )
    pipeline = Pipeline([("preprocess", twice), ("model", LogisticRegression(max_iter=20_000))])
    pipeline.fit(features, target)
    assert fold_logistic(pipeline.steps[0][1], pipeline.steps[-1][1]) is None
    # An empty selection is left unfitted by scikit-learn; the rest still folds.
    empty = ColumnTransformer(
        [
            ("all", SimpleImputer(strategy="median"), list(FEATURE_NAMES)),
            ("none", SimpleImputer(), []),
        ]
    )
    pipeline = Pipeline([("preprocess", empty), ("model", LogisticRegression(max_iter=20_000))])
    pipeline.fit(features, target)
    folded = fold_logistic(pipeline.steps[0][1], pipeline.steps[-1][1])
    assert folded is not None
    rows = synthetic_rows(50, seed=8)
    expected = pipeline.decision_function(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    imputed = np.where(np.isnan(rows), folded.fill, rows)
    assert np.allclose(folded.bias + imputed @ folded.weight, expected, atol=1e-9)


def test_a_batch_larger_than_a_run_is_scored_in_runs_with_the_same_numbers() -> None:
    from heartml.model.onnx_form import CHUNK_ROWS

    pipeline = fitted("logistic_regression")
    engine = OnnxEngine(convert_pipeline(pipeline, synthetic_rows(100, seed=3)).graph)
    rows = synthetic_rows(2 * CHUNK_ROWS + 5, seed=12)
    whole = engine.predict_proba(rows)
    assert whole.shape == (len(rows), 2)
    parts = [engine.predict_proba(rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
    assert np.array_equal(whole, np.concatenate(parts))
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    assert np.max(np.abs(whole - expected)) <= TOLERANCE
