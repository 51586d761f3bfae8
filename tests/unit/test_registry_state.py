"""The rules of the family: who is champion, what disagrees, what the gate allows."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import family_state as family
from conftest import version_info as version
from heartml.registry import (
    ARCHIVED,
    PRODUCTION,
    NotFoundError,
)
from heartml.registry.mlflow_io import transition


def test_no_champion_in_an_empty_or_unpromoted_family() -> None:
    assert family().champion is None
    assert family(version("svm", 1)).champion is None
    assert family(version("svm", 1)).consistent


def test_the_alias_decides_over_the_stage() -> None:
    state = family(version("svm", 1, stage=PRODUCTION), version("knn", 2, champion=True))
    assert state.champion is not None and state.champion.ref == "heart-disease-knn/2"
    assert not state.consistent
    notes = " ".join(state.disagreements())
    assert "heart-disease-svm/1 is in Production but is not the champion" in notes
    assert "stage None, not Production" in notes


def test_without_an_alias_the_production_version_is_champion() -> None:
    state = family(version("svm", 1, stage=PRODUCTION), version("knn", 1))
    assert state.champion is not None and state.champion.ref == "heart-disease-svm/1"
    assert "no version holds the 'champion' alias" in state.disagreements()[0]


def test_of_two_claims_the_latest_promotion_wins() -> None:
    older = version("svm", 1, champion=True, stage=PRODUCTION, promoted_at="2026-01-01T00:00:00Z")
    newer = version("knn", 3, champion=True, stage=PRODUCTION, promoted_at="2026-02-01T00:00:00Z")
    for order in ((older, newer), (newer, older)):
        assert family(*order).champion == newer
    assert "heart-disease-svm/1 also holds 'champion'" in " ".join(
        family(older, newer).disagreements()
    )


def test_consistent_family() -> None:
    state = family(
        version("svm", 2, champion=True, stage=PRODUCTION), version("svm", 1, stage=ARCHIVED)
    )
    assert state.consistent
    assert state.disagreements() == []


def test_find_and_best_tagged() -> None:
    state = family(version("svm", 1), version("svm", 2, best=True, roc_auc=0.91),
                   version("knn", 1, best=True, roc_auc=0.95))  # fmt: skip
    assert state.find("heart-disease-svm").version == 2
    assert state.find("heart-disease-svm", 1).version == 1
    assert state.best_tagged().ref == "heart-disease-knn/1"
    with pytest.raises(NotFoundError, match="unknown model"):
        state.find("heart-disease-nope")
    with pytest.raises(NotFoundError, match="no version 7"):
        state.find("heart-disease-svm", 7)
    with pytest.raises(NotFoundError, match="best_model=true"):
        family(version("svm", 1)).best_tagged()


class RefusingStages:
    """A registry whose stage transitions fail, as MLflow's sometimes do (a RepresenterError)."""

    def transition_model_version_stage(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("yaml.representer.RepresenterError: cannot represent an object")


def test_a_failed_stage_move_becomes_a_warning_with_the_repair() -> None:
    warning = transition(RefusingStages(), version("svm", 1), PRODUCTION)  # type: ignore[arg-type]
    assert warning is not None
    assert "could not move heart-disease-svm/1 to stage Production" in warning
    assert "rerun the same command" in warning
