"""Who may change the registry, as pure rules: accounts, permission levels, what a change needs.

On a tracking server that runs MLflow's basic-auth app, every request is made by an account,
and each registered model grants each account a level: ``READ`` < ``USE`` < ``EDIT`` <
``MANAGE`` (``DENY`` and ``NO_PERMISSIONS`` grant nothing). What MLflow 3.17 asks of each write
a promotion makes (``mlflow/server/auth/__init__.py``, and measured on a real server):

- set a version's tag, move a version's stage, set an alias: ``EDIT`` on the model;
- delete an alias, delete a version's tag: ``MANAGE`` (MLflow files both under "delete").

A promotion across models deletes the alias from the old champion's model, so it needs
``MANAGE`` there. :func:`promotion_needs` says what a plan needs; the verbs compare that with what
the server says the account holds *before* they write anything, so a refused promotion changes
nothing. On the embedded store and on a server without authentication nothing is checked and
the account is only a claim (``HEARTML_PROMOTED_BY`` or ``user@host``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from heartml.registry.values import TAG_PREVIOUS, RegistryError

if TYPE_CHECKING:
    from heartml.registry.plans import PromotionPlan, ReconcilePlan, SiteReconcilePlan

READ = "READ"
EDIT = "EDIT"
MANAGE = "MANAGE"

# MLflow's order of permission levels; anything else (DENY, NO_PERMISSIONS) grants nothing.
LEVELS = {"NO_PERMISSIONS": 0, "DENY": 0, READ: 1, "USE": 2, EDIT: 3, MANAGE: 4}


def at_least(held: str, needed: str) -> bool:
    return LEVELS.get(held, 0) >= LEVELS[needed]


@dataclass(frozen=True, slots=True)
class Account:
    """Who is making a change: an account the server authenticated, or only a claimed name."""

    name: str
    authenticated: bool

    def __str__(self) -> str:
        return self.name


class AccessDeniedError(RegistryError):
    """The server refused the account (401) or the action (403), or a check made before any
    write found the account short of a permission; the message names both, on one line."""


def refused_message(
    uri: str, username: str | None, status: int, action: str, detail: str = ""
) -> str:
    """The one line for a refusal by the server: who was refused, and what they tried."""
    detail = f"; {detail}" if detail else ""
    if status == 401:
        if username:
            return (
                f"the registry at {uri} refused account '{username}': wrong password or no such "
                f"account (HTTP 401{detail}); check MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD"
            )
        return (
            f"the registry at {uri} refused an anonymous request to {action} (HTTP 401{detail}): "
            "it needs an account; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    who = f"account '{username}'" if username else "an anonymous request"
    return f"{who} may not {action} on the registry at {uri} (HTTP 403 Forbidden{detail})"


def needs_of(
    writes: Iterable[tuple[str, str]],
) -> dict[str, str]:
    """The level each model needs, from ``(model, level)`` pairs: the highest asked for."""
    needs: dict[str, str] = {}
    for model, level in writes:
        if not at_least(needs.get(model, "NO_PERMISSIONS"), level):
            needs[model] = level
    return needs


def promotion_needs(plan: PromotionPlan) -> dict[str, str]:
    """What applying a promotion plan writes, as the level each model needs.

    The target's model gets tags, the alias and the Production stage (``EDIT``), and loses a
    stale ``previous_champion`` tag on a first promotion (a delete: ``MANAGE``); every other
    model that holds the alias loses it (``MANAGE``); versions that held the alias or the stage
    go to Archived (``EDIT``).
    """
    target = plan.target
    # A site promotion writes its own claim tags and deletes none.
    clears_previous = plan.site is None and plan.previous is None and TAG_PREVIOUS in target.tags
    writes = [(target.name, MANAGE if clears_previous else EDIT)]
    writes += [(holder.name, MANAGE) for holder in plan.release_alias]
    writes += [(ref.rpartition("/")[0], EDIT) for ref in plan.archive]
    return needs_of(writes)


def reconcile_needs(plan: ReconcilePlan) -> dict[str, str]:
    """What a reconcile writes: the alias taken from other models (``MANAGE``), the champion's
    alias and stage and the losers' stage (``EDIT``)."""
    writes = [(holder.name, MANAGE) for holder in plan.release_alias]
    if plan.claim_alias or plan.to_production:
        writes.append((plan.champion.name, EDIT))
    writes += [(loser.name, EDIT) for loser in plan.archive]
    return needs_of(writes)


def site_reconcile_needs(plan: SiteReconcilePlan) -> dict[str, str]:
    """What a site's reconcile writes: the site's alias taken from other models (``MANAGE``)."""
    return needs_of((holder.name, MANAGE) for holder in plan.release_alias)


def missing_access(needs: Mapping[str, str], held: Mapping[str, str]) -> list[str]:
    """What the account lacks, one phrase per model: empty when it may do everything."""
    return [
        f"{needed} on {model} (it holds {held.get(model, 'no grant')})"
        for model, needed in sorted(needs.items())
        if not at_least(held.get(model, "NO_PERMISSIONS"), needed)
    ]


class ChangeKind(StrEnum):
    """What kind of promotion a person asked for (the reason rule depends on it)."""

    AUTO = "auto"  # --auto, and training: the best-tagged version through the gate
    BY_NAME = "by_name"  # NAME [VERSION]: a person's choice
    ROLLBACK = "rollback"


def reason_problem(
    kind: ChangeKind, *, authenticated: bool, force: bool, reason: str | None
) -> str | None:
    """Why this promotion may not go ahead without ``--reason``; None when it may.

    On an authenticated registry a person's promotion by name, a rollback and anything forced
    past the gate are decisions someone must answer for: the reason is written with the
    promotion event. The embedded store (one person's machine) asks for none.
    """
    if not authenticated or (reason and reason.strip()):
        return None
    if force:
        return "--force skips the gate: say why with --reason"
    if kind is ChangeKind.BY_NAME:
        return "promoting a version by name is a person's decision: say why with --reason"
    if kind is ChangeKind.ROLLBACK:
        return "a rollback replaces the champion by hand: say why with --reason"
    return None


def recorded_reason(what: str, given: str | None) -> str:
    """The reason written with the event: what happened, then the person's words if any."""
    given = " ".join((given or "").split())
    return f"{what}: {given}" if given else what
