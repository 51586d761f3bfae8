"""The one schema: columns, kinds, codes in UCI coding."""

from heartml.data.schema import (
    BINARY_FEATURES,
    CATEGORICAL_FEATURES,
    COLUMNS,
    FEATURE_NAMES,
    FEATURES_BY_NAME,
    NUMERIC_FEATURES,
    binary_target,
    describe_schema,
)


def test_columns_are_the_uci_order() -> None:
    assert COLUMNS == (
        "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
        "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
    )  # fmt: skip


def test_every_feature_has_exactly_one_kind() -> None:
    kinds = set(NUMERIC_FEATURES) | set(CATEGORICAL_FEATURES) | set(BINARY_FEATURES)
    assert kinds == set(FEATURE_NAMES)
    assert len(NUMERIC_FEATURES) + len(CATEGORICAL_FEATURES) + len(BINARY_FEATURES) == 13


def test_uci_codes() -> None:
    assert FEATURES_BY_NAME["cp"].codes == (1, 2, 3, 4)
    assert FEATURES_BY_NAME["slope"].codes == (1, 2, 3)
    assert FEATURES_BY_NAME["thal"].codes == (3, 6, 7)
    assert FEATURES_BY_NAME["ca"].codes == (0, 1, 2, 3)
    assert FEATURES_BY_NAME["restecg"].codes == (0, 1, 2)
    for binary in ("sex", "fbs", "exang"):
        assert FEATURES_BY_NAME[binary].codes == (0, 1)


def test_target_is_any_narrowing() -> None:
    assert [binary_target(n) for n in range(5)] == [0, 1, 1, 1, 1]


def test_describe_schema_lists_every_feature_with_its_codes() -> None:
    described = describe_schema()
    features = described["features"]
    assert isinstance(features, list)
    assert [f["name"] for f in features] == list(FEATURE_NAMES)
    thal = next(f for f in features if f["name"] == "thal")
    assert thal["codes"] == [3, 6, 7]
    assert thal["kind"] == "categorical"


def test_the_optional_fields_are_the_tests_a_clinician_may_not_have() -> None:
    from heartml.data.schema import OPTIONAL_FEATURES, REQUIRED_FEATURES

    assert OPTIONAL_FEATURES == ("chol", "fbs", "slope", "ca", "thal")
    assert set(OPTIONAL_FEATURES) | set(REQUIRED_FEATURES) == set(FEATURE_NAMES)
    described = describe_schema()
    assert described["optional"] == list(OPTIONAL_FEATURES)
    features = described["features"]
    assert isinstance(features, list)
    assert [f["name"] for f in features if f["optional"]] == list(OPTIONAL_FEATURES)
