"""A recalibrated graph gives what the Python computation gives, on every row."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from heartml.data.schema import synthetic_rows
from heartml.evidence.recalibration import Method, Recalibration
from heartml.model.convert import convert_pipeline
from heartml.model.onnx_form import OnnxEngine
from heartml.model.recalibrated import recalibrated_graph
from heartml.training.features import build_preprocessor


@pytest.fixture(scope="module")
def graph_and_rows() -> tuple[bytes, np.ndarray]:
    import pandas as pd

    from heartml.data.schema import FEATURE_NAMES

    rows = synthetic_rows(400, seed=11)
    frame = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    y = (rows[:, FEATURE_NAMES.index("oldpeak")] > 1.0).astype(int)
    pipeline = Pipeline([("preprocess", build_preprocessor()), ("model", LogisticRegression())])
    pipeline.fit(frame, y)
    return convert_pipeline(pipeline, rows).graph, rows


@pytest.mark.parametrize(("intercept", "slope"), [(1.3, 0.45), (-0.4, 1.0), (0.0, 2.5)])
def test_the_graph_matches_the_python_update(
    graph_and_rows: tuple[bytes, np.ndarray], intercept: float, slope: float
) -> None:
    graph, rows = graph_and_rows
    before = OnnxEngine(graph).predict_proba(rows)
    after = OnnxEngine(recalibrated_graph(graph, intercept, slope)).predict_proba(rows)
    expected = Recalibration(Method.LOGISTIC, intercept, slope).apply(before[:, 1])
    assert after.dtype == before.dtype
    assert np.max(np.abs(after[:, 1] - expected)) <= 1e-6
    assert np.max(np.abs(after.sum(axis=1) - 1.0)) <= 1e-6
    one = OnnxEngine(recalibrated_graph(graph, intercept, slope)).predict_proba(rows[:1])
    assert abs(float(one[0, 1]) - expected[0]) <= 1e-6


def test_the_identity_update_changes_nothing(graph_and_rows: tuple[bytes, np.ndarray]) -> None:
    graph, rows = graph_and_rows
    before = OnnxEngine(graph).predict_proba(rows)
    after = OnnxEngine(recalibrated_graph(graph, 0.0, 1.0)).predict_proba(rows)
    assert np.max(np.abs(after - before)) <= 1e-6


def test_a_graph_whose_output_is_read_inside_it_stays_valid() -> None:
    """An SVM's graph feeds its probabilities to an ArgMax for the label as well."""
    import pandas as pd
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from heartml.data.schema import FEATURE_NAMES

    rows = synthetic_rows(300, seed=12)
    frame = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    y = (rows[:, FEATURE_NAMES.index("oldpeak")] > 1.0).astype(int)
    svm = CalibratedClassifierCV(SVC(), method="sigmoid", ensemble=False, cv=3)
    pipeline = Pipeline([("preprocess", build_preprocessor()), ("model", svm)]).fit(frame, y)
    graph = convert_pipeline(pipeline, rows).graph
    before = OnnxEngine(graph).predict_proba(rows)
    after = OnnxEngine(recalibrated_graph(graph, 0.3, 0.8)).predict_proba(rows)
    expected = Recalibration(Method.LOGISTIC, 0.3, 0.8).apply(before[:, 1])
    assert np.max(np.abs(after[:, 1] - expected)) <= 1e-6
