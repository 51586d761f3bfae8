"""Training on a temporary SQLite store, checked with MlflowClient only.

The session-wide ``trained_root`` store is trained once, in this process; a second session runs
the real ``heartml train`` command on a copy of it.
"""

import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import invoke_heartml, make_settings, run_heartml
from heartml.data.download import download_data
from heartml.data.validate import load_dataset
from heartml.registry import configure_mlflow, read_with_client
from heartml.settings import Settings
from heartml.training.features import split_features_target
from heartml.training.train import train_candidates

# Two cheap candidates, one repeat: for what a session does, whatever it trains.
FAST_EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "experiment-fast.yaml"

pytestmark = pytest.mark.slow

METRICS = {
    "roc_auc", "roc_auc_low", "roc_auc_high", "cv_roc_auc", "cv_roc_auc_low", "cv_roc_auc_high",
    "cv_roc_auc_mean", "cv_roc_auc_sd", "oof_roc_auc", "oof_calibration_slope",
    "oof_calibration_intercept", "holdout_roc_auc", "holdout_roc_auc_low", "holdout_roc_auc_high",
    "holdout_calibration_slope", "holdout_calibration_intercept", "accuracy", "precision",
    "recall", "f1", "brier_score", "log_loss", "masked_all_optional_roc_auc",
    "masked_ca_delta_roc_auc", "subgroup_female_roc_auc", "subgroup_age_55_plus_roc_auc",
}  # fmt: skip
SITE_METRICS = (
    "roc_auc", "roc_auc_low", "roc_auc_high", "calibration_slope", "calibration_intercept",
    "mean_predicted", "prevalence", "rows", "missing_values",
)  # fmt: skip
OTHER_SITES = ("hungarian", "switzerland", "va")
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


def test_training_registers_every_candidate_tags_and_promotes_the_best(
    trained_root: Path, mirror: Path
) -> None:
    settings = make_settings(trained_root, mirror)
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
    metrics = run.data.metrics
    # roc_auc is the score selection used: the repeated-CV mean, with its interval; the
    # held-out score and its interval have tags of their own.
    assert tags["selection_metric"] == "cv_roc_auc_mean"
    assert tags["roc_auc"] == f"{metrics['cv_roc_auc_mean']:.4f}" == f"{metrics['roc_auc']:.4f}"
    assert tags["roc_auc_ci"] == f"{metrics['cv_roc_auc_low']:.4f}-{metrics['cv_roc_auc_high']:.4f}"
    assert tags["holdout_roc_auc"] == f"{metrics['holdout_roc_auc']:.4f}"
    assert tags["holdout_roc_auc_ci"] == (
        f"{metrics['holdout_roc_auc_low']:.4f}-{metrics['holdout_roc_auc_high']:.4f}"
    )
    assert tags["model_type"] == name.removeprefix("heart-disease-")
    for lineage in ("data_sha256", "data_sites", "split_seed", "split_test_size", "config_hash"):
        assert tags[lineage] == run.data.tags[lineage]
    # --list never shows best_model=true on a version whose roc_auc is lower than another's.
    all_scores = [
        float(v.tags["roc_auc"])
        for v in client.search_model_versions("name LIKE 'heart-disease-%'")
    ]
    assert float(tags["roc_auc"]) == max(all_scores)
    # The target: the chosen procedure's repeated CV over every Cleveland row.
    assert metrics["internal_cv_roc_auc"] >= 0.91
    assert metrics["internal_cv_roc_auc_low"] < metrics["internal_cv_roc_auc"]

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
        for site in OTHER_SITES:
            for metric in SITE_METRICS:
                assert f"site_{site}_{metric}" in child.data.metrics, (site, metric)
        assert "site_cleveland_roc_auc" not in child.data.metrics  # trained on it
        assert child.data.tags["serving_engine"] == "onnx"
        assert child.data.metrics["onnx_max_deviation"] <= 1e-5
        assert "model.n_neighbors" in child.data.params or child.data.tags["candidate"] != "knn"
        assert child.data.params["cv.repeats"] == "5"
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"predictions.csv", "model_card.md", "model_card.html", "model_card.json"} <= files
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots == {
            "plots/roc_curve.png", "plots/confusion_matrix.png",
            "plots/calibration_curve.png", "plots/feature_importance.png",
            "plots/calibration_sites.png",
        }  # fmt: skip


def test_every_version_loads_with_pyfunc_and_scores_every_row(
    trained_root: Path, mirror: Path
) -> None:
    # pyfunc is how `mlflow models serve` and any MLflow tool load a model.
    settings = make_settings(trained_root, mirror)
    client = client_for(settings)
    features, _ = split_features_target(load_dataset(settings).frame)
    versions = client.search_model_versions("name LIKE 'heart-disease-%'")
    assert len(versions) >= 5
    for version in versions:
        model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
        scores = np.asarray(model.predict(features))
        assert scores.shape == (303, 2), version.name
        assert np.allclose(scores.sum(axis=1), 1.0)
        assert ((scores >= 0) & (scores <= 1)).all()


def test_cli_second_session_adds_versions_keeps_one_best_and_same_metrics(
    tmp_path: Path, mirror: Path, empty_store: Path
) -> None:
    # Two sessions of the same quick experiment on a new store: what a second session does
    # does not depend on the candidates, and two of them cost less than one of the full one.
    settings = make_settings(tmp_path, mirror, experiment_config=FAST_EXPERIMENT)
    shutil.copy2(empty_store, tmp_path / "mlflow.db")
    download_data(settings)
    first = train_candidates(settings)
    client = client_for(settings)
    before = {
        v.tags["model_type"]: client.get_run(str(v.run_id)).data.metrics
        for v in client.search_model_versions("name LIKE 'heart-disease-%'")
    }
    assert len(before) == len(first.candidates) == 2
    # The real command, in its own process: its worker pool, output and exit code.
    result = run_heartml(settings, "train")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    versions = client.search_model_versions("name LIKE 'heart-disease-%'")
    assert len(versions) == 4
    assert len(best_versions(client)) == 1
    [(name, version, _)] = best_versions(client)
    assert version == 2
    assert f"Best model: {name}" in result.stdout
    shown = "heart-disease-logistic_regression/2, heart-disease-knn/2"
    assert f"Registered 2 versions: {shown}\n" in result.stdout
    for registered in versions:
        if registered.version == "2":
            # Same data and configuration: the same metrics, every run.
            metrics = client.get_run(str(registered.run_id)).data.metrics
            expected = before[registered.tags["model_type"]]
            assert metrics == pytest.approx(expected, abs=1e-12), registered.name
    # The equivalent retrain: training's promotion attempt paired it with the champion it
    # replaces on the same 61 held-out rows; identical predictions, a difference of exactly 0.
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "2"
    assert champion.tags["gate_verdict"] == "passed"
    assert champion.tags["gate_champion"] == f"{name}/1"
    assert champion.tags["gate_comparison"] == "paired, 61 rows"
    assert champion.tags["gate_delta_roc_auc_ci"] == "[+0.0000, +0.0000]"


WEAK_RETRAIN = """\
version: 1
data: {sites: [cleveland]}
split: {test_size: 0.2, stratify: true, seed: 42}
cv: {folds: 5, repeats: 1}
validation: {internal: false}
candidates:
  knn: {n_neighbors: 1}
"""


def test_the_gate_refuses_a_weak_retrain_with_the_interval(
    trained_settings: Settings, tmp_path: Path
) -> None:
    # A deliberately weak retrain (1-nearest neighbour) on the same data and split: one cheap
    # candidate, trained for real, then judged by `promote --auto` against the champion.
    config = tmp_path / "weak.yaml"
    config.write_text(WEAK_RETRAIN)
    trained = run_heartml(trained_settings, "train", "--config", str(config), "--no-promote")
    assert trained.returncode == 0, trained.stderr
    client = client_for(trained_settings)
    champion = client.get_model_version_by_alias("heart-disease-logistic_regression", "champion")

    refused = invoke_heartml(trained_settings, "promote", "--auto")
    assert refused.returncode == 2, refused.stdout
    [message] = [line for line in refused.stdout.splitlines() if "Not promoted" in line]
    found = re.search(
        r"heart-disease-knn/2 ROC-AUC (0\.\d{4}) vs champion heart-disease-logistic_regression/"
        rf"{champion.version} (0\.\d{{4}}): difference (-0\.\d{{4}}), 95 % CI \[(-0\.\d{{4}}), "
        r"([-+]0\.\d{4})\], beyond the non-inferiority margin -0\.0500 \(paired on the same 61 "
        r"held-out rows",
        message,
    )
    assert found, message
    weak, strong, delta, low, _ = (float(g) for g in found.groups())
    assert delta == pytest.approx(weak - strong, abs=2e-4) and low < -0.05
    # The refusal is on the weak version: its verdict and the numbers it rests on.
    version = client.get_model_version("heart-disease-knn", "2")
    assert version.tags["gate_verdict"] == "refused"
    assert version.tags["gate_delta_roc_auc"] == f"{delta:+.4f}"
    assert client.get_model_version_by_alias(champion.name, "champion").version == champion.version
    # --history lists the refused attempt with its verdict, beside the promotions.
    history = json.loads(invoke_heartml(trained_settings, "promote", "--history", "--json").stdout)
    [attempt] = [e for e in history if (e["name"], e["version"]) == ("heart-disease-knn", 2)]
    assert attempt["promoted"] is False and attempt["gate"]["verdict"] == "refused"
    shown = invoke_heartml(trained_settings, "promote", "--history").stdout
    assert "not promoted (the champion did not change)" in shown
