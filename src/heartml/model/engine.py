"""The inference engine a served model runs on: ONNX Runtime, or its scikit-learn pipeline.

A registered model directory holds the ONNX form of its pipeline when the conversion was
faithful (:mod:`heartml.model.onnx_form`). Loading checks that graph again, here, against the
probabilities stored beside it, and serves it with ONNX Runtime: no scikit-learn, pandas or
training data needed. A model without an ONNX form (one registered before heartml converted),
or whose graph no longer reproduces its probe under this ONNX Runtime, is served by its
scikit-learn pipeline, loaded through ``mlflow.sklearn`` (which the slim serving image does
not carry: there such a model fails to load and the previous one keeps serving).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from heartml.data.schema import FEATURE_NAMES
from heartml.errors import one_line
from heartml.model.onnx_form import (
    TOLERANCE,
    OnnxEngine,
    Probe,
    Rows,
    find_onnx_files,
    largest_deviation,
)

logger = logging.getLogger(__name__)

EngineName = Literal["onnx", "sklearn"]


class Engine(Protocol):
    """Probabilities for rows of the 13 features in schema order (float64, NaN = missing)."""

    @property
    def name(self) -> EngineName: ...

    def predict_proba(self, rows: Rows) -> NDArray[np.floating[Any]]:
        """The (rows, 2) matrix of P(no disease), P(disease)."""
        ...


class SklearnEngine:
    """The fitted scikit-learn pipeline itself, on a DataFrame with the schema's columns."""

    name: EngineName = "sklearn"

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._columns = list(FEATURE_NAMES)

    def predict_proba(self, rows: Rows) -> NDArray[np.floating[Any]]:
        import pandas as pd

        result: NDArray[np.floating[Any]] = self.pipeline.predict_proba(
            pd.DataFrame(rows, columns=self._columns)
        )
        return result


def load_engine(model_dir: Path, threads: int = 1) -> Engine:
    """The engine for an MLflow model directory: its ONNX form when it has a faithful one
    (run on ``threads`` threads)."""
    files = find_onnx_files(model_dir)
    if files is not None:
        try:
            engine = OnnxEngine(files.graph.read_bytes(), threads)
            deviation = largest_deviation(engine, Probe.load(files.probe))
        except Exception as exc:  # ONNX Runtime and numpy raise their own types
            reason = f"cannot be run under this ONNX Runtime ({one_line(exc, 200)})"
        else:
            if deviation <= TOLERANCE:
                return engine
            reason = f"differs from its pipeline by {deviation:.3g} under this ONNX Runtime"
        logger.warning(
            "the ONNX form in %s %s; serving the scikit-learn pipeline", model_dir, reason
        )
    import mlflow.sklearn

    return SklearnEngine(mlflow.sklearn.load_model(str(model_dir)))
