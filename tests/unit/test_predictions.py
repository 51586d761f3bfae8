"""The predictions table: written and read back exactly, averaged per row, scored per fold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from heartml.evidence.predictions import (
    CV,
    HOLDOUT,
    PredictionsError,
    prediction_set,
    read_predictions,
    resampled_set,
    write_predictions,
)


def cross_validated(
    seed: int = 0, rows: int = 40, repeats: int = 3, folds: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"cleveland:{i + 1}" for i in range(rows)], dtype=object)
    y = np.tile([0, 1], rows // 2)
    plan = np.vstack([rng.permutation(np.arange(rows) % folds) for _ in range(repeats)])
    probability = rng.uniform(size=(repeats, rows))
    return ids, y, plan, probability


def test_a_table_reads_back_to_the_very_same_floats() -> None:
    ids, y, plan, probability = cross_validated()
    sets = {
        CV: resampled_set(ids, y, plan, probability),
        HOLDOUT: prediction_set(["cleveland:99", "cleveland:98"], [1, 0], [1 / 3, 2 / 3]),
    }
    back = read_predictions(write_predictions(sets))
    assert list(back) == [CV, HOLDOUT]
    for name, rows in sets.items():
        assert back[name].row_ids.tolist() == rows.row_ids.tolist()
        assert back[name].y.tolist() == rows.y.tolist()
        assert back[name].repeat.tolist() == rows.repeat.tolist()
        assert back[name].fold.tolist() == rows.fold.tolist()
        assert np.array_equal(back[name].probability, rows.probability)  # exact, not approx
    assert back[HOLDOUT].repeats == 0 and back[HOLDOUT].repeat.tolist() == [-1, -1]


def test_by_row_averages_the_repeats_of_each_row() -> None:
    ids, y, plan, probability = cross_validated()
    per_row = resampled_set(ids, y, plan, probability).by_row()
    assert per_row.row_ids.tolist() == ids.tolist()
    assert per_row.y.tolist() == y.tolist()
    assert np.allclose(per_row.probability, probability.mean(axis=0))


def test_fold_scores_are_each_repeat_and_fold_s_roc_auc() -> None:
    ids, y, plan, probability = cross_validated(repeats=2, folds=4)
    scores = resampled_set(ids, y, plan, probability).fold_scores()
    expected = [
        roc_auc_score(y[plan[r] == f], probability[r][plan[r] == f])
        for r in range(2)
        for f in range(4)
    ]
    assert scores == pytest.approx(expected, abs=1e-12)


def test_restricting_to_row_ids_keeps_their_order() -> None:
    rows = prediction_set(["a:1", "a:2", "a:3"], [0, 1, 1], [0.1, 0.2, 0.3])
    picked = rows.restricted_to(["a:3", "a:1"])
    assert picked.row_ids.tolist() == ["a:3", "a:1"]
    assert picked.probability.tolist() == [0.3, 0.1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not a predictions table"),
        ("a,b,c\n", "not a predictions table"),
        ("set,row_id,y,repeat,fold,probability\ncv,a:1,x,0,0,0.5\n", "line 2"),
        ("set,row_id,y,repeat,fold,probability\ncv,a:1,1,0\n", "line 2"),
    ],
)
def test_a_damaged_table_is_one_line_naming_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(PredictionsError, match=fragment) as caught:
        read_predictions(text)
    assert "\n" not in str(caught.value)
