"""The ONNX form of a registered pipeline: the files it adds to an MLflow model, and its runtime.

At registration (:mod:`heartml.model.convert`) each candidate's whole pipeline is converted to ONNX
and checked against the pipeline's own ``predict_proba``. Two files then go into the MLflow
model directory through ``mlflow.sklearn.log_model(extra_files=...)``, which copies them to
``<model>/extra_files/`` and lists them in the ``sklearn`` flavour of ``MLmodel``:

* ``pipeline.onnx``: the graph. Input ``features``: float64 rows of the 13 features in schema
  order, NaN for a missing value. Output ``probabilities``: P(no disease), P(disease).
* ``onnx_probe.npz``: the rows it was checked on (every row trained on) and the pipeline's
  probabilities for them, so that serving can check the graph again without scikit-learn or
  the data.

This module needs numpy, PyYAML and ONNX Runtime only: it is what serving imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

ONNX_FILE = "pipeline.onnx"
PROBE_FILE = "onnx_probe.npz"
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"

# The largest difference from the pipeline's probability that the ONNX form may show, at
# registration and when serving loads it. Measured: at most 7e-7 (float32 inside the trees).
TOLERANCE = 1e-5

Rows = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Probe:
    """Rows and the pipeline's own probabilities for them: what the graph must reproduce."""

    rows: Rows
    expected: NDArray[np.float64]

    def save(self, path: Path) -> None:
        np.savez(path, rows=self.rows, expected=self.expected)

    @classmethod
    def load(cls, path: Path) -> Probe:
        with np.load(path, allow_pickle=False) as stored:
            return cls(rows=stored["rows"], expected=stored["expected"])


@dataclass(frozen=True, slots=True)
class OnnxFiles:
    """Where the ONNX files of a model directory are."""

    graph: Path
    probe: Path


def find_onnx_files(model_dir: Path) -> OnnxFiles | None:
    """The ONNX files a model directory lists in its ``MLmodel``, or None when it has none."""
    import yaml

    meta: Any = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    flavor = (meta or {}).get("flavors", {}).get("sklearn", {})
    listed = {
        Path(entry["path"]).name: model_dir / entry["path"]
        for entry in flavor.get("extra_files") or []
    }
    graph, probe = listed.get(ONNX_FILE), listed.get(PROBE_FILE)
    if graph is None or probe is None or not graph.is_file() or not probe.is_file():
        return None
    return OnnxFiles(graph=graph, probe=probe)


# Rows per run of a graph. A graph's operators each pass over their whole input, so a large
# batch leaves the caches between them: measured (one thread, rows per run, ns a row) the
# logistic regression 194 at 65,536, 165 at 8,192; the SVM 2,135 and 1,735; gradient boosting
# 1,829 and 1,763; a random forest 3,454 and 3,409. Below ~4,096 the per-run cost shows.
CHUNK_ROWS = 8_192


class OnnxEngine:
    """An ONNX Runtime session over one graph: float64 rows in, probabilities out."""

    name: Literal["onnx"] = "onnx"

    def __init__(self, graph: bytes, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread by default: a serving worker answers one request at a time on a 2-core
        # machine, and ONNX Runtime's spinning pool threads would take the core the event loop
        # needs. A batch scorer, with large batches and nothing else to run, may ask for more.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        self._session: InferenceSession = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"]
        )
        self._outputs = [OUTPUT_NAME]
        self._graph = graph

    def __reduce__(self) -> tuple[type[OnnxEngine], tuple[bytes]]:
        # Pickled as its graph (a session cannot be): how the server hands its challenger to
        # the shadow process, which builds its own session.
        return OnnxEngine, (self._graph,)

    def predict_proba(self, rows: Rows) -> NDArray[np.floating[Any]]:
        """The (rows, 2) matrix of P(no disease), P(disease); more than ``CHUNK_ROWS`` rows
        are run ``CHUNK_ROWS`` at a time."""
        if len(rows) <= CHUNK_ROWS:
            return self._run(rows)
        first = self._run(rows[:CHUNK_ROWS])
        result = np.empty((len(rows), first.shape[1]), dtype=first.dtype)
        result[:CHUNK_ROWS] = first
        for start in range(CHUNK_ROWS, len(rows), CHUNK_ROWS):
            result[start : start + CHUNK_ROWS] = self._run(rows[start : start + CHUNK_ROWS])
        return result

    def _run(self, rows: Rows) -> NDArray[np.floating[Any]]:
        result: NDArray[np.floating[Any]] = self._session.run(self._outputs, {INPUT_NAME: rows})[0]
        return result


def largest_deviation(engine: OnnxEngine, probe: Probe) -> float:
    """How far the engine is from the probe's probabilities: all rows at once, and one by one
    (as ``/predict`` calls it)."""
    batch = float(np.max(np.abs(engine.predict_proba(probe.rows) - probe.expected)))
    single = max(
        float(np.max(np.abs(engine.predict_proba(probe.rows[i : i + 1]) - probe.expected[i])))
        for i in range(len(probe.rows))
    )
    return max(batch, single)
