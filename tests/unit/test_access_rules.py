"""Who may change the registry: the pure rules of heartml.registry.access.

What a promotion needs, the --reason rule, the one-line refusals. The same rules against a
real server: tests/integration/test_registry_auth.py.
"""

from __future__ import annotations

import pytest

from conftest import family_state, version_info
from heartml.registry import PRODUCTION, plan_promotion, plan_reconcile
from heartml.registry.access import (
    EDIT,
    MANAGE,
    READ,
    ChangeKind,
    at_least,
    missing_access,
    needs_of,
    promotion_needs,
    reason_problem,
    reconcile_needs,
    recorded_reason,
    refused_message,
)
from heartml.settings import Settings

SETTINGS = Settings(mlflow_tracking_uri="sqlite:///unused.db")
T1 = "2026-01-01T00:00:00.000000Z"


def test_levels_are_ordered_and_deny_grants_nothing() -> None:
    assert at_least(MANAGE, EDIT) and at_least(EDIT, READ) and not at_least(READ, EDIT)
    assert not at_least("DENY", READ) and not at_least("NO_PERMISSIONS", READ)
    assert needs_of([("a", EDIT), ("a", MANAGE), ("b", EDIT), ("a", EDIT)]) == {
        "a": MANAGE,
        "b": EDIT,
    }


def test_a_promotion_within_the_champions_model_needs_edit_only() -> None:
    state = family_state(
        version_info("svm", 1, champion=True, stage=PRODUCTION, promoted_at=T1),
        version_info("svm", 2),
    )
    plan = plan_promotion(state, SETTINGS, "heart-disease-svm", 2)
    # Setting the alias on version 2 moves it within the model: nothing is deleted.
    assert promotion_needs(plan) == {"heart-disease-svm": EDIT}


def test_a_promotion_across_models_needs_manage_where_the_alias_is_deleted() -> None:
    state = family_state(
        version_info("svm", 1, champion=True, stage=PRODUCTION, promoted_at=T1),
        version_info("knn", 1),
        version_info("rf", 1, stage=PRODUCTION),  # moved by hand: archived by the promotion
    )
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn", 1)
    assert promotion_needs(plan) == {
        "heart-disease-knn": EDIT,
        "heart-disease-svm": MANAGE,
        "heart-disease-rf": EDIT,
    }


def test_a_first_promotion_that_clears_a_stale_tag_needs_manage_on_the_target() -> None:
    state = family_state(version_info("svm", 1, previous="heart-disease-knn/9"))
    plan = plan_promotion(state, SETTINGS, "heart-disease-svm", 1)
    assert promotion_needs(plan) == {"heart-disease-svm": MANAGE}


def test_a_repair_needs_what_its_writes_need() -> None:
    state = family_state(
        version_info("svm", 1, champion=True, stage=PRODUCTION, promoted_at=T1),
        version_info("knn", 1, champion=True, promoted_at="2025-01-01T00:00:00Z"),
    )
    repair = plan_reconcile(state)
    assert repair is not None
    assert reconcile_needs(repair) == {"heart-disease-knn": MANAGE}


def test_what_is_missing_is_said_per_model() -> None:
    needs = {"heart-disease-svm": MANAGE, "heart-disease-knn": EDIT}
    assert missing_access(needs, {"heart-disease-svm": MANAGE, "heart-disease-knn": MANAGE}) == []
    assert missing_access(needs, {"heart-disease-svm": READ}) == [
        "EDIT on heart-disease-knn (it holds no grant)",
        "MANAGE on heart-disease-svm (it holds READ)",
    ]


@pytest.mark.parametrize(
    ("kind", "force", "needed"),
    [
        (ChangeKind.AUTO, False, False),
        (ChangeKind.AUTO, True, True),
        (ChangeKind.BY_NAME, False, True),
        (ChangeKind.ROLLBACK, False, True),
    ],
)
def test_a_reason_is_required_on_an_authenticated_registry_only(
    kind: ChangeKind, force: bool, needed: bool
) -> None:
    for blank in (None, "  "):
        problem = reason_problem(kind, authenticated=True, force=force, reason=blank)
        assert (problem is not None) is needed
    assert reason_problem(kind, authenticated=True, force=force, reason="canary ok") is None
    # The embedded store (one person's machine) never asks for one.
    assert reason_problem(kind, authenticated=False, force=force, reason=None) is None


def test_the_recorded_reason_says_what_happened_then_why() -> None:
    assert recorded_reason("manual promotion", None) == "manual promotion"
    assert recorded_reason("rollback from a/2", " drift\non  site VA ") == (
        "rollback from a/2: drift on site VA"
    )


def test_refusals_name_the_account_and_the_action_on_one_line() -> None:
    uri = "http://registry:5001"
    anonymous = refused_message(uri, None, 401, "read the registry")
    assert "anonymous" in anonymous and "MLFLOW_TRACKING_USERNAME" in anonymous
    wrong = refused_message(uri, "heartml-serving", 401, "read the registry")
    assert "'heartml-serving'" in wrong and "wrong password" in wrong
    forbidden = refused_message(uri, "heartml-serving", 403, "promote heart-disease-svm/2")
    assert forbidden.startswith("account 'heartml-serving' may not promote heart-disease-svm/2")
    assert all("\n" not in m for m in (anonymous, wrong, forbidden))
