"""Every registered candidate explains its answers, as serving loads it, on every UCI row.

Training (the shared ``trained_root`` session) stores each candidate's explainer files beside
its ONNX form; here each version's model directory is loaded the way serving loads it, and on
every row of the four sites base + contributions equals the model's log-odds (scikit-learn's
decision function for the logistic regression, to 1e-9; the served probabilities' log-odds for
the others, to 1e-6). Then a real `heartml serve` answers explain=true over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import HeartmlServer, make_settings
from heartml.data.download import ALL_SITES
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES
from heartml.data.validate import load_dataset
from heartml.evidence.stats import logit
from heartml.model.engine import load_engine
from heartml.model.explain import load_explainer
from heartml.registry import configure_mlflow
from heartml.settings import Settings
from heartml.training.features import split_features_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(trained_root: Path, mirror: Path) -> Settings:
    settings = make_settings(trained_root, mirror)
    configure_mlflow(settings)
    return settings


@pytest.fixture(scope="module")
def every_row(settings: Settings) -> np.ndarray:
    features, _ = split_features_target(load_dataset(settings, ALL_SITES).frame)
    rows: np.ndarray = features.to_numpy(dtype=np.float64)
    return rows


def test_every_candidate_explains_every_uci_row(
    trained_model_dirs: dict[str, Path], every_row: np.ndarray
) -> None:
    import mlflow.sklearn

    assert len(every_row) == 920 and np.isnan(every_row).any()
    assert {"logistic_regression", "random_forest", "gradient_boosting", "svm", "knn"} <= set(
        trained_model_dirs
    )
    for model_type, directory in sorted(trained_model_dirs.items()):
        engine = load_engine(directory)
        explainer = load_explainer(directory, engine)
        assert explainer is not None, model_type
        explained = explainer.explain(every_row)
        total = explained.base + explained.contributions.sum(axis=1)
        if model_type == "logistic_regression":
            assert explained.method == "exact linear"
            pipeline = mlflow.sklearn.load_model(str(directory))
            frame = pd.DataFrame(every_row, columns=list(FEATURE_NAMES))
            gap = np.max(np.abs(total - pipeline.decision_function(frame)))
            assert gap <= 1e-9, gap
        else:
            assert explained.method.startswith("Shapley estimate"), model_type
            served = logit(engine.predict_proba(every_row)[:, 1])
            gap = np.max(np.abs(total - served))
            assert gap <= 1e-6, (model_type, gap)
        assert np.array_equal(explained.imputed, np.isnan(every_row))
        # The same numbers again: seeded by each row's bytes.
        again = explainer.explain(every_row[:5])
        assert np.array_equal(again.contributions, explained.contributions[:5])


def test_a_real_server_explains_over_http(trained_settings: Settings, tmp_path: Path) -> None:
    with HeartmlServer(trained_settings, tmp_path / "serve.log") as server:
        model = server.wait_ready()
        plain = httpx.post(f"{server.url}/predict", json=EXAMPLE_PATIENT, timeout=30)
        assert plain.status_code == 200 and "explanation" not in plain.json()
        answer = httpx.post(f"{server.url}/predict?explain=true", json=EXAMPLE_PATIENT, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["probability"] == plain.json()["probability"]
        explanation = body["explanation"]
        assert set(explanation["contributions"]) == set(FEATURE_NAMES)
        total = explanation["base"] + sum(explanation["contributions"].values())
        tolerance = 1e-9 if explanation["method"] == "exact linear" else 1e-6
        assert abs(total - explanation["log_odds"]) <= tolerance
        assert abs(1 / (1 + np.exp(-explanation["log_odds"])) - body["probability"]) <= 1e-5
        assert len(explanation["top"]) == 3, model

        patients = [EXAMPLE_PATIENT, {**EXAMPLE_PATIENT, "ca": None, "thal": None}]
        batch = httpx.post(
            f"{server.url}/predict/batch?explain=true", json={"instances": patients}, timeout=30
        )
        assert batch.status_code == 200, batch.text
        first, second = (p["explanation"] for p in batch.json()["predictions"])
        # The same numbers as the single answer (a batch's matrix product may round the last
        # digit differently).
        assert first["top"] == explanation["top"]
        assert abs(first["log_odds"] - explanation["log_odds"]) <= 1e-12
        for name, value in explanation["contributions"].items():
            assert abs(first["contributions"][name] - value) <= 1e-12
        assert second["imputed"] == ["ca", "thal"]
        assert any("(imputed)" in reason for reason in second["top"]) or all(
            not reason.startswith(("ca ", "thal ")) for reason in second["top"]
        )
        bad = httpx.post(f"{server.url}/predict?explain=perhaps", json=EXAMPLE_PATIENT)
        assert bad.status_code == 422
