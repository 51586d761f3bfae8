"""`heartml train` on a temporary SQLite store, checked with MlflowClient only."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import make_settings, run_heartml
from heartml.data import load_dataset
from heartml.features import split_features_target
from heartml.registry import configure_mlflow, read_with_client
from heartml.settings import Settings
from heartml.train import train_candidates

pytestmark = pytest.mark.slow

METRICS = {
    "cv_roc_auc_mean", "cv_roc_auc_std", "roc_auc", "accuracy", "precision", "recall", "f1",
    "brier_score", "log_loss",
}  # fmt: skip
CANDIDATES = {"logistic_regression", "random_forest", "gradient_boosting", "svm", "knn"}


def client_for(settings: Settings) -> MlflowClient:
    # Both URIs: an earlier test in this process may have pointed the registry elsewhere.
    configure_mlflow(settings)
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def best_versions(client: MlflowClient) -> list[tuple[str, int, dict[str, str]]]:
    family = read_with_client(client, "heart-disease-")
    return [
        (v.name, v.version, v.tags) for v in family.versions if v.tags.get("best_model") == "true"
    ]


def test_cli_trains_registers_and_tags_the_best(tmp_path: Path, mirror: Path) -> None:
    settings = make_settings(tmp_path, mirror)
    assert run_heartml(settings, "data", "download").returncode == 0
    result = run_heartml(settings, "train")
    assert result.returncode == 0, result.stderr
    assert "Best model: heart-disease-" in result.stdout
    assert "Traceback" not in result.stderr

    client = client_for(settings)
    models = client.search_registered_models("name LIKE 'heart-disease-%'")
    assert {m.name for m in models} == {f"heart-disease-{c}" for c in CANDIDATES}
    for model in models:
        for registered in client.search_model_versions(f"name = '{model.name}'"):
            info = mlflow.models.get_model_info(f"models:/{model.name}/{registered.version}")
            assert info.signature is not None
            assert info.signature.inputs.input_names()[:3] == ["age", "sex", "cp"]
            assert registered.tags["model_type"] == model.name.removeprefix("heart-disease-")

    [(name, version, tags)] = best_versions(client)
    run_id = client.get_model_version(name, str(version)).run_id
    assert run_id is not None
    run = client.get_run(run_id)
    assert tags["roc_auc"] == f"{run.data.metrics['roc_auc']:.4f}"
    assert tags["model_type"] == name.removeprefix("heart-disease-")
    all_scores = [
        float(v.tags["roc_auc"])
        for v in client.search_model_versions("name LIKE 'heart-disease-%'")
    ]
    assert float(tags["roc_auc"]) == max(all_scores)

    # Training attempted the promotion: the best version is champion and in Production.
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == version
    assert champion.current_stage == "Production"


def test_runs_are_nested_and_fully_logged(trained_root: Path, mirror: Path) -> None:
    settings = make_settings(trained_root, mirror)
    client = client_for(settings)
    experiment = client.get_experiment_by_name("heart-disease-classification")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert {r.data.tags["candidate"] for r in children} == CANDIDATES
    parent = parents[0]
    for run in [parent, *children]:
        for tag in ("data_sha256", "git_commit", "config_hash"):
            assert run.data.tags.get(tag), (tag, run.info.run_name)
    assert len(parent.data.tags["data_sha256"]) == 64
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "comparison.md", "plots"} <= parent_files
    assert "plots/roc_curves.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert set(child.data.metrics) >= METRICS
        assert "model.n_neighbors" in child.data.params or child.data.tags["candidate"] != "knn"
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots == {
            "plots/roc_curve.png", "plots/confusion_matrix.png",
            "plots/calibration_curve.png", "plots/feature_importance.png",
        }  # fmt: skip


def test_best_model_loads_with_pyfunc_and_scores_all_rows(trained_root: Path, mirror: Path) -> None:
    settings = make_settings(trained_root, mirror)
    client = client_for(settings)
    [(name, version, _)] = best_versions(client)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    features, _ = split_features_target(load_dataset(settings).frame)
    scores = np.asarray(model.predict(features))
    assert scores.shape == (303, 2)
    assert np.allclose(scores.sum(axis=1), 1.0)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_every_candidate_loads_with_pyfunc_as_serving_loads_it(
    trained_root: Path, mirror: Path
) -> None:
    settings = make_settings(trained_root, mirror)
    client = client_for(settings)
    features, _ = split_features_target(load_dataset(settings).frame)
    versions = client.search_model_versions("name LIKE 'heart-disease-%'")
    assert len(versions) >= 5
    for version in versions:
        model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
        scores = np.asarray(model.predict(features.head(50)))
        assert scores.shape == (50, 2), version.name


def test_second_session_adds_versions_keeps_one_best_and_same_metrics(
    trained_settings: Settings,
) -> None:
    client = client_for(trained_settings)
    before = {
        v.tags["model_type"]: client.get_run(str(v.run_id)).data.metrics
        for v in client.search_model_versions("name LIKE 'heart-disease-%'")
    }
    result = train_candidates(trained_settings)
    versions = client.search_model_versions("name LIKE 'heart-disease-%'")
    assert len(versions) == 10
    assert len(best_versions(client)) == 1
    [(name, version, _)] = best_versions(client)
    assert version == 2
    assert result.best.model_name == name
    for candidate in result.candidates:
        # Same data and configuration: the same metrics, every run.
        assert candidate.metrics.as_dict() == pytest.approx(before[candidate.name], abs=1e-12)
