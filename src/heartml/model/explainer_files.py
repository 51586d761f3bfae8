"""Build, at registration, what :mod:`heartml.model.explain` needs to explain a model's answers.

Training side (scikit-learn and onnx are imported here; serving never imports this module):

* a logistic regression gets its terms per field, folded as its served graph folds them
  (:func:`heartml.model.convert.fold_logistic`), and each term's mean over the training rows
  (the reference); and, what a preprocessing that does not fold gets alone (and what a reader
  from before the fold reads), its coefficients and intercept, the mean of its training rows
  as its preprocessing gives them (``z̄``), the field each preprocessed column comes from, and
  ``preprocess.onnx``: the preprocessing converted as the served graphs convert it
  (:func:`heartml.model.convert.preprocessing_model`: the same float64 imputation, scaling and
  one-hot encoding), so serving computes ``z`` as scikit-learn does;
* any other model gets a background sample: :data:`~heartml.model.explain.BACKGROUND_ROWS`
  training rows with every field present, drawn without replacement by
  ``numpy.random.default_rng(seed)`` (the experiment's split seed), in training order.

Both record the value each field is imputed with (the fitted imputers' ``statistics_``), for the
reasons an answer gives about a field the patient lacked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from heartml.data.schema import FEATURE_NAMES
from heartml.model.explain import (
    BACKGROUND_ROWS,
    PERMUTATIONS,
    PREPROCESSED_NAME,
    FieldTerms,
    StoredExplainer,
)


def build_explainer(model: Any, training: NDArray[np.float64], seed: int) -> StoredExplainer:
    """The explainer files of a fitted pipeline (or a ``RecalibratedClassifier`` around one);
    ``training``: its training rows in schema order."""
    if type(model).__name__ == "RecalibratedClassifier":
        base = build_explainer(model.base, training, seed)
        return base.recalibrated(float(model.intercept), float(model.slope))
    from sklearn.linear_model import LogisticRegression

    preprocess, estimator = model[:-1], model.steps[-1][1]
    fill = imputed_values(preprocess.steps[0][1])
    if isinstance(estimator, LogisticRegression) and len(estimator.classes_) == 2:
        by_columns = linear_by_columns(model, training, fill)
        terms = field_terms(preprocess.steps[0][1], estimator, training)
        # The columns are stored beside the terms: a server or scorer from before the fold
        # (a rolled-back image) still explains a version registered now.
        return by_columns if terms is None else replace(by_columns, terms=terms)
    return StoredExplainer(
        kind="shapley",
        fill=fill,
        background=background_rows(training, seed),
        permutations=PERMUTATIONS,
    )


def field_terms(
    preprocess: Any, estimator: Any, training: NDArray[np.float64]
) -> FieldTerms | None:
    """A logistic regression's terms per field and their means over ``training``; None when its
    preprocessing does not fold (:func:`heartml.model.convert.fold_logistic`)."""
    from heartml.model.convert import fold_logistic

    folded = fold_logistic(preprocess, estimator)
    if folded is None:
        return None
    values = np.where(np.isnan(training), folded.fill, training)
    unmeasured = FieldTerms(
        folded.weight, folded.bias, folded.source, folded.code, folded.table, np.zeros(0)
    )
    return replace(unmeasured, mean=unmeasured.terms(values).mean(axis=0))


def linear_by_columns(
    model: Any, training: NDArray[np.float64], fill: NDArray[np.float64]
) -> StoredExplainer:
    """A logistic regression's explainer on its preprocessed columns (``preprocess.onnx``)."""
    import pandas as pd

    preprocess, estimator = model[:-1], model.steps[-1][1]
    z = np.asarray(
        preprocess.transform(pd.DataFrame(training, columns=list(FEATURE_NAMES))),
        dtype=np.float64,
    )
    return StoredExplainer(
        kind="linear",
        fill=fill,
        coef=np.asarray(estimator.coef_[0], dtype=np.float64),
        intercept=float(estimator.intercept_[0]),
        reference=z.mean(axis=0),
        field_of_column=field_of_columns(list(preprocess.get_feature_names_out())),
        preprocess=preprocessing_graph(preprocess.steps[0][1]),
    )


def background_rows(
    training: NDArray[np.float64], seed: int, count: int = BACKGROUND_ROWS
) -> NDArray[np.float64]:
    """``count`` complete training rows drawn by a seeded generator, in training order."""
    complete = np.flatnonzero(~np.isnan(training).any(axis=1))
    if len(complete) < count:
        raise ValueError(f"{len(complete)} complete training rows; the background needs {count}")
    chosen = np.sort(np.random.default_rng(seed).choice(complete, size=count, replace=False))
    return np.ascontiguousarray(training[chosen], dtype=np.float64)


def imputed_values(preprocess: Any) -> NDArray[np.float64]:
    """The value each field is imputed with, in schema order, from a fitted ColumnTransformer
    whose transformers are a SimpleImputer or a Pipeline that starts with one."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    fill = np.full(len(FEATURE_NAMES), np.nan)
    for _, fitted, columns in preprocess.transformers_:
        if fitted == "drop":
            continue
        imputer = fitted.steps[0][1] if isinstance(fitted, Pipeline) else fitted
        if not isinstance(imputer, SimpleImputer):
            raise ValueError(f"expected a SimpleImputer first, found {type(imputer).__name__}")
        for column, value in zip(columns, imputer.statistics_, strict=True):
            fill[FEATURE_NAMES.index(column)] = float(value)
    if np.isnan(fill).any():
        missing = [n for n, v in zip(FEATURE_NAMES, fill, strict=True) if np.isnan(v)]
        raise ValueError(f"no imputed value for {', '.join(missing)}")
    return fill


def field_of_columns(names: list[str]) -> NDArray[np.int64]:
    """The field of each preprocessed column: 'categorical__cp_4.0' -> cp, 'numeric__age' -> age."""
    fields = []
    for name in names:
        column = name.split("__", 1)[1]
        field = column if column in FEATURE_NAMES else column.rsplit("_", 1)[0]
        fields.append(FEATURE_NAMES.index(field))
    return np.array(fields, dtype=np.int64)


def preprocessing_graph(preprocess: Any) -> bytes:
    """A fitted ColumnTransformer as ``preprocess.onnx``: float64 rows in, its float64 matrix
    out as ``preprocessed``, converted as the served graphs convert it
    (:func:`heartml.model.convert.preprocessing_model`)."""
    import onnx
    from onnx import TensorProto

    from heartml.model.convert import preprocessing_model

    model = preprocessing_model(preprocess)
    (matrix,) = model.graph.output
    model.graph.node.append(onnx.helper.make_node("Identity", [matrix.name], [PREPROCESSED_NAME]))
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(PREPROCESSED_NAME, TensorProto.DOUBLE, [None, None])
    )
    onnx.checker.check_model(model)
    serialised: bytes = model.SerializeToString()
    return serialised
