"""The held-out split is stratified and reproducible."""

import numpy as np
import pandas as pd

from heartml.experiment import ExperimentConfig
from heartml.fit import split_data


def config(seed: int = 42) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"version": 1, "split": {"seed": seed}, "candidates": {"knn": {}}}
    )


def data(n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    target = (rng.random(n) < 0.3).astype(int)
    return features, target


def test_same_seed_same_split() -> None:
    features, target = data()
    first = split_data(features, target, config())
    second = split_data(features, target, config())
    assert first.x_train.index.equals(second.x_train.index)
    assert first.x_test.index.equals(second.x_test.index)


def test_other_seed_other_split() -> None:
    features, target = data()
    assert not split_data(features, target, config(1)).x_test.index.equals(
        split_data(features, target, config(2)).x_test.index
    )


def test_split_is_stratified_and_twenty_percent() -> None:
    features, target = data()
    split = split_data(features, target, config())
    assert len(split.x_test) == 40
    assert abs(split.y_test.mean() - target.mean()) < 0.02
    assert abs(split.y_train.mean() - target.mean()) < 0.02
