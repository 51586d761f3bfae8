"""What a promotion did, or would do: its outcome, the versions involved and the gate's verdict."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from heartml.registry.gate import GateVerdict
from heartml.registry.values import VersionInfo


class PromotionOutcome(StrEnum):
    """How a promotion ended (the ``outcome`` of ``promote --json``)."""

    PROMOTED = "promoted"
    ALREADY_CHAMPION = "already_champion"
    REPAIRED = "repaired"
    REFUSED = "refused"
    DRY_RUN = "dry_run"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class PromotionResult:
    """What a promotion did, or would do (dry run), and the message the command prints."""

    outcome: PromotionOutcome
    target: VersionInfo
    previous: VersionInfo | None
    message: str
    archived: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    gate: GateVerdict | None = None  # the gate's verdict, when the promotion was gated
    site: str | None = None  # the site whose champion it concerns; None: the global champion

    @property
    def refused(self) -> bool:
        return self.outcome is PromotionOutcome.REFUSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "name": self.target.name,
            "version": self.target.version,
            "roc_auc": self.target.roc_auc,
            "previous": self.previous.ref if self.previous else None,
            "message": self.message,
            "archived": list(self.archived),
            "warnings": list(self.warnings),
            "gate": None if self.gate is None else self.gate.as_dict(),
            **({"site": self.site} if self.site else {}),
        }
