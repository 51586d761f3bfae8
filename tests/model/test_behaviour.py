"""Behavioural tests of the trained models: quality, invariance, direction."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import make_settings
from heartml.data.validate import load_dataset
from heartml.registry import configure_mlflow, read_family
from heartml.settings import Settings
from heartml.training.features import split_features_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(trained_root: Path, mirror: Path) -> Settings:
    settings = make_settings(trained_root, mirror)
    # Both URIs: an earlier test in this process may have pointed the registry elsewhere.
    configure_mlflow(settings)
    return settings


@pytest.fixture(scope="module")
def features(settings: Settings) -> pd.DataFrame:
    return split_features_target(load_dataset(settings).frame)[0]


def load(settings: Settings, model_type: str) -> object:
    family = read_family(settings)
    version = next(v for v in family.versions if v.tags.get("model_type") == model_type)
    return mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")


def test_best_held_out_roc_auc_is_at_least_085(settings: Settings) -> None:
    best = next(v for v in read_family(settings).versions if v.is_best)
    assert best.roc_auc is not None
    assert best.roc_auc >= 0.85


def test_every_candidate_beats_chance_clearly(settings: Settings) -> None:
    versions = read_family(settings).versions
    assert len(versions) >= 5
    for version in versions:
        assert version.roc_auc is not None and version.roc_auc >= 0.80, version.ref


def test_column_order_does_not_matter(settings: Settings, features: pd.DataFrame) -> None:
    best = next(v for v in read_family(settings).versions if v.is_best)
    model = mlflow.pyfunc.load_model(f"models:/{best.name}/{best.version}")
    shuffled = features[list(reversed(features.columns))]
    assert np.array_equal(np.asarray(model.predict(features)), np.asarray(model.predict(shuffled)))


def risk_along(model: object, base: pd.DataFrame, column: str, values: list[float]) -> np.ndarray:
    rows = pd.concat([base.assign(**{column: v}) for v in values], ignore_index=True)
    risk: np.ndarray = model.predict_proba(rows)[:, 1]  # type: ignore[attr-defined]
    return risk


@pytest.mark.parametrize(
    ("column", "values"), [("oldpeak", [0.0, 1.0, 2.0, 3.0, 4.0]), ("ca", [0, 1, 2, 3])]
)
def test_linear_model_risk_rises_with(
    settings: Settings, features: pd.DataFrame, column: str, values: list[float]
) -> None:
    model = load(settings, "logistic_regression")
    for index in (0, 10, 100, 200):
        risks = risk_along(model, features.iloc[[index]], column, values)
        assert np.all(np.diff(risks) > 0), (index, risks)
