"""Preprocessing: built from the schema, same feature space whatever rows it sees."""

import numpy as np
import pandas as pd
import pytest

from heartml.data.schema import FEATURE_NAMES
from heartml.training.features import build_preprocessor, split_features_target


def _frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*FEATURE_NAMES, "num"], dtype="float64")


ROW = {
    "age": 60, "sex": 1, "cp": 4, "trestbps": 130, "chol": 250, "fbs": 0, "restecg": 2,
    "thalach": 140, "exang": 1, "oldpeak": 1.5, "slope": 2, "ca": 1, "thal": 7, "num": 2,
}  # fmt: skip


def test_one_hot_covers_every_code_even_when_unseen() -> None:
    frame = _frame([ROW, {**ROW, "cp": 1, "num": 0}])
    features, _ = split_features_target(frame)
    pre = build_preprocessor().fit(features)
    names = list(pre.get_feature_names_out())
    for code in (1, 2, 3, 4):
        assert f"categorical__cp_{float(code)}" in names
    for code in (3, 6, 7):
        assert f"categorical__thal_{float(code)}" in names
    # 6 numeric + (4 cp + 3 restecg + 3 slope + 3 thal) one-hot + 3 binary
    assert pre.transform(features).shape == (2, 6 + 13 + 3)


def test_missing_values_are_imputed() -> None:
    frame = _frame([ROW, {**ROW, "ca": np.nan, "thal": np.nan, "num": 0}, {**ROW, "num": 1}])
    features, _ = split_features_target(frame)
    out = build_preprocessor().fit_transform(features)
    assert not np.isnan(out).any()


def test_target_is_num_above_zero() -> None:
    frame = _frame([{**ROW, "num": n} for n in (0, 1, 2, 3, 4)])
    _, target = split_features_target(frame)
    assert target.tolist() == [0, 1, 1, 1, 1]


def test_features_come_out_in_schema_order_whatever_the_input_order() -> None:
    frame = _frame([ROW])[list(reversed([*FEATURE_NAMES, "num"]))]
    features, _ = split_features_target(frame)
    assert tuple(features.columns) == FEATURE_NAMES


@pytest.mark.parametrize("column", ["cp", "thal"])
def test_unknown_code_does_not_crash_the_encoder(column: str) -> None:
    features, _ = split_features_target(_frame([ROW, {**ROW, "num": 0}]))
    pre = build_preprocessor().fit(features)
    odd = features.copy()
    odd.loc[0, column] = 99
    assert pre.transform(odd).shape[0] == 2
