"""A champion per site, as pure decisions: the site's alias, its plans, claims, reconcile,
rollback and gate, on plain states and synthetic predictions (no store, milliseconds)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import family_state as family
from conftest import version_info as version
from heartml.evidence.measures import CalibrationBand
from heartml.evidence.predictions import prediction_set
from heartml.registry import (
    EVENT_PREFIX,
    Decision,
    FamilyState,
    NotFoundError,
    RegisteredModel,
    RegistryError,
    Thresholds,
    VersionInfo,
    history_of,
    plan_promotion,
    plan_site_promotion,
    plan_site_reconcile,
    plan_site_rollback,
)
from heartml.registry.access import MANAGE, promotion_needs
from heartml.registry.gate import SiteEvidence, SiteGateInput, judge_site_challenger
from heartml.registry.plans import plan_site_claim
from heartml.registry.values import SITE_PREVIOUS, SITE_PROMOTED_AT
from heartml.settings import Settings

SETTINGS = Settings()
THRESHOLDS = Thresholds(0.8, 0.05, CalibrationBand(0.7, 1.3, 0.35), 30)


def adapted(
    name: str, number: int, site: str, *, aliases: tuple[str, ...] = (), claimed: str = ""
) -> VersionInfo:
    base = version(name, number)
    tags = {
        **base.tags,
        "site": site,
        "adapted_from": f"{base.name}/1",
        "adaptation_method": "logistic",
    }
    if claimed:
        tags[SITE_PROMOTED_AT + site] = claimed
    return replace(base, tags=tags, aliases=aliases)


def with_alias(v: VersionInfo, *aliases: str) -> VersionInfo:
    return replace(v, aliases=(*v.aliases, *aliases))


def test_the_site_alias_decides_and_the_latest_claim_wins() -> None:
    champion = version("svm", 1, champion=True, stage="Production")
    a = adapted("svm", 2, "va", aliases=("champion-va",), claimed="2026-01-01T00:00:00Z")
    b = adapted("knn", 2, "va", aliases=("champion-va",), claimed="2026-01-02T00:00:00Z")
    hungary = adapted("knn", 3, "hungarian")
    odd = with_alias(version("lr", 1), "champion-Not A Site")
    state = family(champion, a, b, hungary, odd)
    assert state.sites() == ("va",)  # a hand-made alias naming no site is not a site
    assert state.site_champion("va") == b
    assert state.site_champion("hungarian") is None
    assert state.site_champions() == {"va": b}
    assert state.champion == champion  # the global champion is its own alias's
    assert state.site_disagreements() == [
        "heart-disease-svm/2 also holds 'champion-va' (set by hand, or an interrupted site "
        "promotion)"
    ]
    plan = plan_site_reconcile(state, "va")
    assert plan is not None and plan.champion == b and plan.release_alias == (a,)
    assert state.latest_adapted("hungarian") == hungary
    with pytest.raises(NotFoundError, match="no version is adapted for site 'switzerland'"):
        state.latest_adapted("switzerland")


def test_a_site_promotion_moves_only_the_site_alias() -> None:
    champion = version("svm", 1, champion=True, stage="Production")
    old = adapted("knn", 2, "va", aliases=("champion-va",), claimed="2026-01-01T00:00:00Z")
    new = adapted("svm", 2, "va")
    state = family(champion, old, new)
    plan = plan_site_promotion(state, SETTINGS, "va", "heart-disease-svm", 2)
    assert plan.decision is Decision.PROMOTE
    assert (plan.alias, plan.site, plan.previous) == ("champion-va", "va", old)
    assert plan.release_alias == (old,)  # another model's holder releases it
    assert plan.archive == ()  # no stage moves, the global champion's least of all
    result = plan.unapplied_result(dry_run=True)
    assert result is not None and result.site == "va"
    assert "champion of site 'va' (alias 'champion-va')" in result.message

    claim = plan_site_claim(plan, reason="why", by="me", at="2026-02-01T00:00:00Z")
    assert claim.tags[SITE_PROMOTED_AT + "va"] == "2026-02-01T00:00:00Z"
    assert claim.tags[SITE_PREVIOUS + "va"] == old.ref
    assert not claim.clear_previous
    assert "promoted_at" not in claim.tags and "previous_champion" not in claim.tags
    [event_key] = [k for k in claim.tags if k.startswith(EVENT_PREFIX)]
    assert json.loads(claim.tags[event_key])["site"] == "va"
    promoted = replace(new, tags={**new.tags, **claim.tags})
    [entry] = history_of(family(champion, old, promoted))
    assert (entry.site, entry.previous, entry.reason) == ("va", old.ref, "why")

    # What it needs: EDIT on the target's model (no delete, whatever its global tags say),
    # MANAGE where the alias leaves another model.
    global_tags = replace(new, tags={**new.tags, "previous_champion": "x/1"})
    needs = promotion_needs(replace(plan, target=global_tags))
    assert needs == {"heart-disease-svm": "EDIT", "heart-disease-knn": MANAGE}


def test_again_the_same_version_is_nothing_and_a_second_holder_is_repaired() -> None:
    held = adapted("svm", 2, "va", aliases=("champion-va",), claimed="2026-01-02T00:00:00Z")
    plan = plan_site_promotion(family(held), SETTINGS, "va", "heart-disease-svm", 2)
    assert plan.decision is Decision.NOTHING
    stale = adapted("knn", 2, "va", aliases=("champion-va",), claimed="2026-01-01T00:00:00Z")
    plan = plan_site_promotion(family(held, stale), SETTINGS, "va", "heart-disease-svm", 2)
    assert plan.decision is Decision.REPAIR


def test_versions_adapted_elsewhere_are_refused_where_they_do_not_belong() -> None:
    va = adapted("svm", 2, "va")
    state = family(version("svm", 1, champion=True, stage="Production"), va)
    with pytest.raises(RegistryError, match="adapted for site 'va', not 'hungarian'"):
        plan_site_promotion(state, SETTINGS, "hungarian", "heart-disease-svm", 2)
    with pytest.raises(RegistryError, match="may be that site's champion"):
        plan_promotion(state, SETTINGS, "heart-disease-svm", 2)
    # A trained (not adapted) version may be chosen for a site by a person.
    plan = plan_site_promotion(state, SETTINGS, "hungarian", "heart-disease-svm", 1)
    assert plan.decision is Decision.PROMOTE and plan.site == "hungarian"


def _apply_claim(state: FamilyState, target: VersionInfo, site: str, at: str) -> FamilyState:
    """A site claim as MLflow applies it: tags, then the alias (moving within a model)."""
    alias = f"champion-{site}"
    models = []
    for m in state.models:
        versions = []
        for v in m.versions:
            aliases = tuple(a for a in v.aliases if not (m.name == target.name and a == alias))
            tags = v.tags
            if v.ref == target.ref:
                aliases, tags = (*aliases, alias), {**tags, SITE_PROMOTED_AT + site: at}
            versions.append(replace(v, aliases=aliases, tags=tags))
        models.append(RegisteredModel(m.name, tuple(versions)))
    return FamilyState(tuple(models), state.alias)


def _reconcile(state: FamilyState, site: str) -> FamilyState:
    plan = plan_site_reconcile(state, site)
    if plan is None:
        return state
    released = {v.ref for v in plan.release_alias}
    models = tuple(
        RegisteredModel(
            m.name,
            tuple(
                replace(v, aliases=tuple(a for a in v.aliases if a != plan.alias))
                if v.ref in released
                else v
                for v in m.versions
            ),
        )
        for m in state.models
    )
    return FamilyState(models, state.alias)


def test_two_racing_site_claims_converge_to_the_latest_whatever_the_order() -> None:
    a, b = adapted("svm", 2, "va"), adapted("knn", 2, "va")
    start = family(version("lr", 1, champion=True, stage="Production"), a, b)
    for first, second in ((a, b), (b, a)):
        state = _apply_claim(start, first, "va", "2026-03-01T00:00:00.000001Z")
        state = _apply_claim(state, second, "va", "2026-03-01T00:00:00.000002Z")
        state = _reconcile(state, "va")
        assert [v.ref for v in state.site_holders("va")] == [second.ref]
        assert state.champion is not None and state.champion.ref == "heart-disease-lr/1"


def test_a_site_rollback_restores_the_site_s_previous_champion() -> None:
    held = adapted("svm", 3, "va", aliases=("champion-va",), claimed="2026-01-02T00:00:00Z")
    held = replace(held, tags={**held.tags, SITE_PREVIOUS + "va": "heart-disease-svm/2"})
    plan = plan_site_rollback(family(held, adapted("svm", 2, "va")), "va")
    assert (plan.name, plan.version) == ("heart-disease-svm", 2)
    first = replace(held, tags={**held.tags, SITE_PREVIOUS + "va": "none"})
    with pytest.raises(NotFoundError, match="no previous site champion"):
        plan_site_rollback(family(first), "va")
    with pytest.raises(NotFoundError, match="site 'hungarian' has no champion"):
        plan_site_rollback(family(first), "hungarian")


# --- the site gate ---------------------------------------------------------------------------

RNG = np.random.default_rng(19)
RISK = RNG.uniform(0.05, 0.95, 200)
OUTCOME = (RNG.uniform(size=200) < RISK).astype(int)
IDS = [f"va:{i + 1}" for i in range(200)]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p / (1 - p)))


def _site_rows(probability: np.ndarray, ids: list[str] = IDS) -> SiteEvidence:
    v = adapted("svm", 2, "va")
    n = len(ids)
    return SiteEvidence(v, prediction_set(ids, OUTCOME[:n], probability[:n]))


def _judge(challenger: SiteEvidence, comparator: SiteEvidence | None) -> dict[str, bool]:
    verdict = judge_site_challenger(
        SiteGateInput("va", challenger, comparator, "global champion", THRESHOLDS)
    )
    assert verdict.site == "va" and verdict.as_dict()["site"] == "va"
    return {check.rule: check.passed for check in verdict.checks}


def test_the_site_gate_passes_a_calibrated_update_against_the_global_champion() -> None:
    # The global champion under-predicts at the site (its risks shifted down); the update is
    # the true risk: calibrated, and the same order, so the same ROC-AUC.
    under = 1 / (1 + np.exp(-(_logit(RISK) - 1.5)))
    champion = replace(_site_rows(under), version=version("lr", 1))
    assert _judge(_site_rows(RISK), champion) == {
        "has_evidence": True,
        "calibration": True,
        "non_inferior": True,
    }
    # The unadapted model itself would be refused on calibration at that site.
    assert (
        _judge(replace(champion, version=adapted("lr", 2, "va")), champion)["calibration"] is False
    )


def test_the_site_gate_refuses_worse_discrimination_and_unpairable_evidence() -> None:
    champion = replace(_site_rows(RISK), version=version("lr", 1))
    noise = 1 / (1 + np.exp(-(_logit(RISK) + np.random.default_rng(3).normal(0, 4, 200))))
    assert _judge(_site_rows(noise), champion)["non_inferior"] is False
    # A comparator without the site's rows: non-inferiority is not shown.
    missing = SiteEvidence(version("lr", 1), problem="no site:va set")
    assert _judge(_site_rows(RISK), missing)["non_inferior"] is False
    # No champion at all in the family: nothing to be inferior to.
    assert _judge(_site_rows(RISK), None)["non_inferior"] is True
    # No site rows, or too few of one outcome: refused before anything is measured.
    assert _judge(SiteEvidence(adapted("svm", 2, "va"), problem="none"), champion) == {
        "has_evidence": False
    }
    few = [i for i in range(200) if OUTCOME[i] == 1][:40] + [
        i for i in range(200) if OUTCOME[i] == 0
    ][:3]
    rows = SiteEvidence(
        adapted("svm", 2, "va"),
        prediction_set([IDS[i] for i in few], OUTCOME[few], RISK[few]),
    )
    assert _judge(rows, champion) == {"has_evidence": False}


def test_a_recalibration_of_the_comparator_has_its_ranking_and_a_refit_does_not() -> None:
    # Cross-validated predictions mix a different update per fold, which blurs their order
    # (here: noise); the registered recalibration orders every patient as the model it was
    # adapted from, so the gate does not measure a difference that cannot exist.
    champion = replace(_site_rows(RISK), version=version("lr", 1))
    blurred = 1 / (1 + np.exp(-(_logit(RISK) + np.random.default_rng(3).normal(0, 4, 200))))
    recalibrated = replace(_site_rows(blurred), version=adapted("lr", 2, "va"))
    assert recalibrated.version.tags["adapted_from"] == champion.version.ref
    verdict = judge_site_challenger(
        SiteGateInput("va", recalibrated, champion, "global champion", THRESHOLDS)
    )
    assert verdict.comparison is not None and verdict.comparison.kind == "same_ranking"
    delta = verdict.comparison.delta
    assert delta is not None and (delta.estimate, delta.low, delta.high) == (0.0, 0.0, 0.0)
    assert verdict.comparison.challenger_roc_auc == verdict.comparison.champion_roc_auc
    assert {c.rule: c.passed for c in verdict.checks}["non_inferior"] is True
    # A recalibration of another model is paired with the comparator on its base model's
    # predictions (the same order of risks as its own), not on the blurred ones.
    elsewhere = replace(
        recalibrated,
        version=adapted("svm", 2, "va"),
        ranking=prediction_set(IDS, OUTCOME, RISK),
    )
    other = judge_site_challenger(
        SiteGateInput("va", elsewhere, champion, "global champion", THRESHOLDS)
    )
    assert other.comparison is not None and other.comparison.kind == "paired"
    assert other.comparison.delta is not None and other.comparison.delta.estimate == 0.0
    assert {c.rule: c.passed for c in other.checks}["non_inferior"] is True
    assert _judge(replace(elsewhere, ranking=None), champion)["non_inferior"] is False
    # A refit from the same model ranks patients its own way: measured, and refused here.
    tags = {**recalibrated.version.tags, "adaptation_method": "refit"}
    refit = replace(recalibrated, version=replace(recalibrated.version, tags=tags))
    assert _judge(refit, champion)["non_inferior"] is False


def test_the_latest_version_of_a_name_is_never_one_adapted_for_another_site() -> None:
    base = version("svm", 1)
    state = family(base, adapted("svm", 2, "va"), adapted("svm", 3, "hungarian"))
    name = base.name
    assert state.find(name).version == 1
    assert state.find(name, site="va").version == 2
    assert state.find(name, site="switzerland").version == 1
    assert plan_promotion(state, SETTINGS, name).target.version == 1
    assert plan_site_promotion(state, SETTINGS, "va", name).target.version == 2
    with pytest.raises(NotFoundError, match="not adapted"):
        family(adapted("svm", 2, "va")).find(name)
