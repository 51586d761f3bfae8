"""A numpy equivalent of a fitted heartml pipeline, for the per-request path.

A fitted ``Pipeline([("preprocess", ColumnTransformer), ("model", estimator)])`` costs a pandas
frame, column selection and a dozen validation passes per call: hundreds of microseconds for
one row. :func:`compile_predictor` reads the fitted parameters once (imputation values, means
and scales, one-hot codes, and the estimator's coefficients, support vectors or trees) and
returns a :class:`Predictor` that does the same arithmetic on a plain float64 matrix.

It is never trusted blindly: after compiling, it is compared with the pipeline's own
``predict_proba`` on probe rows spanning the schema (missing values included) and on single
rows. Anything that differs by more than :data:`TOLERANCE`, and any step it does not know,
falls back to the next level: numpy preprocessing with the fitted estimator called on the
matrix (``estimator``), then the pipeline itself on a DataFrame (``pipeline``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from heartml.schema import FEATURE_NAMES, FEATURES

logger = logging.getLogger(__name__)

TOLERANCE = 1e-9

Matrix = NDArray[np.float64]


class UnsupportedModelError(Exception):
    """The pipeline holds a step the numpy path does not reproduce."""


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Block:
    """One transformer of the ColumnTransformer: its input columns and what it does to them."""

    columns: NDArray[np.intp]  # indexes into FEATURE_NAMES
    fill: Matrix | None  # imputation value per column (None: no imputer)
    mean: Matrix | None  # StandardScaler.mean_ (None: not centred)
    scale: Matrix | None  # StandardScaler.scale_ (None: not scaled)
    codes: tuple[Matrix, ...] | None  # OneHotEncoder.categories_ (None: no encoding)


@dataclass(frozen=True, slots=True)
class Preprocessor:
    """The fitted ColumnTransformer as arrays; ``transform`` gives the same matrix.

    Every output column is either ``(x[source] - offset) / scale`` (scaled, or passed through
    with offset 0 and scale 1, which leaves the value unchanged bit for bit) or the one-hot
    ``x[source] == code``; so a whole transform is one gather and four element-wise steps,
    whatever the number of rows.
    """

    fill: Matrix  # imputation value per input column (NaN: not imputed, NaN stays NaN)
    source: NDArray[np.intp]  # input column of each output column
    offset: Matrix
    scale: Matrix
    code: Matrix  # the code a one-hot column tests for (unused elsewhere)
    onehot: NDArray[np.bool_]

    @property
    def width(self) -> int:
        return len(self.source)

    def transform(self, x: Matrix) -> Matrix:
        missing = np.isnan(x)
        if missing.any():
            x = np.where(missing, self.fill, x)
        values = x[:, self.source]
        result: Matrix = np.where(
            self.onehot, values == self.code, (values - self.offset) / self.scale
        )
        return result

    @classmethod
    def from_blocks(cls, blocks: Sequence[_Block]) -> Preprocessor:
        fill = np.full(len(FEATURE_NAMES), np.nan)
        source: list[int] = []
        offset: list[float] = []
        scale: list[float] = []
        code: list[float] = []
        onehot: list[bool] = []
        for block in blocks:
            if block.fill is not None:
                for column, value in zip(block.columns, block.fill, strict=True):
                    if not np.isnan(fill[column]) and fill[column] != value:
                        raise UnsupportedModelError("one column imputed two different ways")
                    fill[column] = value
            if block.codes is not None:
                for column, codes in zip(block.columns, block.codes, strict=True):
                    for value in codes:
                        source.append(int(column))
                        offset.append(0.0)
                        scale.append(1.0)
                        code.append(float(value))
                        onehot.append(True)
            else:
                n = len(block.columns)
                means = block.mean if block.mean is not None else np.zeros(n)
                scales = block.scale if block.scale is not None else np.ones(n)
                for j, column in enumerate(block.columns):
                    source.append(int(column))
                    offset.append(float(means[j]))
                    scale.append(float(scales[j]))
                    code.append(0.0)
                    onehot.append(False)
        return cls(
            fill=fill,
            source=np.array(source, dtype=np.intp),
            offset=np.array(offset),
            scale=np.array(scale),
            code=np.array(code),
            onehot=np.array(onehot, dtype=bool),
        )


def _compile_step(step: Any, block: dict[str, Any]) -> None:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if isinstance(step, SimpleImputer):
        statistics = np.asarray(step.statistics_, dtype=np.float64)
        missing = step.missing_values
        if (
            block["fill"] is not None
            or block["mean"] is not None
            or block["codes"] is not None
            or step.add_indicator
            or not (isinstance(missing, float) and np.isnan(missing))
            or np.isnan(statistics).any()
        ):
            raise UnsupportedModelError("unsupported SimpleImputer configuration")
        block["fill"] = statistics
    elif isinstance(step, StandardScaler):
        if block["codes"] is not None or block["mean"] is not None:
            raise UnsupportedModelError("unsupported StandardScaler position")
        # sklearn leaves a column with zero variance unscaled (scale_ == 1), as we do.
        block["mean"] = None if step.mean_ is None or not step.with_mean else step.mean_.copy()
        block["scale"] = None if step.scale_ is None or not step.with_std else step.scale_.copy()
        if block["mean"] is None and block["scale"] is None:
            block["mean"] = np.zeros(len(block["columns"]))
    elif isinstance(step, OneHotEncoder):
        if (
            block["codes"] is not None
            or block["mean"] is not None
            or step.drop_idx_ is not None
            or getattr(step, "_infrequent_enabled", False)
            or step.handle_unknown != "ignore"
            or step.sparse_output
        ):
            raise UnsupportedModelError("unsupported OneHotEncoder configuration")
        block["codes"] = tuple(np.asarray(c, dtype=np.float64) for c in step.categories_)
    elif step == "passthrough":
        return
    else:
        raise UnsupportedModelError(f"unsupported preprocessing step {type(step).__name__}")


def compile_preprocessor(transformer: Any) -> Preprocessor:
    """The numpy form of a fitted ColumnTransformer over heartml's 13 named columns."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(transformer, ColumnTransformer):
        raise UnsupportedModelError(f"preprocessing is {type(transformer).__name__}")
    names_in = list(getattr(transformer, "feature_names_in_", []))
    if sorted(names_in) != sorted(FEATURE_NAMES):
        raise UnsupportedModelError("the pipeline was not fitted on heartml's 13 named columns")
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    blocks: list[_Block] = []
    for name, fitted, columns in transformer.transformers_:
        if fitted == "drop" or len(columns) == 0:
            continue
        if name == "remainder" and fitted != "drop":
            raise UnsupportedModelError("a remainder that is not dropped")
        selected = [names_in[c] if isinstance(c, int | np.integer) else c for c in columns]
        if not all(isinstance(c, str) and c in index for c in selected):
            raise UnsupportedModelError(f"transformer {name} selects unknown columns")
        spec: dict[str, Any] = {
            "columns": np.array([index[c] for c in selected], dtype=np.intp),
            "fill": None,
            "mean": None,
            "scale": None,
            "codes": None,
        }
        steps = [s for _, s in fitted.steps] if isinstance(fitted, Pipeline) else [fitted]
        for step in steps:
            _compile_step(step, spec)
        if spec["codes"] is not None and len(spec["codes"]) != len(selected):
            raise UnsupportedModelError(f"transformer {name}: codes do not match its columns")
        blocks.append(_Block(**spec))
    return Preprocessor.from_blocks(blocks)


# --------------------------------------------------------------------------------------------
# Estimators: each returns the (n, 2) probability matrix exactly as predict_proba orders it
# --------------------------------------------------------------------------------------------

Scorer = Callable[[Matrix], Matrix]


def _two_columns(positive: Matrix) -> Matrix:
    out = np.empty((positive.shape[0], 2))
    out[:, 1] = positive
    out[:, 0] = 1.0 - positive
    return out


def _check_binary(estimator: Any) -> None:
    classes = getattr(estimator, "classes_", None)
    if classes is None or list(classes) != [0, 1]:
        raise UnsupportedModelError("only binary 0/1 classifiers are compiled")


def _logistic(estimator: Any) -> Scorer:
    _check_binary(estimator)
    coef = np.ascontiguousarray(estimator.coef_[0], dtype=np.float64)
    intercept = float(estimator.intercept_[0])

    def score(z: Matrix) -> Matrix:
        return _two_columns(expit(z @ coef + intercept))

    return score


def _rbf_decision(svc: Any) -> Scorer:
    """SVC.decision_function for a binary RBF kernel: libsvm's sum, sign flipped as sklearn."""
    if svc.kernel != "rbf" or len(svc.classes_) != 2:
        raise UnsupportedModelError("only binary RBF SVCs are compiled")
    support = np.ascontiguousarray(svc.support_vectors_, dtype=np.float64)
    dual = np.ascontiguousarray(svc.dual_coef_[0], dtype=np.float64)
    intercept = float(svc.intercept_[0])
    gamma = float(svc._gamma)

    support_norms = (support**2).sum(axis=1)

    def decision(z: Matrix) -> Matrix:
        if z.shape[0] <= 32:
            # libsvm's own sum of squared differences, for the few rows of a request.
            squared = ((z[:, None, :] - support[None, :, :]) ** 2).sum(axis=2)
        else:
            # |z|² - 2 z·s + |s|² through one matrix product; the rounding differs from
            # libsvm's by ~1e-15, far inside TOLERANCE (the probe rows check both branches).
            squared = (z**2).sum(axis=1)[:, None] - 2.0 * (z @ support.T) + support_norms
            np.maximum(squared, 0.0, out=squared)
        result: Matrix = np.exp(-gamma * squared) @ dual + intercept
        return result

    return decision


def _calibrated(estimator: Any) -> Scorer:
    from sklearn.svm import SVC

    _check_binary(estimator)
    fitted = estimator.calibrated_classifiers_
    if len(fitted) != 1 or estimator.method != "sigmoid":
        raise UnsupportedModelError("only a single sigmoid calibration is compiled")
    inner = fitted[0]
    if not isinstance(inner.estimator, SVC) or len(inner.calibrators) != 1:
        raise UnsupportedModelError("only a calibrated SVC is compiled")
    decision = _rbf_decision(inner.estimator)
    a = float(inner.calibrators[0].a_)
    b = float(inner.calibrators[0].b_)

    def score(z: Matrix) -> Matrix:
        return _two_columns(expit(-(a * decision(z) + b)))

    return score


@dataclass(frozen=True, slots=True)
class _Forest:
    """Every tree's nodes in one set of arrays; leaves point to themselves."""

    roots: NDArray[np.intp]
    left: NDArray[np.intp]
    right: NDArray[np.intp]
    feature: NDArray[np.intp]
    threshold: Matrix
    value: Matrix  # (nodes, outputs)
    depth: int

    @classmethod
    def from_trees(cls, trees: Sequence[Any], value_of: Callable[[Any], Matrix]) -> _Forest:
        roots, lefts, rights, features, thresholds, values = [], [], [], [], [], []
        offset, depth = 0, 0
        for tree in trees:
            t = tree.tree_
            nodes = np.arange(t.node_count, dtype=np.intp)
            leaf = t.children_left == -1
            if hasattr(t, "missing_go_to_left") and not leaf.all():
                pass  # inputs are imputed first: a NaN never reaches a tree
            roots.append(offset)
            lefts.append(np.where(leaf, nodes, t.children_left) + offset)
            rights.append(np.where(leaf, nodes, t.children_right) + offset)
            features.append(np.where(leaf, 0, t.feature).astype(np.intp))
            thresholds.append(np.where(leaf, np.inf, t.threshold))
            values.append(value_of(t))
            depth = max(depth, int(t.max_depth))
            offset += t.node_count
        return cls(
            roots=np.array(roots, dtype=np.intp),
            left=np.concatenate(lefts),
            right=np.concatenate(rights),
            feature=np.concatenate(features),
            threshold=np.concatenate(thresholds),
            value=np.concatenate(values),
            depth=depth,
        )

    def leaves(self, z: Matrix) -> NDArray[np.intp]:
        """The leaf each row reaches in each tree, shape (rows, trees).

        Trees compare float32 inputs with float64 thresholds, as sklearn's own traversal does.
        """
        x32 = z.astype(np.float32)
        rows = np.arange(z.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (z.shape[0], len(self.roots)))
        for _ in range(self.depth):
            go_left = x32[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return node


def _forest(estimator: Any) -> Scorer:
    _check_binary(estimator)
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise UnsupportedModelError("multi-output forests are not compiled")

    def normalised(t: Any) -> Matrix:
        value = np.asarray(t.value[:, 0, :], dtype=np.float64)
        total = value.sum(axis=1, keepdims=True)
        total[total == 0.0] = 1.0
        result: Matrix = value / total
        return result

    forest = _Forest.from_trees(estimator.estimators_, normalised)
    count = float(len(estimator.estimators_))

    def score(z: Matrix) -> Matrix:
        result: Matrix = forest.value[forest.leaves(z)].sum(axis=1) / count
        return result

    return score


def _boosting(estimator: Any) -> Scorer:
    _check_binary(estimator)
    if estimator.estimators_.shape[1] != 1 or estimator.loss != "log_loss":
        raise UnsupportedModelError("only binary log-loss gradient boosting is compiled")
    width = int(estimator.n_features_in_)
    init = float(estimator._raw_predict_init(np.zeros((1, width)))[0, 0])
    rate = float(estimator.learning_rate)
    forest = _Forest.from_trees(
        estimator.estimators_[:, 0], lambda t: np.asarray(t.value[:, 0, :1], dtype=np.float64)
    )

    def score(z: Matrix) -> Matrix:
        raw = init + (rate * forest.value[forest.leaves(z), 0]).sum(axis=1)
        return _two_columns(expit(raw))

    return score


# sklearn measures neighbours with the |x|² - 2x·y + |y|² expansion, so a row that duplicates a
# training row can come out at a distance of 1e-8 instead of 0, which changes its weight; and
# two neighbours at (almost) the same distance may be ordered either way. Rows that come near
# either case are handed to sklearn itself; every other row is computed here.
_KNN_ZERO = 1e-6
_KNN_TIE = 1e-9


def _neighbours(estimator: Any) -> Scorer:
    _check_binary(estimator)
    metric = estimator.effective_metric_
    p = estimator.effective_metric_params_.get("p", 2)
    if not (metric == "euclidean" or (metric == "minkowski" and p == 2)):
        raise UnsupportedModelError("only euclidean neighbours are compiled")
    if estimator.weights not in ("uniform", "distance") or estimator.outputs_2d_:
        raise UnsupportedModelError("only uniform or distance weights are compiled")
    fit = np.ascontiguousarray(estimator._fit_X, dtype=np.float64)
    labels = np.asarray(estimator._y, dtype=np.intp)
    k = int(estimator.n_neighbors)
    if k >= len(fit):
        raise UnsupportedModelError("more neighbours than training rows")
    by_distance = estimator.weights == "distance"

    def score(z: Matrix) -> Matrix:
        out = np.empty((z.shape[0], 2), dtype=np.float64)
        for start in range(0, z.shape[0], 128):
            chunk = z[start : start + 128]
            distance = np.sqrt(((chunk[:, None, :] - fit[None, :, :]) ** 2).sum(axis=2))
            nearest = np.argpartition(distance, k, axis=1)[:, : k + 1]
            near = np.take_along_axis(distance, nearest, axis=1)
            order = np.argsort(near, axis=1)
            nearest = np.take_along_axis(nearest, order, axis=1)
            near = np.take_along_axis(near, order, axis=1)
            ambiguous = (near[:, 0] < _KNN_ZERO) | (
                near[:, k] - near[:, k - 1] <= _KNN_TIE * np.maximum(1.0, near[:, k])
            )
            votes = np.zeros((len(chunk), 2))
            positive = labels[nearest[:, :k]] == 1
            # A zero distance gives an infinite weight; such rows are ambiguous, redone below.
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = 1.0 / near[:, :k] if by_distance else np.ones((len(chunk), k))
                votes[:, 1] = np.where(positive, weight, 0.0).sum(axis=1)
                votes[:, 0] = np.where(positive, 0.0, weight).sum(axis=1)
                result = votes / votes.sum(axis=1, keepdims=True)
            if ambiguous.any():
                result[ambiguous] = estimator.predict_proba(chunk[ambiguous])
            out[start : start + 128] = result
        return out

    return score


def compile_estimator(estimator: Any) -> tuple[str, Scorer]:
    """A numpy scorer for a fitted estimator, and its name; unknown estimators raise."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if isinstance(estimator, LogisticRegression):
        return "logistic", _logistic(estimator)
    if isinstance(estimator, CalibratedClassifierCV):
        return "calibrated_rbf_svm", _calibrated(estimator)
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier):
        return "forest", _forest(estimator)
    if isinstance(estimator, GradientBoostingClassifier):
        return "gradient_boosting", _boosting(estimator)
    if isinstance(estimator, KNeighborsClassifier):
        return "neighbours", _neighbours(estimator)
    raise UnsupportedModelError(f"no numpy form for {type(estimator).__name__}")


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Predictor:
    """Probabilities for rows of the 13 features in schema order (float64, NaN = missing).

    ``mode`` says how: ``numpy`` (preprocessing and estimator compiled), ``estimator``
    (preprocessing compiled, the fitted estimator called on the matrix) or ``pipeline``.
    """

    mode: str
    kind: str
    _score: Scorer
    max_deviation: float

    def predict_proba(self, x: Matrix) -> Matrix:
        """The (rows, 2) matrix of P(no disease), P(disease), as the pipeline gives it."""
        return self._score(x)


def probe_rows(count: int = 200, seed: int = 0) -> Matrix:
    """Rows across the schema's ranges and codes, some values missing, for the equivalence check."""
    rng = np.random.default_rng(seed)
    columns = []
    for feature in FEATURES:
        if feature.codes:
            column = rng.choice(np.array(feature.codes, dtype=np.float64), size=count)
        elif feature.integer:
            column = rng.integers(int(feature.minimum), int(feature.maximum) + 1, size=count)
        else:
            column = np.round(rng.uniform(feature.minimum, feature.maximum, size=count), 1)
        columns.append(np.asarray(column, dtype=np.float64))
    rows = np.column_stack(columns)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows


def _deviation(score: Scorer, reference: Matrix, rows: Matrix) -> float:
    batch = float(np.max(np.abs(score(rows) - reference)))
    single = max(
        float(np.max(np.abs(score(rows[i : i + 1]) - reference[i : i + 1]))) for i in range(8)
    )
    return max(batch, single)


def pipeline_scorer(pipeline: Any) -> Scorer:
    """The slow, always-right path: the pipeline on a DataFrame with the schema's columns."""
    import pandas as pd

    columns = list(FEATURE_NAMES)

    def score(x: Matrix) -> Matrix:
        result: Matrix = pipeline.predict_proba(pd.DataFrame(x, columns=columns))
        return result

    return score


def compile_predictor(pipeline: Any, probe: Matrix | None = None) -> Predictor:
    """The fastest predictor that reproduces ``pipeline.predict_proba`` within TOLERANCE."""
    rows = probe_rows() if probe is None else probe
    slow = pipeline_scorer(pipeline)
    reference = slow(rows)
    estimator = pipeline.steps[-1][1]
    kind = type(estimator).__name__
    candidates: list[tuple[str, Scorer]] = []
    try:
        preprocess = compile_preprocessor(pipeline.steps[0][1])
        if len(pipeline.steps) != 2:
            raise UnsupportedModelError("expected exactly preprocess and model steps")
        try:
            name, compiled = compile_estimator(estimator)
            candidates.append((f"numpy:{name}", lambda x: compiled(preprocess.transform(x))))
        except UnsupportedModelError as exc:
            logger.info("estimator not compiled (%s); calling it on the numpy matrix", exc)
        candidates.append(
            ("estimator", lambda x: np.asarray(estimator.predict_proba(preprocess.transform(x))))
        )
    except UnsupportedModelError as exc:
        logger.warning("preprocessing not compiled (%s); serving through the pipeline", exc)

    for mode, score in candidates:
        try:
            deviation = _deviation(score, reference, rows)
        except Exception as exc:  # a compiled form that cannot even run is simply not used
            logger.warning("%s path failed on the probe rows: %s", mode, exc)
            continue
        if deviation <= TOLERANCE:
            return Predictor(mode, kind, score, deviation)
        logger.warning("%s path deviates by %.3g on the probe rows; not used", mode, deviation)
    return Predictor("pipeline", kind, slow, 0.0)
