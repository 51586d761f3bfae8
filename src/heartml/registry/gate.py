"""The promotion gate: may a challenger replace the champion? A pure function of the two.

The gate is a sequence of rules, each a function of :class:`GateInput` returning a
:class:`GateCheck` (its verdict, its numbers and a sentence saying why). They are applied in
order and the first that fails decides: a later rule may rely on what an earlier one checked
(a score exists before it is compared). A new rule (a paired test of the two models' held-out
predictions, a calibration bound) is one more function in :data:`RULES`, with the evidence it
needs added to :class:`GateInput`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heartml.registry.values import TAG_ROC_AUC, VersionInfo

if TYPE_CHECKING:
    from heartml.settings import Settings


@dataclass(frozen=True, slots=True)
class GateInput:
    """What the gate judges: the challenger, the champion it would replace, the thresholds."""

    challenger: VersionInfo
    champion: VersionInfo | None
    min_roc_auc: float
    tolerance: float

    @classmethod
    def from_settings(
        cls, settings: Settings, challenger: VersionInfo, champion: VersionInfo | None
    ) -> GateInput:
        return cls(challenger, champion, settings.min_roc_auc, settings.promotion_tolerance)


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One rule applied: whether it passed, the numbers it compared, and why."""

    rule: str
    passed: bool
    detail: str
    numbers: Mapping[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "passed": self.passed,
            "detail": self.detail,
            "numbers": dict(self.numbers),
        }


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The rules applied to one challenger, in order, up to the first that failed."""

    challenger: VersionInfo
    champion: VersionInfo | None
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed_check(self) -> GateCheck | None:
        return next((check for check in self.checks if not check.passed), None)

    @property
    def reason(self) -> str | None:
        """Why the challenger may not replace the champion; None when it may."""
        failed = self.failed_check
        return None if failed is None else failed.detail

    def as_dict(self) -> dict[str, Any]:
        return {
            "challenger": self.challenger.ref,
            "champion": None if self.champion is None else self.champion.ref,
            "passed": self.passed,
            "checks": [check.as_dict() for check in self.checks],
        }


Rule = Callable[[GateInput], GateCheck]


def has_score(given: GateInput) -> GateCheck:
    """The challenger carries the held-out ROC-AUC it is judged by."""
    score = given.challenger.roc_auc
    if score is None:
        return GateCheck(
            "has_score", False, f"{given.challenger.ref} has no {TAG_ROC_AUC} tag to judge it by"
        )
    return GateCheck(
        "has_score",
        True,
        f"{given.challenger.ref} roc_auc {score:.4f}",
        {"challenger_roc_auc": score},
    )


def meets_minimum(given: GateInput) -> GateCheck:
    """The challenger's ROC-AUC is at least the minimum (``HEARTML_MIN_ROC_AUC``)."""
    ref, score = given.challenger.ref, given.challenger.roc_auc or 0.0
    numbers = {"challenger_roc_auc": score, "min_roc_auc": given.min_roc_auc}
    if score < given.min_roc_auc:
        detail = f"{ref} roc_auc {score:.4f} is below the minimum {given.min_roc_auc:.4f}"
        return GateCheck("min_roc_auc", False, detail, numbers)
    detail = f"{ref} roc_auc {score:.4f} is at least the minimum {given.min_roc_auc:.4f}"
    return GateCheck("min_roc_auc", True, detail, numbers)


def not_worse_than_champion(given: GateInput) -> GateCheck:
    """The challenger's ROC-AUC is at least the champion's minus the tolerance.

    Without a champion, or a champion without a score, there is nothing to compare with.
    """
    ref, score = given.challenger.ref, given.challenger.roc_auc or 0.0
    champion = given.champion
    if champion is None or champion.roc_auc is None:
        detail = "no champion score to compare with"
        return GateCheck("vs_champion", True, detail, {"challenger_roc_auc": score})
    floor = champion.roc_auc - given.tolerance
    numbers = {
        "challenger_roc_auc": score,
        "champion_roc_auc": champion.roc_auc,
        "tolerance": given.tolerance,
        "floor": floor,
    }
    if score < floor:
        detail = (
            f"{ref} roc_auc {score:.4f} is worse than champion {champion.ref} "
            f"roc_auc {champion.roc_auc:.4f} (tolerance {given.tolerance:.4f})"
        )
        return GateCheck("vs_champion", False, detail, numbers)
    detail = (
        f"{ref} roc_auc {score:.4f} is at least champion {champion.ref} roc_auc "
        f"{champion.roc_auc:.4f} minus the tolerance {given.tolerance:.4f}"
    )
    return GateCheck("vs_champion", True, detail, numbers)


RULES: tuple[Rule, ...] = (has_score, meets_minimum, not_worse_than_champion)


def judge_challenger(
    settings: Settings,
    challenger: VersionInfo,
    champion: VersionInfo | None,
    rules: tuple[Rule, ...] = RULES,
) -> GateVerdict:
    """Apply the rules in order until one fails; the verdict keeps every check made."""
    given = GateInput.from_settings(settings, challenger, champion)
    checks: list[GateCheck] = []
    for rule in rules:
        check = rule(given)
        checks.append(check)
        if not check.passed:
            break
    return GateVerdict(challenger, champion, tuple(checks))
