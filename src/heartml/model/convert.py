"""Convert a fitted heartml pipeline to ONNX (skl2onnx) and check it against the pipeline.

The graph reproduces scikit-learn's arithmetic where it matters: the input is float64 and the
preprocessing (imputation, scaling, one-hot) runs in float64 as scikit-learn's does; the
matrix is then cast to float32, which is what scikit-learn's trees compare against their
thresholds, and what ONNX Runtime's ML operators take. A float32 graph input would scale in
float32, and trees whose thresholds lie within a float32 step of a training value then send
some rows down the other branch (measured: 0.02 on random forest, 0.09 on gradient boosting).

ONNX Runtime's Imputer has no float64 kernel, so imputation is registered here as
``Where(IsNaN(x), statistics, x)``, the same computation in standard operators. One-hot
encoding is registered as ``Cast(Equal(Gather(x, source), code))``: three operators for all
the coded columns where skl2onnx's encoder takes three per column, and each operator costs
ONNX Runtime about a microsecond per call on the one-row requests serving answers.

The SVM's decision values come from skl2onnx's own SVC converter, handed the fitted SVC with its
Platt-scaling attributes stated empty (:class:`_SvcWithoutPlatt`): the converter reads
``probA_`` and ``probB_`` even when they are unused, and scikit-learn deprecated both in 1.9
with ``SVC(probability=True)`` (read, they warn) and removes them in 1.11 (read, they fail).

Logistic regression gets a graph of its own too (:func:`_logistic_graph`): imputation, scaling
and one-hot encoding are linear or a look-up, so they fold into the coefficients, and the whole
model is ``sigmoid(b + x·w + onehot(x)·t)`` on the imputed row, in float64 throughout (nearer
scikit-learn than the float32 LinearClassifier skl2onnx would end with). Twelve operators on
the row instead of seventeen: measured, 0.15 µs a row in a 65,536-row batch against 0.25, and
fewer per-call costs on a one-row request. A preprocessing of any other shape (an imputer with
an indicator, another scaler) is converted by skl2onnx as the other models are.

Nearest neighbours get a graph of their own (:func:`_neighbours_graph`): skl2onnx's converter
computes distances in float32 and clamps them at 1e-6, so a patient identical to a training
row (any training row, sent again) misses scikit-learn's rule that exact matches alone vote
(measured: up to 0.93 apart). The graph here computes float64 distances to the rows the
estimator was fitted on — the training rows through the fitted preprocessing, passed in
rather than read from the estimator's private state — and applies that rule itself.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.schema import FEATURE_NAMES
from heartml.errors import UserError, first_line
from heartml.model.engine import Engine
from heartml.model.onnx_form import (
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    OnnxEngine,
    Probe,
    Rows,
    largest_deviation,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


class ConversionError(UserError):
    """The ONNX form of a candidate could not be made or does not reproduce the pipeline."""


@dataclass(frozen=True, slots=True)
class OnnxForm:
    """A checked conversion: the serialised graph and the probe it reproduces."""

    graph: bytes
    probe: Probe
    deviation: float


@dataclass(frozen=True, slots=True)
class TrainingRows:
    """The rows a pipeline was fitted on (schema order, float64) and their outcomes.

    A nearest-neighbours graph carries them: its estimator *is* its training rows.
    """

    features: np.ndarray
    target: np.ndarray


def to_onnx_graph(pipeline: Pipeline, training: TrainingRows | None = None) -> bytes:
    """The ONNX graph of a fitted ``Pipeline([("preprocess", ColumnTransformer), ("model", …)])``.

    The ColumnTransformer selects its columns by name; the graph has one float64 input in
    schema order, so the conversion is made from a copy that selects them by position.
    ``training`` is needed for nearest neighbours only.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.sklapi import CastTransformer
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    _register_float64_converters()
    preprocess, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    if len(pipeline.steps) != 2 or not isinstance(preprocess, ColumnTransformer):
        raise ConversionError("expected a pipeline of a ColumnTransformer and an estimator")
    if type(estimator).__name__ == "KNeighborsClassifier":
        return _neighbours_graph(preprocess, estimator, training)
    if (folded := _logistic_graph(preprocess, estimator)) is not None:
        return folded
    positional = _positional(preprocess)
    try:
        graph = to_onnx(
            Pipeline(
                [
                    ("preprocess", positional),
                    # What scikit-learn's trees compare with their thresholds (module doc).
                    ("float32", CastTransformer(dtype=np.float32)),
                    ("model", estimator),
                ]
            ),
            initial_types=[(INPUT_NAME, DoubleTensorType([None, len(FEATURE_NAMES)]))],
            options={id(estimator): {"zipmap": False}},
        )
    except ConversionError:
        raise
    except Exception as exc:  # skl2onnx raises many types; all mean "no graph"
        name = type(estimator).__name__
        raise ConversionError(f"cannot convert {name} to ONNX: {first_line(exc)}") from exc
    serialised: bytes = graph.SerializeToString()
    return serialised


def _positional(preprocess: Any) -> Any:
    """A copy of a fitted ColumnTransformer that selects its columns by position in the schema
    (the graph's one input) instead of by name."""
    positional = copy.deepcopy(preprocess)
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    # transformers_ is the fitted ColumnTransformer's public record of which columns each
    # fitted transformer reads; only the copy's is rewritten.
    positional.transformers_ = [
        (name, fitted, [index[c] for c in columns] if fitted != "drop" else columns)
        for name, fitted, columns in positional.transformers_
    ]
    return positional


def preprocessing_model(preprocess: Any) -> Any:
    """A fitted ColumnTransformer as an ONNX model (``onnx.ModelProto``): float64 rows in schema
    order in, its float64 matrix out, with the imputation and one-hot encoding registered here
    (module doc), so the same arithmetic as the served graphs'."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    _register_float64_converters()
    return to_onnx(
        _positional(preprocess),
        initial_types=[(INPUT_NAME, DoubleTensorType([None, len(FEATURE_NAMES)]))],
    )


def convert_pipeline(
    pipeline: Pipeline, rows: np.ndarray, training: TrainingRows | None = None
) -> OnnxForm:
    """The checked ONNX form of a pipeline (``training``: the rows it was fitted on).

    Raises ConversionError when the graph cannot be made or differs from the pipeline's own
    ``predict_proba`` by more than ``TOLERANCE`` on any of ``rows`` (float64, schema order),
    scored all at once or one at a time.
    """
    import pandas as pd

    name = type(pipeline.steps[-1][1]).__name__
    graph = to_onnx_graph(pipeline, training)
    try:
        engine = OnnxEngine(graph)
    except Exception as exc:  # ONNX Runtime raises its own types; all mean "not loadable"
        raise ConversionError(
            f"ONNX Runtime cannot load the {name} graph: {first_line(exc)}"
        ) from exc
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    probe = Probe(rows=np.asarray(rows, dtype=np.float64), expected=np.asarray(expected))
    deviation = largest_deviation(engine, probe)
    if not deviation <= TOLERANCE:
        raise ConversionError(
            f"the ONNX form of {name} differs from the pipeline by {deviation:.3g} "
            f"(at most {TOLERANCE:g} allowed)"
        )
    return OnnxForm(graph=graph, probe=probe, deviation=deviation)


@dataclass(frozen=True, slots=True)
class FoldedLogistic:
    """A binary logistic regression and its preprocessing as one linear function of the imputed
    row ``x`` (schema order): ``logit = bias + x·weight + Σ_j table_j·[x[source_j] == code_j]``.

    ``fill``: the value each field is imputed with; ``weight``: per field, its coefficient over
    its scale (0 for a one-hot encoded field); ``source``, ``code``, ``table``: each one-hot
    column's field, code and coefficient (an unknown code matches none, as
    ``handle_unknown="ignore"`` gives)."""

    fill: np.ndarray
    weight: np.ndarray
    bias: float
    source: np.ndarray
    code: np.ndarray
    table: np.ndarray


def fold_logistic(preprocess: Any, estimator: Any) -> FoldedLogistic | None:
    """The fold of a fitted ``ColumnTransformer`` of imputers, each alone or followed by a
    ``StandardScaler`` or a ``OneHotEncoder``, and a binary ``LogisticRegression``; None for
    anything else."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not isinstance(estimator, LogisticRegression) or len(estimator.classes_) != 2:
        return None
    coef = np.asarray(estimator.coef_[0], dtype=np.float64)
    bias = float(estimator.intercept_[0])
    fill = np.full(len(FEATURE_NAMES), np.nan)
    weight = np.zeros(len(FEATURE_NAMES))
    source: list[int] = []
    code: list[float] = []
    table: list[float] = []
    column = 0  # the next preprocessed column, in the ColumnTransformer's output order
    seen: set[int] = set()
    for _, fitted, names in preprocess.transformers_:
        if fitted == "drop" or len(names) == 0:  # an empty selection stays unfitted
            continue
        steps = [s for _, s in fitted.steps] if isinstance(fitted, Pipeline) else [fitted]
        imputer, *after = steps
        if (
            not isinstance(imputer, SimpleImputer)
            or imputer.add_indicator
            or not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values))
            or len(after) > 1
        ):
            return None
        fields = [FEATURE_NAMES.index(name) for name in names]
        if seen & set(fields):  # a field two transformers read is two columns, not one weight
            return None
        seen |= set(fields)
        fill[fields] = np.asarray(imputer.statistics_, dtype=np.float64)
        if not after or isinstance(after[0], StandardScaler):
            scaler = after[0] if after else None
            beta = coef[column : column + len(fields)]
            if scaler is not None:
                scale = scaler.scale_ if scaler.with_std else np.ones(len(fields))
                mean = scaler.mean_ if scaler.with_mean else np.zeros(len(fields))
                beta = beta / scale
                bias -= float(np.sum(beta * mean))
            weight[fields] = beta
            column += len(fields)
        elif isinstance(after[0], OneHotEncoder):
            encoder = after[0]
            if encoder.drop_idx_ is not None or encoder.handle_unknown != "ignore":
                return None
            if getattr(encoder, "_infrequent_enabled", False):
                return None
            for field, categories in zip(fields, encoder.categories_, strict=True):
                for category in categories:
                    source.append(field)
                    code.append(float(category))
                    table.append(float(coef[column]))
                    column += 1
        else:
            return None
    if column != coef.size or np.isnan(fill).any():
        return None
    return FoldedLogistic(
        fill=fill,
        weight=weight,
        bias=bias,
        source=np.asarray(source, dtype=np.int64),
        code=np.asarray(code, dtype=np.float64),
        table=np.asarray(table, dtype=np.float64),
    )


def _logistic_graph(preprocess: Any, estimator: Any) -> bytes | None:
    """The folded logistic regression as a float64 graph (module doc); None when
    :func:`fold_logistic` cannot fold it."""
    from onnx import TensorProto, checker, helper, numpy_helper

    folded = fold_logistic(preprocess, estimator)
    if folded is None:
        return None
    constants = {
        "fill": folded.fill,
        "weight": folded.weight[:, None],
        "bias": np.array([folded.bias]),
        "source": folded.source,
        "code": folded.code,
        "table": folded.table[:, None],
        "one": np.array([1.0]),
    }
    nodes = [
        helper.make_node("IsNaN", [INPUT_NAME], ["missing"]),
        helper.make_node("Where", ["missing", "fill", INPUT_NAME], ["imputed"]),
        helper.make_node("MatMul", ["imputed", "weight"], ["linear"]),
        helper.make_node("Gather", ["imputed", "source"], ["coded"], axis=1),
        helper.make_node("Equal", ["coded", "code"], ["matched"]),
        helper.make_node("Cast", ["matched"], ["onehot"], to=TensorProto.DOUBLE),
        helper.make_node("MatMul", ["onehot", "table"], ["looked_up"]),
        helper.make_node("Add", ["linear", "looked_up"], ["terms"]),
        helper.make_node("Add", ["terms", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["disease"]),
        helper.make_node("Sub", ["one", "disease"], ["no_disease"]),
        helper.make_node("Concat", ["no_disease", "disease"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "heartml_logistic_regression",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, [None, len(FEATURE_NAMES)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, [None, 2])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()],
    )
    # Opset 17 and IR 8: what every ONNX Runtime since 1.13 reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    serialised: bytes = model.SerializeToString()
    return serialised


def _neighbours_graph(preprocess: Any, estimator: Any, training: TrainingRows | None) -> bytes:
    """Preprocessing (skl2onnx) followed by k-nearest-neighbours voting as scikit-learn votes.

    Float64 Euclidean distances to every training row; the k nearest vote with weight 1
    (``uniform``) or 1/distance (``distance``), except that when some neighbours are at
    distance zero, those alone vote (scikit-learn's rule for exact matches).
    """
    import pandas as pd
    from onnx import TensorProto, helper, numpy_helper

    metric = estimator.effective_metric_
    if training is None:
        raise ConversionError("a nearest-neighbours graph needs the rows it was fitted on")
    if metric != "euclidean" or estimator.weights not in ("uniform", "distance"):
        raise ConversionError(
            f"only Euclidean nearest neighbours with uniform or distance weights are converted "
            f"(metric {metric}, weights {estimator.weights})"
        )
    if [int(c) for c in estimator.classes_] != [0, 1]:
        raise ConversionError("nearest neighbours: expected the classes 0 and 1")
    fitted_on = np.asarray(
        preprocess.transform(pd.DataFrame(training.features, columns=list(FEATURE_NAMES))),
        dtype=np.float64,
    )
    if fitted_on.shape[0] != estimator.n_samples_fit_:
        raise ConversionError(
            f"nearest neighbours were fitted on {estimator.n_samples_fit_} rows, "
            f"not on the {fitted_on.shape[0]} given"
        )
    model = preprocessing_model(preprocess)
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 18:
        raise ConversionError("the preprocessing graph's opset is older than 18")
    graph = model.graph
    matrix = graph.output[0].name

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, f"knn_{name}"))
        return f"knn_{name}"

    def node(op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        graph.node.append(helper.make_node(op_type, inputs, [f"knn_{output}"], **attrs))
        return f"knn_{output}"

    one = constant("axis1", np.array([1]))
    labels = constant("labels", np.asarray(training.target, dtype=np.float64))
    # |q - r|² = |q|² - 2 q·r + |r|², as scikit-learn's brute-force search computes it: one
    # matrix product instead of a (rows, fitted rows, columns) difference tensor, which cost
    # ~200 MB and most of the time per 4,096 rows (the fitted rows are stored times -2, which
    # is exact). Its rounding (~1e-16 of |q|² + |r|²) would make a query equal to a fitted row
    # a tiny distance away instead of 0, which the distance weights treat apart: a square
    # within 1e-10 of that scale is 0. The k nearest are found on the squares, and only their
    # k distances are rounded and rooted: every operator on all (rows × fitted rows) squares
    # costs as much as the search itself.
    squares = constant("fitted_squares", np.sum(fitted_on * fitted_on, axis=1))
    transposed = constant("fitted_rows_t_m2", np.ascontiguousarray(-2.0 * fitted_on.T))
    query_squares = node("ReduceSum", [node("Mul", [matrix, matrix], "q2"), one], "q2sum")
    cross = node("MatMul", [matrix, transposed], "cross_m2")
    d2 = node("Add", [node("Add", [query_squares, cross], "q2_cross"), squares], "d2")
    k = constant("k", np.array([estimator.n_neighbors]))
    graph.node.append(
        helper.make_node(
            "TopK", [d2, k], ["knn_nearest_d2", "knn_index"], axis=1, largest=0, sorted=1
        )
    )
    scale = node(
        "Add",
        [query_squares, node("Gather", [squares, "knn_index"], "nearest_squares", axis=0)],
        "scale",
    )
    negligible = node(
        "LessOrEqual",
        ["knn_nearest_d2", node("Mul", [scale, constant("rounding", np.array([1e-10]))], "tol")],
        "negligible",
    )
    zero = constant("zero_d2", np.zeros(1))
    graph.node.append(
        helper.make_node(
            "Sqrt",
            [node("Where", [negligible, zero, "knn_nearest_d2"], "d2_exact")],
            ["knn_nearest"],
        )
    )
    votes = node("Gather", [labels, "knn_index"], "votes", axis=0)
    if estimator.weights == "uniform":
        weight = node(
            "Add",
            [
                node("Mul", ["knn_nearest", constant("zero", np.zeros(1))], "zeroed"),
                constant("one", np.ones(1)),
            ],
            "weight",
        )
    else:
        exact = node(
            "Cast",
            [node("Equal", ["knn_nearest", constant("zero", np.zeros(1))], "is_exact")],
            "exact",
            to=TensorProto.DOUBLE,
        )
        any_exact = node("ReduceMax", [exact, one], "any_exact", keepdims=1)
        weight = node(
            "Where",
            [
                node("Cast", [any_exact], "use_exact", to=TensorProto.BOOL),
                exact,
                node("Reciprocal", ["knn_nearest"], "inverse"),
            ],
            "weight",
        )
    total = node("ReduceSum", [weight, one], "total", keepdims=1)
    positive = node("ReduceSum", [node("Mul", [weight, votes], "for_1"), one], "sum_1", keepdims=1)
    negative = node("Sub", [total, positive], "sum_0")
    graph.node.append(
        helper.make_node(
            "Concat",
            [node("Div", [negative, total], "p0"), node("Div", [positive, total], "p1")],
            [OUTPUT_NAME],
            axis=1,
        )
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, [None, 2]))
    serialised: bytes = model.SerializeToString()
    return serialised


class _SvcWithoutPlatt:
    """A fitted SVC as skl2onnx's SVC converter reads it, without Platt scaling.

    heartml's SVC never scales its own scores (``probability`` is left unset): its
    probabilities come from the CalibratedClassifierCV around it, whose converter asks this one
    for raw decision values only. So ``probA_`` and ``probB_`` are empty, as they are on such an
    SVC, and stated here rather than read from its deprecated properties. Every other attribute
    is the fitted SVC's own.
    """

    alias = "SklearnSVC"  # how skl2onnx finds the options of a type it has not registered
    probA_ = np.empty(0)  # noqa: N815 (the names skl2onnx reads)
    probB_ = np.empty(0)  # noqa: N815

    def __init__(self, fitted: Any) -> None:
        self._fitted = fitted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fitted, name)


@functools.cache
def _register_float64_converters() -> None:
    """SimpleImputer and OneHotEncoder on float64 inputs (see the module doc), and the SVC
    converter that reads no deprecated attribute (:class:`_SvcWithoutPlatt`)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.operator_converters.one_hot_encoder import convert_sklearn_one_hot_encoder
    from skl2onnx.operator_converters.support_vector_machines import (
        convert_sklearn_svm_classifier,
    )
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from skl2onnx.shape_calculators.one_hot_encoder import (
        calculate_sklearn_one_hot_encoder_output_shapes,
    )
    from skl2onnx.shape_calculators.support_vector_machines import (
        calculate_sklearn_svm_output_shapes,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.svm import SVC

    def is_float64(operator: Any) -> bool:
        return isinstance(operator.inputs[0].type, DoubleTensorType)

    def impute(scope: Any, operator: Any, container: Any) -> None:
        if not is_float64(operator):
            convert_sklearn_imputer(scope, operator, container)
            return
        imputer = operator.raw_operator
        if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
            raise ConversionError("only SimpleImputer(missing_values=nan) is converted")
        if imputer.add_indicator:
            raise ConversionError("SimpleImputer(add_indicator=True) is not converted")
        values = _one_input(scope, operator, container)
        statistics = np.asarray(imputer.statistics_, dtype=np.float64)
        fill = _constant(scope, container, "fill", statistics)
        missing = _node(scope, container, "IsNaN", [values])
        container.add_node(
            "Where",
            [missing, fill, values],
            [operator.outputs[0].full_name],
            name=scope.get_unique_operator_name("Where"),
        )

    def encode_shape(operator: Any) -> None:
        calculate_sklearn_one_hot_encoder_output_shapes(operator)
        if is_float64(operator):
            operator.outputs[0].type = DoubleTensorType(operator.outputs[0].type.shape)

    def encode(scope: Any, operator: Any, container: Any) -> None:
        if not is_float64(operator):
            convert_sklearn_one_hot_encoder(scope, operator, container)
            return
        from onnx import TensorProto

        encoder = operator.raw_operator
        if encoder.drop_idx_ is not None or encoder.handle_unknown != "ignore":
            raise ConversionError("only OneHotEncoder(handle_unknown='ignore') is converted")
        if getattr(encoder, "_infrequent_enabled", False):
            raise ConversionError("OneHotEncoder with infrequent categories is not converted")
        # Output column j is 1.0 where input column source[j] equals code[j]: an unknown code
        # matches nothing and gives a row of zeros, as handle_unknown="ignore" does.
        source = [i for i, codes in enumerate(encoder.categories_) for _ in codes]
        code = [float(c) for codes in encoder.categories_ for c in codes]
        values = _one_input(scope, operator, container)
        columns = _constant(scope, container, "source", np.array(source, dtype=np.int64))
        gathered = _node(scope, container, "Gather", [values, columns], axis=1)
        codes = _constant(scope, container, "code", np.array(code, dtype=np.float64))
        equal = _node(scope, container, "Equal", [gathered, codes])
        container.add_node(
            "Cast",
            [equal],
            [operator.outputs[0].full_name],
            to=TensorProto.DOUBLE,
            name=scope.get_unique_operator_name("Cast"),
        )

    update_registered_converter(
        SimpleImputer,
        "SklearnSimpleImputer",
        calculate_sklearn_imputer_output_shapes,
        impute,
        overwrite=True,
    )
    update_registered_converter(
        OneHotEncoder, "SklearnOneHotEncoder", encode_shape, encode, overwrite=True
    )

    def svc(scope: Any, operator: Any, container: Any) -> None:
        fitted = operator.raw_operator
        if fitted.probability is True:
            raise ConversionError(
                "SVC(probability=True) is not converted: wrap the SVC in "
                "CalibratedClassifierCV(ensemble=False) for probabilities"
            )
        stand_in = _SvcWithoutPlatt(fitted)
        # Options are looked up by the model's id: the stand-in gets the SVC's (raw_scores).
        container.add_options(id(stand_in), container.get_options(fitted, {"raw_scores": False}))
        operator.raw_operator = stand_in
        try:
            convert_sklearn_svm_classifier(scope, operator, container)
        finally:
            operator.raw_operator = fitted

    update_registered_converter(
        SVC,
        "SklearnSVC",
        calculate_sklearn_svm_output_shapes,
        svc,
        overwrite=True,
        # The options skl2onnx's own registration allows.
        options={
            "zipmap": [True, False, "columns"],
            "nocl": [True, False],
            "output_class_labels": [False, True],
            "raw_scores": [True, False],
        },
    )


def _one_input(scope: Any, operator: Any, container: Any) -> str:
    from skl2onnx.operator_converters.common import concatenate_variables

    name: str = concatenate_variables(scope, operator.inputs, container)
    return name


def _constant(scope: Any, container: Any, name: str, value: np.ndarray) -> str:
    from onnx import TensorProto

    kind = TensorProto.INT64 if value.dtype == np.int64 else TensorProto.DOUBLE
    unique: str = scope.get_unique_variable_name(name)
    container.add_initializer(unique, kind, list(value.shape), value.tolist())
    return unique


def _node(scope: Any, container: Any, op_type: str, inputs: list[str], **attrs: Any) -> str:
    output: str = scope.get_unique_variable_name(op_type.lower())
    container.add_node(
        op_type, inputs, [output], name=scope.get_unique_operator_name(op_type), **attrs
    )
    return output


def engine_for_pipeline(pipeline: Any, rows: Rows, training: TrainingRows | None = None) -> Engine:
    """An engine for an in-memory pipeline, converted as registration converts it.

    For tests and benchmarks that have a pipeline but no model directory.
    """
    return OnnxEngine(convert_pipeline(pipeline, rows, training).graph)
