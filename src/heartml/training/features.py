"""Features stage: the one preprocessing every candidate shares, built from the schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heartml.data.schema import (
    BINARY_FEATURES,
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FEATURES_BY_NAME,
    NUMERIC_FEATURES,
    TARGET,
    binary_target,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer


def build_preprocessor() -> ColumnTransformer:
    """Impute, scale the numeric columns and one-hot the coded ones over their known codes.

    The one-hot categories come from the schema, not from the training rows, so every model
    sees the same feature space whatever codes a split happens to contain.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categories = [list(map(float, FEATURES_BY_NAME[c].codes)) for c in CATEGORICAL_FEATURES]
    return ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                list(NUMERIC_FEATURES),
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        (
                            "onehot",
                            OneHotEncoder(
                                categories=categories,
                                handle_unknown="ignore",
                                sparse_output=False,
                            ),
                        ),
                    ]
                ),
                list(CATEGORICAL_FEATURES),
            ),
            ("binary", SimpleImputer(strategy="most_frequent"), list(BINARY_FEATURES)),
        ],
        verbose_feature_names_out=True,
    )


def split_features_target(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The 13 features in schema order (float64) and the binary target ``num > 0``."""
    features = frame.loc[:, list(FEATURE_NAMES)].astype("float64").reset_index(drop=True)
    target = frame[TARGET.name].map(binary_target).to_numpy(dtype="int64")
    return features, target
