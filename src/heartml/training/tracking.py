"""Tracking: log a training session and register its candidates in MLflow.

The only training module that imports MLflow. It receives what the workers prepared
(fitted pipelines, metrics, rendered plots) and writes it: one parent run per session, one
nested run per candidate whose model is registered as ``<prefix><candidate>``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.evidence.card import write_card_files
from heartml.evidence.predictions import PREDICTIONS_ARTIFACT, write_predictions
from heartml.training.card import Headline, SessionContext, build_card, headline, version_tags

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from heartml.evidence.predictions import PredictionSet
    from heartml.model.convert import OnnxForm
    from heartml.settings import Settings
    from heartml.training.experiment import ExperimentConfig

MODEL_ARTIFACT = "model"

# Types a fitted heartml pipeline holds that skops does not trust by default, reviewed one by
# one: all scikit-learn or numpy internals. They are recorded in each model's MLmodel, and
# loading (pyfunc or skops) refuses any type not on this list, so a pipeline change that brings
# a new type fails the registration check and the load tests instead of being trusted blindly.
SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",  # dtype attributes of imputers and encoders
        "sklearn.tree._tree.Tree",  # random_forest, gradient_boosting, extra_trees
        "sklearn.calibration._CalibratedClassifier",  # svm: Platt scaling
        "sklearn.calibration._SigmoidCalibration",
        "heartml.model.recalibrated_classifier.RecalibratedClassifier",  # a site's adapted model
    }
)


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """What is logged for one candidate: its model, predictions, numbers, plots and ONNX form."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    sets: Mapping[str, PredictionSet]  # the predictions table (heartml.evidence.predictions)
    evidence: Mapping[str, Any]  # its numbers (heartml.evidence.measures)
    importance_kind: str
    importance: dict[str, float]
    plots: Mapping[str, bytes]  # artifact path under plots/ -> PNG
    onnx: OnnxForm


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """Where a candidate ended up in MLflow, its headline numbers and its version's tags."""

    name: str
    scores: Headline
    run_id: str
    model_name: str
    model_version: str
    tags: dict[str, str]


def git_commit() -> str:
    """The commit being trained, for lineage: Jenkins' GIT_COMMIT, else git, else 'unknown'."""
    if commit := os.environ.get("GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def open_store(settings: Settings) -> str:
    """Import what logging needs and make sure the experiment exists; returns its id.

    On an authenticated registry the account must be allowed to log runs there: checked now,
    so that a refusal comes before the candidates are logged, in one line.
    """
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401

    from heartml import registry

    registry.configure_mlflow(settings)
    experiment_id = registry.ensure_experiment(settings)
    registry.require_experiment_access(settings, experiment_id)
    return experiment_id


def log_candidate(
    candidate: CandidateRecord, settings: Settings, session: SessionContext
) -> CandidateResult:
    """One nested run: parameters, metrics, predictions, plots, the registered model, its card."""
    import mlflow
    from mlflow.models import infer_signature

    from heartml.data.profile import write_profile
    from heartml.model.explainer_files import build_explainer

    config = session.config
    model_name = f"{settings.model_prefix}{candidate.name}"
    with mlflow.start_run(
        experiment_id=session.experiment_id,
        run_name=candidate.name,
        nested=True,
        # Given at once, as the metrics below: each separate call is a write to the store.
        # serving_engine: how serving will run this model.
        tags={**session.lineage, "candidate": candidate.name, "serving_engine": "onnx"},
    ) as run:
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in sorted(candidate.params.items())},
                "estimator": type(candidate.model.steps[-1][1]).__name__,
                "experiment_version": config.version,
                "split.test_size": config.split.test_size,
                "split.seed": config.split.seed,
                "cv.folds": config.cv.folds,
                "cv.repeats": config.cv.repeats,
                "selection.primary_metric": config.selection.primary_metric,
            }
        )
        mlflow.log_metrics(
            {
                **run_metrics(candidate.evidence, config),
                # How far the ONNX form serving runs is from the pipeline.
                "onnx_max_deviation": candidate.onnx.deviation,
            }
        )
        mlflow.log_text(write_predictions(candidate.sets), PREDICTIONS_ARTIFACT)
        mlflow.log_dict(
            {"kind": candidate.importance_kind, "values": candidate.importance},
            "feature_importance.json",
        )

        x_train = session.split.x_train
        example = x_train.head(5)
        signature = infer_signature(example, candidate.model.predict_proba(example))
        with tempfile.TemporaryDirectory(prefix="heartml-onnx-") as staging:
            info = mlflow.sklearn.log_model(
                candidate.model,
                name=MODEL_ARTIFACT,
                serialization_format="skops",
                # The reviewed list, not whatever the model holds: loading refuses anything else.
                skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
                signature=signature,
                input_example=example,
                # Probabilities, not labels, are what a risk model serves.
                pyfunc_predict_fn="predict_proba",
                # Explicit requirements: inferring them would re-import the model in a subprocess.
                pip_requirements=pip_requirements(),
                # The ONNX graph and its probe, inside the model directory
                # (heartml.model.onnx_form), and the training rows' profile that serving
                # measures drift against.
                extra_files=[
                    *onnx_files(candidate.onnx, Path(staging)),
                    profile := write_profile(x_train.to_numpy(dtype="float64"), Path(staging)),
                    # What explain=true answers with (heartml.model.explain).
                    *build_explainer(
                        candidate.model,
                        x_train.to_numpy(dtype="float64"),
                        config.split.seed,
                    ).save(Path(staging)),
                ],
                # MLflow loads the saved model through pyfunc and scores the input example before
                # registering it: every registered version is known to load the way serving loads.
                registered_model_name=model_name,
            )
            mlflow.log_artifact(profile)  # also on the run, beside the plots
        version = str(info.registered_model_version)
        card = build_card(
            candidate.name,
            candidate.params,
            session,
            model_name=model_name,
            version=version,
            run_id=run.info.run_id,
        )
        with tempfile.TemporaryDirectory(prefix="heartml-card-") as staging:
            directory = Path(staging)
            for path, png in candidate.plots.items():
                (directory / "plots").mkdir(exist_ok=True)
                (directory / "plots" / path).write_bytes(png)
            write_card_files(card, directory)
            mlflow.log_artifacts(staging)
    return CandidateResult(
        candidate.name,
        headline(candidate.evidence, config),
        run.info.run_id,
        model_name,
        version,
        version_tags(candidate.name, candidate.evidence, config, session.lineage),
    )


def run_metrics(evidence: Mapping[str, Any], config: ExperimentConfig) -> dict[str, float]:
    """The candidate's numbers as MLflow metrics (the card holds them all; these are what the
    UI compares across runs). Undefined numbers (a site with one outcome) are left out."""
    metrics: dict[str, float | None] = {}

    def interval(prefix: str, found: Mapping[str, float | None] | None) -> None:
        if found is not None:
            metrics[prefix] = found["estimate"]
            metrics[f"{prefix}_low"] = found["low"]
            metrics[f"{prefix}_high"] = found["high"]

    def population(prefix: str, found: Mapping[str, Any]) -> None:
        interval(f"{prefix}_roc_auc", found["roc_auc"])
        metrics[f"{prefix}_calibration_slope"] = found["calibration"]["slope"]
        metrics[f"{prefix}_calibration_intercept"] = found["calibration"]["intercept"]
        metrics[f"{prefix}_mean_predicted"] = found["mean_predicted"]
        metrics[f"{prefix}_prevalence"] = found["prevalence"]
        metrics[f"{prefix}_rows"] = found["rows"]

    cv, holdout = evidence["cv"], evidence["holdout"]
    selection = headline(evidence, config)
    metrics["roc_auc"] = selection.score.estimate
    metrics["roc_auc_low"] = selection.score.low
    metrics["roc_auc_high"] = selection.score.high
    interval("cv_roc_auc", cv["roc_auc"])
    metrics["cv_roc_auc_mean"] = cv["roc_auc"]["estimate"]
    metrics["cv_roc_auc_sd"] = cv["fold_roc_auc_sd"]
    population("oof", cv["out_of_fold"])
    population("holdout", holdout)
    metrics.update(holdout["at_threshold"])
    for key in ("sites", "leave_one_site_out"):
        for site, found in evidence.get(key, {}).items():
            population(f"site_{site}", found)
            metrics[f"site_{site}_missing_values"] = found["missing_values"]
    for name, found in evidence["subgroups"].items():
        population(f"subgroup_{name}", found)
    for masking, found in evidence["missing_tests"].items():
        interval(f"masked_{masking}_roc_auc", found["roc_auc"])
        interval(f"masked_{masking}_delta_roc_auc", found["delta_roc_auc"])
    if "internal_validation" in evidence:
        interval("internal_cv_roc_auc", evidence["internal_validation"]["roc_auc"])
    return {k: float(v) for k, v in metrics.items() if v is not None}


def onnx_files(onnx: OnnxForm, directory: Path) -> list[str]:
    """Write the ONNX files of a model into ``directory``; their paths for ``extra_files``."""
    from heartml.model.onnx_form import ONNX_FILE, PROBE_FILE

    (directory / ONNX_FILE).write_bytes(onnx.graph)
    onnx.probe.save(directory / PROBE_FILE)
    return [str(directory / ONNX_FILE), str(directory / PROBE_FILE)]


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas")
    ]


def log_session_summary(
    candidates: Sequence[CandidateRecord], session: SessionContext, roc_curves: bytes
) -> None:
    """On the parent run: every candidate's held-out ROC curve (``roc_curves``, the PNG of
    :func:`heartml.training.plots.draw_roc_curves`) and the comparison table."""
    import mlflow

    from heartml.training.card import comparison_rows, comparison_table

    with tempfile.TemporaryDirectory(prefix="heartml-summary-") as staging:
        figure = Path(staging) / "roc_curves.png"
        figure.write_bytes(roc_curves)
        mlflow.log_artifact(str(figure), "plots")
    rows = comparison_rows(session)
    mlflow.log_dict({"rows": rows}, "comparison.json")
    mlflow.log_text(comparison_table(session) + "\n", "comparison.md")
    best = headline(session.evidence[session.best], session.config)
    mlflow.log_metric("best_roc_auc", best.score.estimate)
    mlflow.set_tag("best_candidate", session.best)
