"""The reference profile and PSI, against their definitions, on small synthetic rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from heartml.data.profile import (
    ReferenceProfile,
    build_profile,
    feature_stability,
    impute_rows,
    missing_ratios,
    population_stability,
    read_profile,
)
from heartml.data.schema import FEATURE_NAMES, FEATURES, synthetic_rows

AGE = FEATURE_NAMES.index("age")
CP = FEATURE_NAMES.index("cp")


def test_numeric_bins_are_training_deciles_and_codes_their_shares() -> None:
    rows = synthetic_rows(1000, seed=1, missing=0.1)
    profile = build_profile(rows)
    age = profile.features[AGE]
    assert age.kind == "numeric" and age.bins == 10
    assert sum(age.frequencies) == pytest.approx(1.0)
    assert max(age.frequencies) < 0.13  # deciles: about a tenth each
    present = rows[~np.isnan(rows[:, AGE]), AGE]
    assert age.impute_value == float(np.median(present))
    assert age.missing_rate == pytest.approx(np.isnan(rows[:, AGE]).mean())
    cp = profile.features[CP]
    assert cp.kind == "coded" and cp.edges == (1.0, 2.0, 3.0, 4.0)
    codes = rows[~np.isnan(rows[:, CP]), CP]
    assert cp.frequencies == pytest.approx([(codes == c).mean() for c in (1, 2, 3, 4)])
    assert cp.impute_value == float(np.bincount(codes.astype(int)).argmax())


def test_a_value_shared_by_many_rows_merges_bins() -> None:
    rows = synthetic_rows(200, seed=2, missing=0.0)
    oldpeak = FEATURE_NAMES.index("oldpeak")
    rows[:120, oldpeak] = 0.0
    feature = build_profile(rows).features[oldpeak]
    assert feature.bins < 10
    zero_bin = int(np.searchsorted(feature.edges, 0.0, side="left"))
    assert feature.frequencies[zero_bin] >= 0.6  # every zero in one bin


def test_psi_matches_its_definition_and_is_zero_for_the_same_shares() -> None:
    expected = np.array([0.5, 0.3, 0.2])
    counts = np.array([20, 50, 30])
    n, k = counts.sum(), 3
    a = (counts + 0.5) / (n + 0.5 * k)
    e = (expected * n + 0.5) / (n + 0.5 * k)
    assert population_stability(expected, counts) == pytest.approx(np.sum((a - e) * np.log(a / e)))
    assert population_stability(expected, np.array([500, 300, 200])) == pytest.approx(0.0)
    assert math.isnan(population_stability(expected, np.array([0, 0, 0])))


def test_same_population_is_stable_and_a_shift_is_not() -> None:
    reference = synthetic_rows(2000, seed=3, missing=0.0)
    profile = build_profile(reference)
    same = synthetic_rows(2000, seed=4, missing=0.0)
    assert max(feature_stability(profile, same)) < 0.02
    shifted = same.copy()
    shifted[:, AGE] = np.clip(shifted[:, AGE] + 15, 18, 100)
    shifted[:, CP] = 4.0
    psi = feature_stability(profile, shifted)
    assert psi[AGE] > 0.2 and psi[CP] > 0.2
    others = [p for i, p in enumerate(psi) if i not in (AGE, CP)]
    assert max(others) < 0.02


def test_missing_values_are_not_in_the_psi_but_in_the_missing_ratio() -> None:
    rows = synthetic_rows(1000, seed=5, missing=0.0)
    profile = build_profile(rows)
    holes = rows.copy()
    holes[::2, CP] = np.nan
    assert feature_stability(profile, holes)[CP] < 0.02
    assert missing_ratios(holes)[CP] == pytest.approx(0.5)
    assert missing_ratios(holes)[AGE] == 0.0


def test_imputation_fills_only_missing_values() -> None:
    rows = synthetic_rows(300, seed=6, missing=0.2)
    profile = build_profile(rows)
    filled = impute_rows(rows, profile.impute_values)
    assert not np.isnan(filled).any()
    given = ~np.isnan(rows)
    assert np.array_equal(filled[given], rows[given])
    assert np.all(filled[np.isnan(rows[:, AGE]), AGE] == profile.features[AGE].impute_value)


def test_profile_round_trips_and_refuses_another_schema(tmp_path: Path) -> None:
    profile = build_profile(synthetic_rows(100, seed=7))
    (tmp_path / "extra_files").mkdir()
    profile.save(tmp_path / "extra_files" / "reference_profile.json")
    assert read_profile(tmp_path) == profile
    data = profile.as_dict()
    data["features"] = data["features"][:-1]
    with pytest.raises(ValueError, match="schema"):
        ReferenceProfile.from_dict(data)
    assert read_profile(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="shape"):
        build_profile(np.zeros((5, len(FEATURES) - 1)))
