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

Nearest neighbours are not converted: with distance weights a row at distance zero from a
training row (every training row, served back) gets scikit-learn's special case, which the
converted graph does not reproduce (measured: up to 0.93), and equal distances are ordered
differently. Such a candidate is served by its scikit-learn pipeline.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.candidates import TrainingError, first_line
from heartml.onnx_model import INPUT_NAME, TOLERANCE, OnnxEngine, Probe, largest_deviation
from heartml.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# Estimators whose converted graph does not reproduce scikit-learn (see above), and why.
NOT_CONVERTED: dict[str, str] = {
    "KNeighborsClassifier": "distance ties and zero distances are not reproduced by ONNX",
}


class ConversionError(TrainingError):
    """The ONNX form of a candidate could not be made or does not reproduce the pipeline."""


@dataclass(frozen=True, slots=True)
class OnnxForm:
    """A checked conversion: the serialised graph and the probe it reproduces."""

    graph: bytes
    probe: Probe
    deviation: float


def why_not_converted(pipeline: Pipeline) -> str | None:
    """The reason a pipeline is served by scikit-learn rather than ONNX, or None."""
    return NOT_CONVERTED.get(type(pipeline.steps[-1][1]).__name__)


def to_onnx_graph(pipeline: Pipeline) -> bytes:
    """The ONNX graph of a fitted ``Pipeline([("preprocess", ColumnTransformer), ("model", …)])``.

    The ColumnTransformer selects its columns by name; the graph has one float64 input in
    schema order, so the conversion is made from a copy that selects them by position.
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
    positional = copy.deepcopy(preprocess)
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    # transformers_ is the fitted ColumnTransformer's public record of which columns each
    # fitted transformer reads; only the copy's is rewritten.
    positional.transformers_ = [
        (name, fitted, [index[c] for c in columns] if fitted != "drop" else columns)
        for name, fitted, columns in positional.transformers_
    ]
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


def convert_pipeline(pipeline: Pipeline, rows: np.ndarray) -> OnnxForm | None:
    """The checked ONNX form of a pipeline; None for an estimator that is not converted.

    Raises ConversionError when the graph cannot be made or differs from the pipeline's own
    ``predict_proba`` by more than ``TOLERANCE`` on any of ``rows`` (float64, schema order),
    scored all at once or one at a time.
    """
    import pandas as pd

    if why_not_converted(pipeline) is not None:
        return None
    name = type(pipeline.steps[-1][1]).__name__
    graph = to_onnx_graph(pipeline)
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


@functools.cache
def _register_float64_converters() -> None:
    """SimpleImputer and OneHotEncoder on float64 inputs (see the module doc)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.operator_converters.one_hot_encoder import convert_sklearn_one_hot_encoder
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from skl2onnx.shape_calculators.one_hot_encoder import (
        calculate_sklearn_one_hot_encoder_output_shapes,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

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
