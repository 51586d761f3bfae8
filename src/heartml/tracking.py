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

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from heartml.convert import OnnxForm
    from heartml.evaluate import Metrics
    from heartml.experiment import ExperimentConfig
    from heartml.settings import Settings

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
    }
)


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """What is logged for one candidate: its model, scores, importance and plots."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    probability: np.ndarray  # P(disease) on the held-out rows
    metrics: Metrics
    importance_kind: str
    importance: dict[str, float]
    plots: Mapping[str, bytes]  # artifact path -> PNG
    onnx: OnnxForm


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """Where a candidate ended up in MLflow."""

    name: str
    metrics: Metrics
    run_id: str
    model_name: str
    model_version: str


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
    candidate: CandidateRecord,
    settings: Settings,
    config: ExperimentConfig,
    x_train: pd.DataFrame,
    lineage: dict[str, str],
    experiment_id: str,
) -> CandidateResult:
    """One nested run: parameters, metrics, plots, importance, and the registered model."""
    import mlflow
    from mlflow.models import infer_signature

    from heartml.profile import write_profile

    model_name = f"{settings.model_prefix}{candidate.name}"
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=candidate.name, nested=True, tags=lineage
    ) as run:
        mlflow.set_tag("candidate", candidate.name)
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in sorted(candidate.params.items())},
                "estimator": type(candidate.model.steps[-1][1]).__name__,
                "experiment_version": config.version,
                "split.test_size": config.split.test_size,
                "split.seed": config.split.seed,
                "cv.folds": config.cv.folds,
            }
        )
        mlflow.log_metrics(candidate.metrics.as_dict())
        # How serving will run this model, and how far its ONNX form is from the pipeline.
        mlflow.set_tag("serving_engine", "onnx")
        mlflow.log_metric("onnx_max_deviation", candidate.onnx.deviation)
        with tempfile.TemporaryDirectory(prefix="heartml-plots-") as plots:
            for path, png in candidate.plots.items():
                Path(plots, path).write_bytes(png)
            mlflow.log_artifacts(plots, "plots")
        mlflow.log_dict(
            {"kind": candidate.importance_kind, "values": candidate.importance},
            "feature_importance.json",
        )

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
                # The ONNX graph and its probe, inside the model directory (heartml.onnx_model),
                # and the training rows' profile that serving measures drift against.
                extra_files=[
                    *onnx_files(candidate.onnx, Path(staging)),
                    profile := write_profile(x_train.to_numpy(dtype="float64"), Path(staging)),
                ],
                # MLflow loads the saved model through pyfunc and scores the input example before
                # registering it: every registered version is known to load the way serving loads.
                registered_model_name=model_name,
            )
            mlflow.log_artifact(profile)  # also on the run, beside the plots
    version = str(info.registered_model_version)
    return CandidateResult(candidate.name, candidate.metrics, run.info.run_id, model_name, version)


def onnx_files(onnx: OnnxForm, directory: Path) -> list[str]:
    """Write the ONNX files of a model into ``directory``; their paths for ``extra_files``."""
    from heartml.onnx_model import ONNX_FILE, PROBE_FILE

    (directory / ONNX_FILE).write_bytes(onnx.graph)
    onnx.probe.save(directory / PROBE_FILE)
    return [str(directory / ONNX_FILE), str(directory / PROBE_FILE)]


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas")
    ]


def log_session_summary(
    candidates: Sequence[CandidateRecord], y_test: np.ndarray, best: str
) -> None:
    """On the parent run: every candidate's ROC curve and the comparison table."""
    import mlflow

    from heartml.evaluate import plot_roc_curves

    curves = {c.name: c.probability for c in candidates}
    mlflow.log_figure(plot_roc_curves(y_test, curves), "plots/roc_curves.png")
    rows = [{"candidate": c.name, **c.metrics.as_dict()} for c in candidates]
    mlflow.log_dict({"columns": list(rows[0]), "rows": rows}, "comparison.json")
    header = "| " + " | ".join(rows[0]) + " |"
    lines = [header, "|" + "---|" * len(rows[0])]
    lines += [
        "| " + " | ".join(v if isinstance(v, str) else f"{v:.4f}" for v in row.values()) + " |"
        for row in rows
    ]
    mlflow.log_text("\n".join(lines) + "\n", "comparison.md")
    best_metrics = next(c.metrics for c in candidates if c.name == best)
    mlflow.log_metric("best_roc_auc", best_metrics.roc_auc)
    mlflow.set_tag("best_candidate", best)
