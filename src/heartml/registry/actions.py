"""The registry's verbs: tag after training, promote, auto-promote, roll back, reconcile, history.

Each reads the family's state, asks :mod:`heartml.registry.plans` what to do, and applies the
plan through :mod:`heartml.registry.mlflow_io`. Every write is followed by a reconcile, so the
family is left with one champion even when a command is interrupted or races another.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from heartml.registry.access import (
    EDIT,
    ChangeKind,
    needs_of,
    promotion_needs,
    reason_problem,
    reconcile_needs,
    recorded_reason,
    site_reconcile_needs,
)
from heartml.registry.accounts import (
    claimed_name,
    current_account,
    require_access,
    require_experiment_access,
)
from heartml.registry.gate import gate_record, gate_tags
from heartml.registry.mlflow_io import (
    apply_best_tag,
    apply_claim,
    apply_reconcile,
    apply_site_reconcile,
    call_store,
    download_model_card,
    get_client,
    read_family,
    read_gate_evidence,
    read_site_gate_evidence,
    record_gate,
    transition,
)
from heartml.registry.outcome import PromotionOutcome, PromotionResult
from heartml.registry.plans import (
    Decision,
    gate_subjects,
    history_of,
    plan_best_tag,
    plan_claim,
    plan_promotion,
    plan_reconcile,
    plan_rollback,
    plan_site_claim,
    plan_site_promotion,
    plan_site_reconcile,
    plan_site_rollback,
    refusal_event,
    site_gate_subjects,
)
from heartml.registry.values import (
    PRODUCTION,
    TAG_BEST,
    FamilyState,
    HistoryEntry,
    RegistryError,
    VersionInfo,
    utc_now_iso,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from heartml.settings import Settings

RECONCILE_PASSES = 3

# What each kind of promotion records as its reason before the person's own words.
WHY = {
    ChangeKind.AUTO: "auto-promotion of the best model",
    ChangeKind.BY_NAME: "manual promotion",
}


class ReasonRequiredError(RegistryError):
    """A promotion on an authenticated registry that must say why (``--reason``)."""


def whoami() -> str:
    """Who promotes where nobody is authenticated: HEARTML_PROMOTED_BY, else user@host."""
    return claimed_name()


# --------------------------------------------------------------------------------------------
# Tagging after training
# --------------------------------------------------------------------------------------------


def tag_candidate_version(
    settings: Settings, name: str, version: str, tags: Mapping[str, str]
) -> None:
    """Every registered candidate carries its scores (``roc_auc``: the selection score, with
    ``roc_auc_ci``; ``holdout_roc_auc`` and its ``_ci``), algorithm and lineage."""

    def _tag() -> None:
        client = get_client(settings)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)

    call_store(settings, _tag, f"tag {name}/{version}")


def tag_best_version(settings: Settings, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag this version (``tags``, then ``best_model=true``) and every other one in the family
    ``best_model=false``.

    Like promotion, it converges under concurrency: each trainer marks its own, then clears
    every marked version but the newest, so the last one to look leaves exactly one.
    """

    def _tag() -> None:
        client = get_client(settings)
        tag_candidate_version(settings, name, version, tags)
        client.set_model_version_tag(name, version, TAG_BEST, "true")
        apply_best_tag(client, plan_best_tag(read_family(settings, client)))

    call_store(settings, _tag, f"tag {name}/{version} {TAG_BEST}=true")


# --------------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------------


def reconcile_family(
    settings: Settings, client: MlflowClient
) -> tuple[FamilyState, list[str], list[str]]:
    """Demote every claim but the winning one; put the winner in Production.

    Reads, acts, and reads again until the family is consistent (a few passes at most): a
    concurrent promotion may have moved things between the read and the writes, and the pass
    after it repairs whatever a stale read got wrong. Returns the last state read, what was
    archived, and warnings of stage moves that failed.
    """
    archived: list[str] = []
    warnings: list[str] = []
    state = read_family(settings, client)
    for _ in range(RECONCILE_PASSES):
        plan = plan_reconcile(state)
        if plan is None:
            break
        done, warnings = apply_reconcile(settings, client, plan)
        archived.extend(done)
        state = read_family(settings, client)
    return state, sorted(set(archived)), warnings


def reconcile_site(settings: Settings, client: MlflowClient, site: str) -> FamilyState:
    """Leave ``champion-<site>`` on the site's latest claim alone, as :func:`reconcile_family`
    does for the global champion (read, act, read again: a concurrent site promotion may
    move the alias between the read and the write)."""
    state = read_family(settings, client)
    for _ in range(RECONCILE_PASSES):
        plan = plan_site_reconcile(state, site)
        if plan is None:
            break
        apply_site_reconcile(settings, client, plan)
        state = read_family(settings, client)
    return state


def promote_version(
    settings: Settings,
    name: str,
    version: int | None = None,
    *,
    site: str | None = None,
    reason: str | None = None,
    kind: ChangeKind = ChangeKind.BY_NAME,
    why: str | None = None,
    gated: bool = False,
    force: bool = False,
    dry_run: bool = False,
    state: FamilyState | None = None,
    extra_needs: Mapping[str, str] | None = None,
) -> PromotionResult:
    """Make NAME/VERSION (latest when None) the champion of the family.

    Gated promotions (``--auto`` and training) read the stored predictions of the challenger
    and the champion and refuse a challenger the gate turns down, unless ``force``. Every
    gated decision (not a dry run) is recorded on the challenger: the verdict's JSON in its
    run, tags on its version, its card rendered again. Promoting the champion again is a no-op
    that still repairs its stage.

    On an authenticated registry the promotion is recorded under the account the server
    authenticated, must carry a ``reason`` where :func:`~heartml.registry.access.reason_problem`
    says so, and is refused before anything is written unless the account holds every
    permission the plan's writes need (and ``extra_needs``, what the caller writes after).
    ``why`` says what kind of promotion it is; the person's ``reason`` follows it.

    With ``site`` it makes NAME/VERSION the champion of that site instead (the alias
    ``champion-<site>``, judged on the site's rows when gated); the global champion, its alias
    and the stages are left as they are.
    """
    state = state or read_family(settings)
    client: MlflowClient | None = None
    if site is not None:
        site_evidence = None
        if gated and (found := site_gate_subjects(state, site, name, version)) is not None:
            client = call_store(settings, lambda: get_client(settings))
            site_evidence = read_site_gate_evidence(settings, client, found)
        plan = plan_site_promotion(
            state, settings, site, name, version, gated=gated, force=force, evidence=site_evidence
        )
    else:
        evidence = None
        if gated and (subjects := gate_subjects(state, name, version)) is not None:
            client = call_store(settings, lambda: get_client(settings))
            evidence = read_gate_evidence(settings, client, *subjects)
        plan = plan_promotion(
            state, settings, name, version, gated=gated, force=force, evidence=evidence
        )
    account = current_account(settings)
    at = utc_now_iso()
    if plan.gate is not None and not dry_run:
        # Written before the claim (a promotion's event names the record it rests on), and
        # when the gate refuses too: the account must be allowed to write it, checked first.
        require_access(
            settings, account, {plan.target.name: EDIT}, f"record the gate on {plan.target.ref}"
        )
        writer = client or call_store(settings, lambda: get_client(settings))
        if account.authenticated and (run_id := plan.target.run_id):
            run = call_store(settings, lambda: writer.get_run(run_id))
            require_experiment_access(settings, str(run.info.experiment_id))
        record = gate_record(plan.gate, at=at, by=account.name)
        tags = {
            **gate_tags(plan.gate, at=at),
            **refusal_event(plan, by=account.name, at=at, authenticated=account.authenticated),
        }
        record_gate(settings, writer, plan.target, record, tags)
        client = writer
    if (answer := plan.unapplied_result(dry_run=dry_run)) is not None:
        return answer

    if plan.decision is Decision.REPAIR and site is not None:
        site_repair = plan_site_reconcile(state, site)
        needs = site_reconcile_needs(site_repair) if site_repair is not None else {}
        require_access(settings, account, needs, f"repair site '{site}' around {plan.target.ref}")
        client = client or call_store(settings, lambda: get_client(settings))
        reconcile_site(settings, client, site)
        return plan.repaired_result((), ())

    if plan.decision is Decision.REPAIR:
        repair = plan_reconcile(state)
        needs = reconcile_needs(repair) if repair is not None else {}
        require_access(settings, account, needs, f"repair the family around {plan.target.ref}")
        client = client or call_store(settings, lambda: get_client(settings))
        _, repaired, repair_warnings = reconcile_family(settings, client)
        return plan.repaired_result(tuple(repaired), tuple(repair_warnings))

    if problem := reason_problem(
        kind, authenticated=account.authenticated, force=force, reason=reason
    ):
        raise ReasonRequiredError(f"{problem} (account '{account}', nothing was changed)")
    needs = needs_of([*promotion_needs(plan).items(), *(extra_needs or {}).items()])
    verb = "roll back to" if kind is ChangeKind.ROLLBACK else "promote"
    require_access(settings, account, needs, f"{verb} {plan.target.ref}")

    what = why or WHY.get(kind, "manual promotion")
    if site is not None and why is None:
        what += f" for site '{site}'"
    if force and gated:
        # The gate still judged (its verdict is on record); --force only decides what follows.
        refused = plan.gate is not None and not plan.gate.passed
        what += " (gate refused, overridden with --force)" if refused else " (with --force)"
    client = client or call_store(settings, lambda: get_client(settings))
    make_claim = plan_claim if site is None else plan_site_claim
    claim = make_claim(
        plan,
        reason=recorded_reason(what, reason),
        by=account.name,
        at=at,
        authenticated=account.authenticated,
    )
    apply_claim(settings, client, plan, claim)
    if site is not None:
        # No stage: a site's champion is its alias alone.
        return plan.applied_result(reconcile_site(settings, client, site), (), ())
    warnings: list[str] = []
    if (warning := transition(client, plan.target, PRODUCTION)) is not None:
        warnings.append(warning)
    final, archived, more = reconcile_family(settings, client)
    warnings.extend(more)
    return plan.applied_result(final, tuple(archived), tuple(warnings))


def promote_best(
    settings: Settings,
    *,
    reason: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    state: FamilyState | None = None,
) -> PromotionResult:
    """Find the version tagged ``best_model=true`` and promote it through the gate."""
    state = state or read_family(settings)
    best = state.best_tagged()
    return promote_version(
        settings,
        best.name,
        best.version,
        reason=reason,
        kind=ChangeKind.AUTO,
        gated=True,
        force=force,
        dry_run=dry_run,
        state=state,
    )


def promote_site_best(
    settings: Settings,
    site: str,
    *,
    reason: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PromotionResult:
    """The latest version adapted for ``site``, promoted its champion through the site gate."""
    state = read_family(settings)
    latest = state.latest_adapted(site)
    return promote_version(
        settings,
        latest.name,
        latest.version,
        site=site,
        reason=reason,
        kind=ChangeKind.AUTO,
        why=f"auto-promotion of the latest version adapted for site '{site}'",
        gated=True,
        force=force,
        dry_run=dry_run,
        state=state,
    )


def rollback_site(
    settings: Settings, site: str, *, reason: str | None = None, dry_run: bool = False
) -> PromotionResult:
    """Make the site champion's predecessor the site's champion again (not gated)."""
    state = read_family(settings)
    restore = plan_site_rollback(state, site)
    return promote_version(
        settings,
        restore.name,
        restore.version,
        site=site,
        reason=reason,
        kind=ChangeKind.ROLLBACK,
        why=restore.reason,
        dry_run=dry_run,
        state=state,
    )


def promotion_history(settings: Settings) -> list[HistoryEntry]:
    """Every promotion recorded in the family's version tags, newest first."""
    return history_of(read_family(settings))


def rollback(
    settings: Settings, *, reason: str | None = None, dry_run: bool = False
) -> PromotionResult:
    """Make the champion's predecessor the champion again (no gate: an operator's decision)."""
    state = read_family(settings)
    restore = plan_rollback(state)
    # The best_model tag moves to the restored version afterwards: checked with the rest.
    best_moves = [(v.name, EDIT) for v in state.versions if v.is_best]
    result = promote_version(
        settings,
        restore.name,
        restore.version,
        reason=reason,
        kind=ChangeKind.ROLLBACK,
        why=restore.reason,
        dry_run=dry_run,
        state=state,
        extra_needs=needs_of([*best_moves, (restore.name, EDIT)]),
    )
    if result.outcome is PromotionOutcome.PROMOTED:
        # The restored version becomes the one tagged best, so the next `--auto` (every
        # pipeline run) confirms the rollback instead of promoting the rolled-back version
        # again; a new training session tags its own winner as usual.
        def _move_best() -> None:
            client = get_client(settings)
            target = result.target
            client.set_model_version_tag(target.name, str(target.version), TAG_BEST, "true")
            apply_best_tag(client, plan_best_tag(read_family(settings, client), target.ref))

        call_store(settings, _move_best, f"move {TAG_BEST} to {result.target.ref}")
    return result


def fetch_model_card(
    settings: Settings, name: str, version: int | None, directory: Path
) -> tuple[VersionInfo, Path]:
    """Write NAME/VERSION's model card (latest version when None) into ``directory``."""
    target = read_family(settings).find(name, version)
    client = call_store(settings, lambda: get_client(settings))
    return target, call_store(settings, lambda: download_model_card(client, target, directory))
