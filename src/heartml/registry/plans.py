"""Promotion decisions as pure functions: the family's state and the settings in, a plan out.

A plan says what a verb will change — which version becomes champion, which lose the alias and
go to ``Archived``, what the gate said, what a rollback restores, which ``best_model`` tags are
cleared — and what the verb answers once the plan is applied. Nothing here reads or writes the
store: :mod:`heartml.registry.actions` reads the state, asks for a plan and applies it, so every
rule of the README's "The promotion rule" is tested here without a store.

Why promotions converge: MLflow offers no transaction across models, so every write is followed
by a reconcile (:func:`plan_reconcile`) that demotes every claim but the winning one. The winning
claim is the one with the latest ``promoted_at`` tag (then name, then version), a rule every
process applies identically. Whatever interleaving two promotions take, the one that reads last
sees both claims and removes the loser, and no process ever removes the winner: the family
converges to exactly one champion, which is the only version in Production.

A site's champion (alias ``champion-<site>``) follows the same plan, claim and reconcile with
the site's own claim tags (``site_promoted_at.<site>``) and no stage: :func:`plan_site_promotion`,
:func:`plan_site_reconcile`, :func:`plan_site_claim`, :func:`plan_site_rollback`. The global
champion's alias, its stage and its claim tags are never part of a site plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from heartml.registry.gate import (
    GateEvidence,
    GateInput,
    GateVerdict,
    ModelEvidence,
    SiteEvidence,
    SiteGateInput,
    Thresholds,
    gate_summary,
    judge_challenger,
    judge_site_challenger,
)
from heartml.registry.outcome import PromotionOutcome, PromotionResult
from heartml.registry.values import (
    ARCHIVED,
    EVENT_PREFIX,
    NO_PREVIOUS,
    PRODUCTION,
    SITE_PREVIOUS,
    SITE_PROMOTED_AT,
    TAG_PREVIOUS,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_REASON,
    FamilyState,
    HistoryEntry,
    NotFoundError,
    RegistryError,
    VersionInfo,
)

if TYPE_CHECKING:
    from heartml.settings import Settings


# --------------------------------------------------------------------------------------------
# Reconcile: one champion, holding the alias and the only one in Production
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    """What makes an inconsistent family consistent around its champion."""

    champion: VersionInfo
    release_alias: tuple[VersionInfo, ...]  # other holders of the alias lose it
    claim_alias: bool  # the champion does not hold the alias yet
    archive: tuple[VersionInfo, ...]  # other holders of the alias or the stage, not yet Archived
    to_production: bool  # the champion is not in Production yet


def plan_reconcile(state: FamilyState) -> ReconcilePlan | None:
    """Demote every claim but the winning one; None when the family is already consistent.

    Versions that never held the alias or the stage keep their stage.
    """
    champion = state.champion
    if champion is None or state.consistent:
        return None
    losers = {v.ref: v for v in (*state.alias_holders, *state.in_production)}
    losers.pop(champion.ref, None)
    return ReconcilePlan(
        champion=champion,
        release_alias=tuple(v for v in state.alias_holders if v.ref != champion.ref),
        claim_alias=state.alias not in champion.aliases,
        archive=tuple(v for v in losers.values() if v.stage != ARCHIVED),
        to_production=champion.stage != PRODUCTION,
    )


# --------------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------------


class Decision(StrEnum):
    """What a promotion will do."""

    PROMOTE = "promote"  # claim, move the alias, put in Production, reconcile
    REPAIR = "repair"  # the target is champion already, but the family disagrees
    NOTHING = "nothing"  # the target is champion and the family is consistent
    REFUSE = "refuse"  # the gate says no


@dataclass(frozen=True, slots=True)
class PromotionPlan:
    """What promoting ``target`` will change, and what the command answers."""

    decision: Decision
    target: VersionInfo
    previous: VersionInfo | None  # the champion it replaces
    alias: str
    gate: GateVerdict | None = None  # None: not gated (by name, rollback) or forced
    release_alias: tuple[VersionInfo, ...] = ()  # holders in other models, before the claim
    archive: tuple[str, ...] = ()  # what loses the alias or the stage to the target
    disagreements: tuple[str, ...] = ()  # what a repair fixes
    site: str | None = None  # the site whose champion it changes; None: the global champion

    def _result(self, *args: Any, **kwargs: Any) -> PromotionResult:
        return PromotionResult(*args, **{**kwargs, "site": self.site})

    @property
    def becomes(self) -> str:
        """What the target becomes, in the command's sentences."""
        if self.site is None:
            return f"{PRODUCTION} (alias '{self.alias}')"
        return f"champion of site '{self.site}' (alias '{self.alias}')"

    def unapplied_result(self, *, dry_run: bool) -> PromotionResult | None:
        """The answer when nothing is written (no-op, refusal, dry run); None otherwise."""
        target, previous = self.target, self.previous
        if self.decision is Decision.NOTHING:
            what = "champion" if self.site is None else f"the champion of site '{self.site}'"
            return self._result(
                PromotionOutcome.ALREADY_CHAMPION,
                target,
                previous,
                f"{target.ref} is already {what}",
            )
        if self.decision is Decision.REFUSE:
            assert self.gate is not None
            return self._result(
                PromotionOutcome.REFUSED,
                target,
                previous,
                f"refused by the gate: {self.gate.reason}",
                gate=self.gate,
            )
        if not dry_run:
            return None
        if self.decision is Decision.REPAIR:
            notes = "; ".join(self.disagreements)
            return self._result(
                PromotionOutcome.DRY_RUN, target, previous, f"would repair the family: {notes}"
            )
        archive_note = f"; would archive {', '.join(self.archive)}" if self.archive else ""
        return self._result(
            PromotionOutcome.DRY_RUN,
            target,
            previous,
            f"would promote {target.ref} to {self.becomes}" + archive_note,
            self.archive,
            gate=self.gate,
        )

    def repaired_result(
        self, archived: tuple[str, ...], warnings: tuple[str, ...]
    ) -> PromotionResult:
        return self._result(
            PromotionOutcome.REPAIRED,
            self.target,
            self.previous,
            f"{self.target.ref} is champion; repaired the family",
            archived,
            warnings,
        )

    def applied_result(
        self, final: FamilyState, archived: tuple[str, ...], warnings: tuple[str, ...]
    ) -> PromotionResult:
        """Promoted — unless a concurrent promotion's newer claim won the reconcile."""
        target = self.target
        winner = final.champion if self.site is None else final.site_champion(self.site)
        if winner is not None and winner.ref != target.ref:
            return self._result(
                PromotionOutcome.SUPERSEDED,
                target,
                self.previous,
                f"{target.ref} was promoted but a concurrent promotion of {winner.ref} is newer "
                "and won",
                archived,
                warnings,
                self.gate,
            )
        return self._result(
            PromotionOutcome.PROMOTED,
            target,
            self.previous,
            f"promoted {target.ref} to {self.becomes}",
            archived,
            warnings,
            self.gate,
        )


def gate_subjects(
    state: FamilyState, name: str, version: int | None = None
) -> tuple[VersionInfo, VersionInfo | None] | None:
    """The challenger and champion a gated promotion of NAME/VERSION would judge (their
    evidence is then read), or None when the target is the champion already (nothing to
    judge)."""
    target = state.find(name, version)
    current = state.champion
    if current is not None and current.ref == target.ref:
        return None
    return target, current


def plan_promotion(
    state: FamilyState,
    settings: Settings,
    name: str,
    version: int | None = None,
    *,
    gated: bool = False,
    force: bool = False,
    evidence: GateEvidence | None = None,
) -> PromotionPlan:
    """Decide what making NAME/VERSION (latest when None) the champion takes.

    Promoting the champion again changes nothing, or repairs a family that disagrees. Gated
    promotions (``--auto``, training) are judged on ``evidence`` (the stored predictions of
    the challenger and the champion; without it the challenger has none) and refused when the
    gate says no, unless ``force``: a forced promotion still carries the verdict, for the
    record. Promoting by name and rolling back are a person's decision and are not gated.
    """
    target = state.find(name, version)
    if (site := target.adapted_for) is not None:
        raise RegistryError(
            f"{target.ref} is adapted for site '{site}': it may be that site's champion "
            f"(heartml promote --site {site} {target.name} {target.version}), not the family's"
        )
    current = state.champion
    alias = settings.champion_alias
    if current is not None and current.ref == target.ref:
        if state.consistent:
            return PromotionPlan(Decision.NOTHING, target, current, alias)
        return PromotionPlan(
            Decision.REPAIR, target, current, alias, disagreements=tuple(state.disagreements())
        )
    verdict = None
    if gated:
        if evidence is None or evidence.challenger.version.ref != target.ref:
            evidence = GateEvidence(
                ModelEvidence(target, problem="its evidence was not read"),
                None if current is None else ModelEvidence(current, problem="not read"),
            )
        verdict = judge_challenger(
            GateInput.from_settings(settings, evidence.challenger, evidence.champion),
            forced=force,
        )
    if verdict is not None and not verdict.passed and not force:
        return PromotionPlan(Decision.REFUSE, target, current, alias, gate=verdict)
    return PromotionPlan(
        Decision.PROMOTE,
        target,
        current,
        alias,
        gate=verdict,
        # Within one model, setting the alias moves it; other models' holders release it.
        release_alias=tuple(v for v in state.alias_holders if v.name != target.name),
        archive=tuple(
            sorted({v.ref for v in (*state.alias_holders, *state.in_production)} - {target.ref})
        ),
    )


# --------------------------------------------------------------------------------------------
# A site's champion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteSubjects:
    """What a gated site promotion judges: the challenger, and what it is compared with (the
    site's champion, else the global champion, else nothing)."""

    site: str
    challenger: VersionInfo
    comparator: VersionInfo | None
    comparator_role: str


def site_target(state: FamilyState, site: str, name: str, version: int | None) -> VersionInfo:
    """NAME/VERSION as a candidate for ``site``: adapted for it, or not adapted at all (a
    person may choose a trained model for a site); adapted for another site, refused."""
    target = state.find(name, version, site=site)
    adapted = target.adapted_for
    if adapted is not None and adapted != site:
        raise RegistryError(
            f"{target.ref} is adapted for site '{adapted}', not '{site}': it may not be the "
            f"champion of '{site}'"
        )
    return target


def site_gate_subjects(
    state: FamilyState, site: str, name: str, version: int | None = None
) -> SiteSubjects | None:
    """The versions a gated promotion for ``site`` judges, or None when the target is the
    site's champion already (nothing to judge)."""
    target = site_target(state, site, name, version)
    current = state.site_champion(site)
    if current is not None and current.ref == target.ref:
        return None
    if current is not None:
        return SiteSubjects(site, target, current, "site champion")
    return SiteSubjects(site, target, state.champion, "global champion")


@dataclass(frozen=True, slots=True)
class SiteGateEvidence:
    """The site rows of the challenger and of its comparator, as read from the store."""

    subjects: SiteSubjects
    challenger: SiteEvidence
    comparator: SiteEvidence | None


def plan_site_promotion(
    state: FamilyState,
    settings: Settings,
    site: str,
    name: str,
    version: int | None = None,
    *,
    gated: bool = False,
    force: bool = False,
    evidence: SiteGateEvidence | None = None,
) -> PromotionPlan:
    """Decide what making NAME/VERSION the champion of ``site`` takes (the alias
    ``champion-<site>`` only: no stage, nothing of the global champion's)."""
    target = site_target(state, site, name, version)
    alias = state.site_alias(site)
    current = state.site_champion(site)
    if current is not None and current.ref == target.ref:
        others = tuple(v.ref for v in state.site_holders(site) if v.ref != target.ref)
        if not others:
            return PromotionPlan(Decision.NOTHING, target, current, alias, site=site)
        notes = tuple(f"{ref} also holds '{alias}'" for ref in others)
        return PromotionPlan(
            Decision.REPAIR, target, current, alias, disagreements=notes, site=site
        )
    verdict = None
    if gated:
        if evidence is None or evidence.challenger.version.ref != target.ref:
            subjects = site_gate_subjects(state, site, name, version)
            assert subjects is not None
            evidence = SiteGateEvidence(
                subjects,
                SiteEvidence(target, problem="its evidence was not read"),
                None
                if subjects.comparator is None
                else SiteEvidence(subjects.comparator, problem="not read"),
            )
        verdict = judge_site_challenger(
            SiteGateInput(
                site,
                evidence.challenger,
                evidence.comparator,
                evidence.subjects.comparator_role,
                Thresholds.from_settings(settings),
            ),
            forced=force,
        )
    if verdict is not None and not verdict.passed and not force:
        return PromotionPlan(Decision.REFUSE, target, current, alias, gate=verdict, site=site)
    return PromotionPlan(
        Decision.PROMOTE,
        target,
        current,
        alias,
        gate=verdict,
        # Within one model, setting the alias moves it; other models' holders release it.
        release_alias=tuple(v for v in state.site_holders(site) if v.name != target.name),
        site=site,
    )


@dataclass(frozen=True, slots=True)
class SiteReconcilePlan:
    """The holders of ``champion-<site>`` that lose it to the site's winning claim."""

    site: str
    alias: str
    champion: VersionInfo
    release_alias: tuple[VersionInfo, ...]


def plan_site_reconcile(state: FamilyState, site: str) -> SiteReconcilePlan | None:
    """Every holder of the site's alias but the latest claim releases it; None when one (or
    no) version holds it."""
    champion = state.site_champion(site)
    holders = state.site_holders(site)
    if champion is None or len(holders) <= 1:
        return None
    release = tuple(v for v in holders if v.ref != champion.ref)
    return SiteReconcilePlan(site, state.site_alias(site), champion, release)


@dataclass(frozen=True, slots=True)
class Claim:
    """The tags a promotion writes on its target before the alias moves."""

    tags: Mapping[str, str]
    clear_previous: bool  # a first promotion: a stale previous_champion tag must go


def event_tag(at: str) -> str:
    """The key of a promotion's event tag, unique per instant: ``promotion_event.<at>``."""
    return EVENT_PREFIX + at.replace(":", "").replace("-", "").replace(".", "")


def plan_claim(
    plan: PromotionPlan, *, reason: str, by: str, at: str, authenticated: bool = False
) -> Claim:
    """The claim of ``plan``'s target: when, by whom, why, what it replaces, and the event
    that ``--history`` reads (with the gate's verdict, when the promotion was gated).
    ``authenticated``: ``by`` is the account the server authenticated, not a name the
    promoter's environment claimed."""
    previous = plan.previous.ref if plan.previous else None
    event: dict[str, Any] = {
        "at": at,
        "by": by,
        "authenticated": authenticated,
        "previous": previous,
        "reason": reason,
        "roc_auc": plan.target.roc_auc,
    }
    if plan.gate is not None:  # a person's promotion by name is not gated: no key
        event["gate"] = gate_summary(plan.gate, at=at)
    tags = {
        TAG_PROMOTED_AT: at,
        TAG_PROMOTED_BY: by,
        TAG_REASON: reason,
        event_tag(at): json.dumps(event, sort_keys=True),
    }
    if previous:
        tags[TAG_PREVIOUS] = previous
    return Claim(tags=tags, clear_previous=previous is None)


def plan_site_claim(
    plan: PromotionPlan, *, reason: str, by: str, at: str, authenticated: bool = False
) -> Claim:
    """The claim of a site promotion: the site's own claim tags (when, what it replaces) and
    the event ``--history`` reads, with the site in it. Nothing is deleted (a first promotion
    writes ``none`` as its predecessor), so a site promotion needs no delete permission on the
    target's model."""
    assert plan.site is not None
    previous = plan.previous.ref if plan.previous else None
    event: dict[str, Any] = {
        "at": at,
        "by": by,
        "authenticated": authenticated,
        "previous": previous,
        "reason": reason,
        "roc_auc": plan.target.roc_auc,
        "site": plan.site,
    }
    if plan.gate is not None:
        event["gate"] = gate_summary(plan.gate, at=at)
    tags = {
        SITE_PROMOTED_AT + plan.site: at,
        SITE_PREVIOUS + plan.site: previous or NO_PREVIOUS,
        event_tag(at): json.dumps(event, sort_keys=True),
    }
    return Claim(tags=tags, clear_previous=False)


# --------------------------------------------------------------------------------------------
# Rollback, best_model, history
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """The version a rollback restores, and the reason it records."""

    name: str
    version: int
    reason: str


def plan_rollback(state: FamilyState) -> RollbackPlan:
    """The champion's predecessor (its ``previous_champion`` tag), or NotFoundError."""
    current = state.champion
    if current is None:
        raise NotFoundError("there is no champion to roll back from")
    previous = current.tags.get(TAG_PREVIOUS, "")
    name, _, version = previous.rpartition("/")
    if not name or not version.isdigit():
        raise NotFoundError(f"champion {current.ref} has no previous champion to roll back to")
    return RollbackPlan(name, int(version), f"rollback from {current.ref}")


def plan_site_rollback(state: FamilyState, site: str) -> RollbackPlan:
    """The site champion's predecessor for ``site``, or NotFoundError."""
    current = state.site_champion(site)
    if current is None:
        raise NotFoundError(f"site '{site}' has no champion to roll back from")
    previous = current.tags.get(SITE_PREVIOUS + site, "")
    name, _, version = previous.rpartition("/")
    if not name or not version.isdigit():
        raise NotFoundError(
            f"the champion of site '{site}', {current.ref}, has no previous site champion to "
            "roll back to"
        )
    return RollbackPlan(name, int(version), f"rollback of site '{site}' from {current.ref}")


@dataclass(frozen=True, slots=True)
class BestTagPlan:
    """Exactly one version keeps ``best_model=true``; the others are set to false."""

    keep: VersionInfo | None
    clear: tuple[VersionInfo, ...] = field(default_factory=tuple)


def plan_best_tag(state: FamilyState, keep: str | None = None) -> BestTagPlan:
    """Clear every ``best_model=true`` but ``keep`` (a ``name/version``).

    Without ``keep``, the newest marked version stays: each trainer marks its own, then clears
    the others, so under concurrency the last one to look leaves exactly one.
    """
    marked = [v for v in state.versions if v.is_best]
    if keep is None:
        winner = max(marked, key=lambda v: (v.created_ms, v.name, v.version), default=None)
    else:
        winner = next((v for v in marked if v.ref == keep), None)
    kept = winner.ref if winner else keep
    return BestTagPlan(winner, tuple(v for v in marked if v.ref != kept))


def refusal_event(
    plan: PromotionPlan, *, by: str, at: str, authenticated: bool = False
) -> dict[str, str]:
    """The event tag of an attempt the gate refused, so that ``--history`` lists it beside the
    promotions; nothing for any other plan."""
    if plan.decision is not Decision.REFUSE or plan.gate is None:
        return {}
    event = {
        "at": at,
        "by": by,
        "authenticated": authenticated,
        "previous": None,
        "reason": "refused by the gate",
        "roc_auc": plan.target.roc_auc,
        "promoted": False,
        "gate": gate_summary(plan.gate, at=at),
    }
    if plan.site is not None:
        event["site"] = plan.site
    return {event_tag(at): json.dumps(event, sort_keys=True)}


def history_of(state: FamilyState) -> list[HistoryEntry]:
    """Every promotion, and every attempt the gate refused, recorded in the family's event
    tags, newest first."""
    entries: list[HistoryEntry] = []
    for version in state.versions:
        for key, value in version.tags.items():
            if not key.startswith(EVENT_PREFIX):
                continue
            try:
                event = json.loads(value)
            except ValueError:
                continue
            entries.append(
                HistoryEntry(
                    at=str(event.get("at", "")),
                    name=version.name,
                    version=version.version,
                    previous=event.get("previous"),
                    reason=str(event.get("reason", "")),
                    by=str(event.get("by", "")),
                    roc_auc=event.get("roc_auc"),
                    authenticated=event.get("authenticated"),
                    gate=event.get("gate"),
                    promoted=bool(event.get("promoted", True)),
                    site=event.get("site"),
                )
            )
    return sorted(entries, key=lambda e: (e.at, e.name, e.version), reverse=True)
