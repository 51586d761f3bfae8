"""The registered models are served by their ONNX form, which gives the pipeline's own
probabilities on every Cleveland row.

Training (the shared ``trained_root`` session) fits, converts and registers every candidate type
the experiment lists; each registered version is loaded the way serving loads it and compared
with its pipeline's ``predict_proba`` on all 303 rows, missing values included.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_settings
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES, OPTIONAL_FEATURES
from heartml.data.validate import load_dataset
from heartml.model.engine import load_engine
from heartml.model.onnx_form import TOLERANCE, OnnxFiles, Probe, find_onnx_files
from heartml.registry import configure_mlflow, read_family
from heartml.settings import Settings
from heartml.training.experiment import load_experiment
from heartml.training.features import split_features_target
from heartml.training.train import probe_rows_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(trained_root: Path, mirror: Path) -> Settings:
    settings = make_settings(trained_root, mirror)
    configure_mlflow(settings)
    return settings


@pytest.fixture(scope="module")
def features(settings: Settings) -> pd.DataFrame:
    return split_features_target(load_dataset(settings).frame)[0]


def test_every_candidate_is_served_with_its_pipelines_probabilities(
    settings: Settings, features: pd.DataFrame, trained_model_dirs: dict[str, Path]
) -> None:
    import mlflow.sklearn

    assert len(features) == 303
    assert features.isna().any(axis=None)  # the rows with missing ca / thal are in
    rows = features.to_numpy(dtype=np.float64)
    expected_types = set(load_experiment(settings.experiment_config).candidates)
    assert expected_types <= set(trained_model_dirs), "every candidate type should be registered"

    for model_type in sorted(expected_types):
        engine = load_engine(trained_model_dirs[model_type])
        assert engine.name == "onnx", model_type
        pipeline = mlflow.sklearn.load_model(str(trained_model_dirs[model_type]))
        expected = pipeline.predict_proba(features)
        served = engine.predict_proba(rows)
        assert served.shape == expected.shape
        gap = float(np.max(np.abs(served - expected)))
        assert gap <= TOLERANCE, f"{model_type}: {gap:.3g}"
        # One row at a time too, as /predict calls it.
        single = np.vstack([engine.predict_proba(rows[i : i + 1]) for i in range(len(rows))])
        assert float(np.max(np.abs(single - expected))) <= TOLERANCE, model_type
        # The predicted class is the pipeline's.
        assert np.array_equal(served.argmax(axis=1), pipeline.predict(features)), model_type


def test_the_model_keeps_every_row_it_was_checked_on(
    features: pd.DataFrame, trained_model_dirs: dict[str, Path]
) -> None:
    files = find_onnx_files(trained_model_dirs["logistic_regression"])
    assert files is not None
    assert files.graph.parent.name == "extra_files"
    probe = Probe.load(files.probe)
    rows = features.to_numpy(dtype=np.float64)
    # Every row, then every row again with a pattern of its optional fields missing: the graph
    # is checked on the imputation the API relies on for a null field.
    assert np.array_equal(probe.rows, probe_rows_of(rows), equal_nan=True)
    complete, masked = probe.rows[: len(rows)], probe.rows[len(rows) :]
    assert np.array_equal(complete, rows, equal_nan=True)
    required = [FEATURE_NAMES.index(f) for f in FEATURE_NAMES if f not in OPTIONAL_FEATURES]
    assert np.array_equal(masked[:, required], rows[:, required], equal_nan=True)
    optional = [FEATURE_NAMES.index(f) for f in OPTIONAL_FEATURES]
    assert np.isnan(masked[:, optional]).any(axis=1).all()  # each row lacks one at least


def copy_of(model_dir: Path, tmp_path: Path) -> tuple[Path, OnnxFiles]:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    files = find_onnx_files(copy)
    assert files is not None
    return copy, files


def test_a_graph_that_disagrees_at_load_is_not_served(
    trained_model_dirs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy, files = copy_of(trained_model_dirs["random_forest"], tmp_path)
    probe = Probe.load(files.probe)
    Probe(probe.rows, probe.expected + 0.01).save(files.probe)  # as a different runtime would
    with caplog.at_level(logging.WARNING, logger="heartml.model.engine"):
        engine = load_engine(copy)
    assert engine.name == "sklearn"
    assert "differs from its pipeline by 0.01" in caplog.text


def test_a_graph_the_runtime_cannot_load_is_not_served(
    trained_model_dirs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy, files = copy_of(trained_model_dirs["svm"], tmp_path)
    files.graph.write_bytes(files.graph.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="heartml.model.engine"):
        engine = load_engine(copy)
    assert engine.name == "sklearn"
    assert "cannot be run under this ONNX Runtime" in caplog.text


def test_an_unreadable_explainer_serves_the_model_without_explanations(
    trained_model_dirs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from heartml.serve.holder import load_model_dir

    copy, _ = copy_of(trained_model_dirs["logistic_regression"], tmp_path)
    (copy / "extra_files" / "explainer.npz").write_bytes(b"not a numpy archive")
    with caplog.at_level(logging.WARNING, logger="heartml.serve.holder"):
        loaded = load_model_dir(copy)
    assert loaded.explainer is None
    assert loaded.engine.name == "onnx"
    assert "explanations unavailable" in caplog.text


def test_risk_rises_with_st_depression_through_the_served_engine(
    settings: Settings, trained_model_dirs: dict[str, Path]
) -> None:
    champion = read_family(settings).champion
    assert champion is not None
    engine = load_engine(trained_model_dirs[str(champion.tags["model_type"])])
    base = np.array([[EXAMPLE_PATIENT[n] for n in FEATURE_NAMES]], dtype=np.float64)
    oldpeak = FEATURE_NAMES.index("oldpeak")
    low, high = base.copy(), base.copy()
    low[0, oldpeak], high[0, oldpeak] = 0.0, 5.0
    assert engine.predict_proba(high)[0, 1] > engine.predict_proba(low)[0, 1]
