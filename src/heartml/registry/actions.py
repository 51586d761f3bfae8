"""The registry's verbs: tag after training, promote, auto-promote, roll back, reconcile, history.

Each reads the family's state, asks :mod:`heartml.registry.plans` what to do, and applies the
plan through :mod:`heartml.registry.mlflow_io`. Every write is followed by a reconcile, so the
family is left with one champion even when a command is interrupted or races another.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from heartml.registry.gate import gate_record, gate_tags
from heartml.registry.mlflow_io import (
    apply_best_tag,
    apply_claim,
    apply_reconcile,
    call_store,
    download_model_card,
    get_client,
    read_family,
    read_gate_evidence,
    record_gate,
    transition,
)
from heartml.registry.plans import (
    Decision,
    gate_subjects,
    history_of,
    plan_best_tag,
    plan_claim,
    plan_promotion,
    plan_reconcile,
    plan_rollback,
)
from heartml.registry.values import (
    PRODUCTION,
    TAG_BEST,
    FamilyState,
    HistoryEntry,
    PromotionOutcome,
    PromotionResult,
    VersionInfo,
    utc_now_iso,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from heartml.settings import Settings

RECONCILE_PASSES = 3


def whoami() -> str:
    """Who promotes: HEARTML_PROMOTED_BY (Jenkins sets its build tag), else user@host."""
    if explicit := os.environ.get("HEARTML_PROMOTED_BY"):
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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

    call_store(settings, _tag)


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

    call_store(settings, _tag)


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


def promote_version(
    settings: Settings,
    name: str,
    version: int | None = None,
    *,
    reason: str = "manual promotion",
    gated: bool = False,
    force: bool = False,
    dry_run: bool = False,
    state: FamilyState | None = None,
) -> PromotionResult:
    """Make NAME/VERSION (latest when None) the champion of the family.

    Gated promotions (``--auto`` and training) read the stored predictions of the challenger
    and the champion and refuse a challenger the gate turns down, unless ``force``. Every
    gated decision (not a dry run) is recorded on the challenger: the verdict's JSON in its
    run, tags on its version, its card rendered again. Promoting the champion again is a no-op
    that still repairs its stage.
    """
    state = state or read_family(settings)
    client: MlflowClient | None = None
    evidence = None
    if gated and (subjects := gate_subjects(state, name, version)) is not None:
        client = call_store(settings, lambda: get_client(settings))
        evidence = read_gate_evidence(settings, client, *subjects)
    plan = plan_promotion(
        state, settings, name, version, gated=gated, force=force, evidence=evidence
    )
    at, by = utc_now_iso(), whoami()
    if plan.gate is not None and not dry_run:
        # Written before the claim: a promotion's event names the record it rests on.
        client = client or call_store(settings, lambda: get_client(settings))
        record = gate_record(plan.gate, at=at, by=by)
        record_gate(settings, client, plan.target, record, gate_tags(plan.gate, at=at))
    if (answer := plan.unapplied_result(dry_run=dry_run)) is not None:
        return answer

    client = client or call_store(settings, lambda: get_client(settings))
    if plan.decision is Decision.REPAIR:
        _, repaired, repair_warnings = reconcile_family(settings, client)
        return plan.repaired_result(tuple(repaired), tuple(repair_warnings))

    claim = plan_claim(plan, reason=reason, by=by, at=at)
    apply_claim(settings, client, plan, claim)
    warnings: list[str] = []
    if (warning := transition(client, plan.target, PRODUCTION)) is not None:
        warnings.append(warning)
    final, archived, more = reconcile_family(settings, client)
    warnings.extend(more)
    return plan.applied_result(final, tuple(archived), tuple(warnings))


def promote_best(
    settings: Settings,
    *,
    reason: str = "auto-promotion of the best model",
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
        gated=True,
        force=force,
        dry_run=dry_run,
        state=state,
    )


def promotion_history(settings: Settings) -> list[HistoryEntry]:
    """Every promotion recorded in the family's version tags, newest first."""
    return history_of(read_family(settings))


def rollback(settings: Settings, *, dry_run: bool = False) -> PromotionResult:
    """Make the champion's predecessor the champion again (no gate: an operator's decision)."""
    state = read_family(settings)
    restore = plan_rollback(state)
    result = promote_version(
        settings,
        restore.name,
        restore.version,
        reason=restore.reason,
        dry_run=dry_run,
        state=state,
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

        call_store(settings, _move_best)
    return result


def fetch_model_card(
    settings: Settings, name: str, version: int | None, directory: Path
) -> tuple[VersionInfo, Path]:
    """Write NAME/VERSION's model card (latest version when None) into ``directory``."""
    target = read_family(settings).find(name, version)
    client = call_store(settings, lambda: get_client(settings))
    return target, call_store(settings, lambda: download_model_card(client, target, directory))
