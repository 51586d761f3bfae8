"""The README's "promotion rule", one test per rule, on plans alone: no store, milliseconds.

A plan is applied here to a plain :class:`FamilyState` the way MLflow would apply its writes
(one alias holder per model, a stage per version), so what a sequence of plans leaves behind
is checked without any store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import family_state as family
from conftest import version_info as version
from heartml.registry import (
    ARCHIVED,
    EVENT_PREFIX,
    NO_STAGE,
    PRODUCTION,
    TAG_BEST,
    TAG_PREVIOUS,
    TAG_PROMOTED_AT,
    Decision,
    FamilyState,
    NotFoundError,
    PromotionOutcome,
    PromotionPlan,
    RegisteredModel,
    VersionInfo,
    history_of,
    plan_best_tag,
    plan_claim,
    plan_promotion,
    plan_reconcile,
    plan_rollback,
)
from heartml.settings import Settings

ALIAS = "champion"
SETTINGS = Settings()


# --- MLflow's semantics, applied to a plain state --------------------------------------------


def _change(state: FamilyState, edit: Callable[[VersionInfo], VersionInfo]) -> FamilyState:
    return FamilyState(
        tuple(RegisteredModel(m.name, tuple(edit(v) for v in m.versions)) for m in state.models),
        state.alias,
    )


def _drop_alias(state: FamilyState, model: str) -> FamilyState:
    """``delete_registered_model_alias``: the model's holder, whichever version, loses it."""
    return _change(
        state,
        lambda v: (
            replace(v, aliases=tuple(a for a in v.aliases if a != ALIAS)) if v.name == model else v
        ),
    )


def _set_alias(state: FamilyState, target: VersionInfo) -> FamilyState:
    """``set_registered_model_alias``: within one model the alias moves to the target."""
    state = _drop_alias(state, target.name)
    return _change(
        state, lambda v: replace(v, aliases=(*v.aliases, ALIAS)) if v.ref == target.ref else v
    )


def _set_stage(state: FamilyState, ref: str, stage: str) -> FamilyState:
    return _change(state, lambda v: replace(v, stage=stage) if v.ref == ref else v)


def _set_tags(state: FamilyState, ref: str, tags: dict[str, str]) -> FamilyState:
    return _change(state, lambda v: replace(v, tags={**v.tags, **tags}) if v.ref == ref else v)


def reconciled(state: FamilyState) -> FamilyState:
    """One reconcile pass from a fresh read, its writes applied."""
    plan = plan_reconcile(state)
    if plan is None:
        return state
    for other in plan.release_alias:
        state = _drop_alias(state, other.name)
    if plan.claim_alias:
        state = _set_alias(state, plan.champion)
    for loser in plan.archive:
        state = _set_stage(state, loser.ref, ARCHIVED)
    if plan.to_production:
        state = _set_stage(state, plan.champion.ref, PRODUCTION)
    return state


def claimed(state: FamilyState, plan: PromotionPlan, at: str, reason: str = "test") -> FamilyState:
    """A promotion's writes before its reconcile: the claim, the alias, the stage."""
    claim = plan_claim(plan, reason=reason, by="tester", at=at)
    tags = dict(claim.tags)
    state = _set_tags(state, plan.target.ref, tags)
    if claim.clear_previous:
        state = _change(
            state,
            lambda v: (
                replace(v, tags={k: t for k, t in v.tags.items() if k != TAG_PREVIOUS})
                if v.ref == plan.target.ref
                else v
            ),
        )
    for holder in plan.release_alias:
        state = _drop_alias(state, holder.name)
    state = _set_alias(state, state.find(plan.target.name, plan.target.version))
    return _set_stage(state, plan.target.ref, PRODUCTION)


def promoted(
    state: FamilyState, name: str, number: int | None = None, *, at: str, reason: str = "test"
) -> FamilyState:
    plan = plan_promotion(state, SETTINGS, f"heart-disease-{name}", number)
    assert plan.decision is Decision.PROMOTE, plan
    return reconciled(claimed(state, plan, at, reason))


def assert_one_champion(state: FamilyState) -> str:
    holders = [v.ref for v in state.alias_holders]
    assert len(holders) == 1, holders
    assert [v.ref for v in state.in_production] == holders
    return holders[0]


T1, T2, T3 = "2026-01-01T00:00:00.000000Z", "2026-02-01T00:00:00.000000Z", "2026-03-01T00:00:00Z"


# --- "A promotion writes its claim on the chosen version ..." ---------------------------------


def test_the_claim_carries_when_who_why_what_it_replaced_and_an_event() -> None:
    state = family(version("svm", champion=True, stage=PRODUCTION, promoted_at=T1),
                   version("knn", roc_auc=0.93))  # fmt: skip
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn")
    claim = plan_claim(plan, reason="manual promotion: canary", by="ana", at=T2, authenticated=True)
    assert claim.tags[TAG_PROMOTED_AT] == T2
    assert claim.tags["promoted_by"] == "ana"
    assert claim.tags["promotion_reason"] == "manual promotion: canary"
    assert claim.tags[TAG_PREVIOUS] == "heart-disease-svm/1"
    assert not claim.clear_previous
    [event_key] = [k for k in claim.tags if k.startswith(EVENT_PREFIX)]
    assert event_key == EVENT_PREFIX + "20260201T000000000000Z"
    assert json.loads(claim.tags[event_key]) == {
        "at": T2,
        "by": "ana",
        "authenticated": True,
        "previous": "heart-disease-svm/1",
        "reason": "manual promotion: canary",
        "roc_auc": 0.93,
    }


def test_a_first_promotion_clears_a_stale_previous_champion_tag() -> None:
    state = family(version("svm", previous="heart-disease-knn/9"))
    claim = plan_claim(plan_promotion(state, SETTINGS, "heart-disease-svm"), reason="r", by="b",
                       at=T1)  # fmt: skip
    assert claim.clear_previous
    assert TAG_PREVIOUS not in claim.tags


def test_history_reads_every_claim_back_newest_first() -> None:
    state = family(version("svm"), version("knn", roc_auc=0.95))
    state = promoted(state, "svm", at=T1, reason="first")
    state = promoted(state, "knn", at=T2, reason="second")
    history = history_of(state)
    assert [(h.name, h.reason, h.previous) for h in history] == [
        ("heart-disease-knn", "second", "heart-disease-svm/1"),
        ("heart-disease-svm", "first", None),
    ]
    assert history[0].roc_auc == 0.95
    assert history[0].by == "tester"
    assert history[0].authenticated is False  # the helper's claims name nobody authenticated


# --- "... moves the alias, puts the version in Production, then reconciles ..." ---------------


def test_promotion_moves_the_alias_and_archives_every_other_holder_of_alias_or_stage() -> None:
    state = family(
        version("svm", champion=True, stage=PRODUCTION, promoted_at=T1),
        version("rf", stage=PRODUCTION),  # in Production by hand
        version("knn", 1, stage="Staging"),  # never held either
        version("knn", 2),
        version("lr", stage=ARCHIVED),
    )
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn", 2)
    assert plan.decision is Decision.PROMOTE
    assert [v.ref for v in plan.release_alias] == ["heart-disease-svm/1"]
    assert plan.archive == ("heart-disease-rf/1", "heart-disease-svm/1")
    after = reconciled(claimed(state, plan, T2))
    assert assert_one_champion(after) == "heart-disease-knn/2"
    assert after.find("heart-disease-svm").stage == ARCHIVED
    assert after.find("heart-disease-rf").stage == ARCHIVED
    # Versions that never held the alias or the stage keep their stage.
    assert after.find("heart-disease-knn", 1).stage == "Staging"
    assert after.find("heart-disease-lr").stage == ARCHIVED


def test_within_one_model_setting_the_alias_moves_it_so_nothing_is_released() -> None:
    state = family(version("svm", 1, champion=True, stage=PRODUCTION, promoted_at=T1),
                   version("svm", 2))  # fmt: skip
    plan = plan_promotion(state, SETTINGS, "heart-disease-svm")
    assert plan.target.version == 2
    assert plan.release_alias == ()
    after = reconciled(claimed(state, plan, T2))
    assert assert_one_champion(after) == "heart-disease-svm/2"
    assert after.find("heart-disease-svm", 1).stage == ARCHIVED


# --- "Invariant: at most one champion ... the latest claim wins" ------------------------------


def test_two_racing_promotions_converge_on_the_latest_claim_whatever_the_order() -> None:
    start = family(version("svm"), version("knn"))
    svm = plan_promotion(start, SETTINGS, "heart-disease-svm")
    knn = plan_promotion(start, SETTINGS, "heart-disease-knn")
    for first, second in ((svm, knn), (knn, svm)):
        # Both planned from the same read; both claims land, knn's later; then each
        # process reconciles from what it reads.
        state = claimed(start, first, T2 if first is knn else T1)
        state = claimed(state, second, T2 if second is knn else T1)
        state = reconciled(state)
        assert assert_one_champion(state) == "heart-disease-knn/1"
        assert reconciled(state) == state  # the other process's reconcile changes nothing
        result = svm.applied_result(state, (), ())
        assert result.outcome is PromotionOutcome.SUPERSEDED
        assert "concurrent promotion of heart-disease-knn/1 is newer" in result.message
        assert knn.applied_result(state, (), ()).outcome is PromotionOutcome.PROMOTED


STAGES = st.sampled_from([NO_STAGE, "Staging", PRODUCTION, ARCHIVED])
CLAIMS = st.sampled_from(["", T1, T2, T3])


@st.composite
def families(draw: st.DrawFn) -> FamilyState:
    versions = []
    for name in draw(st.lists(st.sampled_from(["svm", "knn", "rf"]), unique=True, max_size=3)):
        count = draw(st.integers(1, 3))
        holder = draw(st.one_of(st.none(), st.integers(1, count)))  # one holder per model
        versions += [
            version(name, n, stage=draw(STAGES), champion=n == holder, promoted_at=draw(CLAIMS))
            for n in range(1, count + 1)
        ]
    return family(*versions)


@settings(max_examples=100, deadline=None)
@given(families())
def test_a_reconcile_leaves_one_champion_and_never_removes_the_winner(
    state: FamilyState,
) -> None:
    after = reconciled(state)
    if state.champion is None:
        assert after == state
        return
    assert assert_one_champion(after) == state.champion.ref
    bystanders = {v.ref for v in state.versions} - {
        v.ref for v in (*state.alias_holders, *state.in_production)
    }
    for ref in bystanders:
        name, _, number = ref.rpartition("/")
        assert after.find(name, int(number)).stage == state.find(name, int(number)).stage


# --- "The alias decides" ----------------------------------------------------------------------


def test_a_failed_stage_move_is_repaired_by_rerunning_the_promotion() -> None:
    # The alias moved, the stage transitions failed: svm still in Production.
    state = family(
        version("svm", stage=PRODUCTION, promoted_at=T1),
        version("knn", champion=True, promoted_at=T2),
    )
    assert state.champion is not None and state.champion.ref == "heart-disease-knn/1"
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn")
    assert plan.decision is Decision.REPAIR
    assert any("stage None, not Production" in note for note in plan.disagreements)
    repair = plan_reconcile(state)
    assert repair is not None and repair.to_production and not repair.claim_alias
    assert [v.ref for v in repair.archive] == ["heart-disease-svm/1"]
    assert assert_one_champion(reconciled(state)) == "heart-disease-knn/1"
    result = plan.repaired_result(("heart-disease-svm/1",), ())
    assert result.outcome is PromotionOutcome.REPAIRED


def test_promoting_the_consistent_champion_again_changes_nothing() -> None:
    state = family(version("svm", champion=True, stage=PRODUCTION, promoted_at=T1))
    plan = plan_promotion(state, SETTINGS, "heart-disease-svm", gated=True)
    assert plan.decision is Decision.NOTHING
    result = plan.unapplied_result(dry_run=False)
    assert result is not None and result.outcome is PromotionOutcome.ALREADY_CHAMPION
    assert result.message == "heart-disease-svm/1 is already champion"
    assert plan_reconcile(state) is None


# --- "A version moved to Production by hand ..." ---------------------------------------------


def test_a_hand_moved_production_version_is_flagged_and_promoting_it_makes_it_official() -> None:
    state = family(
        version("svm", champion=True, stage=PRODUCTION, promoted_at=T1),
        version("knn", stage=PRODUCTION),
    )
    assert state.champion is not None and state.champion.ref == "heart-disease-svm/1"
    assert "heart-disease-knn/1 is in Production but is not the champion" in " ".join(
        state.disagreements()
    )
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn", 1)
    assert plan.decision is Decision.PROMOTE and plan.archive == ("heart-disease-svm/1",)
    assert assert_one_champion(reconciled(claimed(state, plan, T2))) == "heart-disease-knn/1"


def test_without_any_alias_the_latest_promoted_production_version_is_champion() -> None:
    state = family(
        version("svm", stage=PRODUCTION, promoted_at=T2),
        version("knn", stage=PRODUCTION, promoted_at=T1),
    )
    assert state.champion is not None and state.champion.ref == "heart-disease-svm/1"
    repair = plan_reconcile(state)
    assert repair is not None and repair.claim_alias
    assert assert_one_champion(reconciled(state)) == "heart-disease-svm/1"


# --- "Gate (--auto and training) ...": tests/unit/test_gate.py --------------------------------


def test_a_dry_run_says_what_would_change() -> None:
    state = family(version("svm", champion=True, stage=PRODUCTION, promoted_at=T1),
                   version("knn", roc_auc=0.95))  # fmt: skip
    plan = plan_promotion(state, SETTINGS, "heart-disease-knn")
    assert plan.unapplied_result(dry_run=False) is None  # it has writes to make
    result = plan.unapplied_result(dry_run=True)
    assert result is not None and result.outcome is PromotionOutcome.DRY_RUN
    assert result.message == (
        "would promote heart-disease-knn/1 to Production (alias 'champion'); "
        "would archive heart-disease-svm/1"
    )
    assert result.archived == ("heart-disease-svm/1",)


# --- "best_model=true marks the winner of the latest training session ..." ---------------------


def test_exactly_one_best_tag_remains_the_newest_session_s() -> None:
    state = family(
        version("svm", best=True, created_ms=100),
        version("knn", best=True, created_ms=300),
        version("rf", best=True, created_ms=200),
        version("lr", created_ms=400),
    )
    plan = plan_best_tag(state)
    assert plan.keep is not None and plan.keep.ref == "heart-disease-knn/1"
    assert sorted(v.ref for v in plan.clear) == ["heart-disease-rf/1", "heart-disease-svm/1"]
    assert plan_best_tag(family(version("svm"))).clear == ()


def test_the_best_of_several_tagged_versions_is_the_one_auto_promotes() -> None:
    state = family(version("knn", best=True, roc_auc=0.91), version("svm", best=True, roc_auc=0.94))
    assert state.best_tagged().ref == "heart-disease-svm/1"


def test_a_rollback_restores_the_previous_champion_and_moves_the_best_tag_to_it() -> None:
    state = family(version("svm", best=True), version("knn", roc_auc=0.95))
    state = promoted(state, "svm", at=T1)
    state = promoted(state, "knn", at=T2)
    state = _set_tags(state, "heart-disease-knn/1", {TAG_BEST: "true"})
    restore = plan_rollback(state)
    assert (restore.name, restore.version) == ("heart-disease-svm", 1)
    assert restore.reason == "rollback from heart-disease-knn/1"
    plan = plan_promotion(state, SETTINGS, restore.name, restore.version)
    assert plan.gate is None  # an operator's decision
    state = reconciled(claimed(state, plan, T3, restore.reason))
    assert assert_one_champion(state) == "heart-disease-svm/1"
    best = plan_best_tag(state, keep="heart-disease-svm/1")
    assert [v.ref for v in best.clear] == ["heart-disease-knn/1"]
    # Rolling back twice undoes the rollback.
    again = plan_rollback(state)
    assert (again.name, again.version) == ("heart-disease-knn", 1)


def test_a_rollback_needs_a_champion_with_a_predecessor() -> None:
    with pytest.raises(NotFoundError, match="no champion to roll back from"):
        plan_rollback(family(version("svm")))
    first = family(version("svm", champion=True, stage=PRODUCTION, promoted_at=T1))
    with pytest.raises(NotFoundError, match="has no previous champion"):
        plan_rollback(first)
