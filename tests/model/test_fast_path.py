"""The served predictor gives the registry model's probabilities on every Cleveland row.

Training (the shared ``trained_root`` session) fits and registers every candidate type the
experiment lists; each registered version is loaded the way serving loads it and compared
with its own ``predict_proba`` on all 303 rows, missing values included.
"""

from __future__ import annotations

import numpy as np
import pytest

from heartml.data import load_dataset
from heartml.experiment import load_experiment
from heartml.features import split_features_target
from heartml.registry import configure_mlflow, read_family
from heartml.serve.fastpath import TOLERANCE, compile_predictor
from heartml.settings import Settings

pytestmark = pytest.mark.slow


def test_every_registered_candidate_is_served_identically(trained_settings: Settings) -> None:
    import mlflow.sklearn

    configure_mlflow(trained_settings)
    features, _ = split_features_target(load_dataset(trained_settings).frame)
    assert len(features) == 303
    assert features.isna().any(axis=None)  # the rows with missing ca / thal are in
    rows = features.to_numpy(dtype=np.float64)

    family = read_family(trained_settings)
    by_type = {v.tags.get("model_type"): v for v in family.versions}
    expected_types = set(load_experiment(trained_settings.experiment_config).candidates)
    assert expected_types <= set(by_type), "every candidate type should be registered"

    for model_type in sorted(expected_types):
        version = by_type[model_type]
        pipeline = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
        predictor = compile_predictor(pipeline)
        assert predictor.mode.startswith("numpy:"), (model_type, predictor.mode)
        expected = pipeline.predict_proba(features)
        served = predictor.predict_proba(rows)
        assert served.shape == expected.shape
        gap = float(np.max(np.abs(served - expected)))
        assert gap <= TOLERANCE, f"{model_type}: {gap:.3g}"
        # Row by row too, as /predict calls it, against the pipeline called on that one row:
        # sklearn's own KNN answer for a row that duplicates a training row depends on the
        # batch it comes in (its distances go through a matrix product), by ~1e-7.
        complete = np.flatnonzero(~np.isnan(rows).any(axis=1))[:40]
        for i in complete:
            one = predictor.predict_proba(rows[i : i + 1])
            alone = pipeline.predict_proba(features.iloc[[i]])
            assert float(np.max(np.abs(one - alone))) <= TOLERANCE, model_type
        # The predicted class is the pipeline's.
        assert np.array_equal(served.argmax(axis=1), pipeline.predict(features))


def test_risk_rises_with_st_depression_through_the_served_model(
    trained_settings: Settings,
) -> None:
    import mlflow.sklearn

    configure_mlflow(trained_settings)
    champion = read_family(trained_settings).champion
    assert champion is not None
    predictor = compile_predictor(
        mlflow.sklearn.load_model(f"models:/{champion.name}/{champion.version}")
    )
    from heartml.schema import EXAMPLE_PATIENT, FEATURE_NAMES

    base = np.array([[EXAMPLE_PATIENT[n] for n in FEATURE_NAMES]], dtype=np.float64)
    oldpeak = FEATURE_NAMES.index("oldpeak")
    low, high = base.copy(), base.copy()
    low[0, oldpeak], high[0, oldpeak] = 0.0, 5.0
    assert predictor.predict_proba(high)[0, 1] > predictor.predict_proba(low)[0, 1]
