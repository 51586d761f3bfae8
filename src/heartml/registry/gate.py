"""The promotion gate: may a challenger replace the champion? A pure function of their evidence.

The evidence is each version's stored predictions (:mod:`heartml.evidence.predictions`), which
:mod:`heartml.registry.mlflow_io` reads. The gate pairs the two versions on the rows neither was
trained on: their held-out rows, matched by row id. Two versions of the same data and split
share all of them; versions of different splits or data share those both held out, and when
too few are shared each is scored on its own held-out rows, unpaired, and the verdict says so.

The rules are functions of :class:`GateInput`, each returning a :class:`GateCheck` (verdict,
numbers, a sentence saying why). The first, that the challenger has evidence at all, must pass
for the others to run; the others all run, so that a refusal shows every number, not only the
first rule that failed:

- ``min_roc_auc``: the challenger's ``roc_auc`` tag (its selection score) reaches the minimum;
- ``calibration``: the slope and intercept of its out-of-fold predictions are in the band;
- ``non_inferior``: the lower end of the 95 % interval of its ROC-AUC minus the champion's is at
  least minus the margin (non-inferiority; the margin's default is argued in the README).

A version adapted for a site is judged for that site by :func:`judge_site_challenger`, on the
site's own rows (the ``site:<site>`` set of each version's predictions): its calibration there
in the band, and its ROC-AUC non-inferior, paired row by row, to the site's current champion
or, when the site has none, to the global champion on the same rows. No minimum ROC-AUC: the
selection score is a Cleveland figure, and a site's own discrimination is what it is (the
comparison with the model it would replace is the rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from heartml.registry.values import (
    TAG_ADAPTATION_METHOD,
    TAG_ADAPTED_FROM,
    TAG_ROC_AUC,
    VersionInfo,
)

if TYPE_CHECKING:
    from heartml.evidence.measures import CalibrationBand
    from heartml.evidence.predictions import PredictionSet
    from heartml.evidence.stats import Interval
    from heartml.settings import Settings

# numpy (through heartml.evidence.measures and heartml.evidence.stats) is imported by the
# functions that compute: importing the registry package stays cheap for `heartml promote --list`.

LINEAGE_TAGS = ("data_sha256", "data_sites", "split_seed", "split_test_size")


@dataclass(frozen=True, slots=True)
class ModelEvidence:
    """What the gate knows of one version: its held-out and out-of-fold predictions (one per
    row), or why it has none."""

    version: VersionInfo
    holdout: PredictionSet | None = None
    out_of_fold: PredictionSet | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.holdout is not None and self.out_of_fold is not None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The gate's settings (``HEARTML_MIN_ROC_AUC``, ``_PROMOTION_MARGIN``, calibration band,
    ``_GATE_MIN_ROWS``)."""

    min_roc_auc: float
    margin: float
    band: CalibrationBand
    min_rows: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        from heartml.evidence.measures import CalibrationBand

        return cls(
            settings.min_roc_auc,
            settings.promotion_margin,
            CalibrationBand(
                settings.calibration_slope_min,
                settings.calibration_slope_max,
                settings.calibration_intercept_max,
            ),
            settings.gate_min_rows,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "min_roc_auc": self.min_roc_auc,
            "margin": self.margin,
            "calibration_slope_min": self.band.slope_min,
            "calibration_slope_max": self.band.slope_max,
            "calibration_intercept_max": self.band.intercept_max,
            "min_rows": self.min_rows,
        }


ComparisonKind = Literal["paired", "same_ranking", "unpaired", "score_only", "none"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """What the challenger was compared with, on which rows, and the ROC-AUC difference."""

    kind: ComparisonKind
    description: str
    rows: int = 0
    challenger_roc_auc: float | None = None
    champion_roc_auc: float | None = None
    delta: Interval | None = None

    def as_dict(self) -> dict[str, Any]:
        delta = self.delta
        return {
            "kind": self.kind,
            "description": self.description,
            "rows": self.rows,
            "challenger_roc_auc": self.challenger_roc_auc,
            "champion_roc_auc": self.champion_roc_auc,
            "delta": None
            if delta is None
            else {"estimate": delta.estimate, "low": delta.low, "high": delta.high},
        }


def _lineage(version: VersionInfo) -> str:
    """The lineage tags that decide a version's held-out rows, in a few words."""
    tags = version.tags
    if not any(key in tags for key in LINEAGE_TAGS):
        return "no lineage tags"
    sha = tags.get("data_sha256", "")
    return (
        f"sites {tags.get('data_sites', '?')}, data {sha[:12] or '?'}, split seed "
        f"{tags.get('split_seed', '?')}, held-out {tags.get('split_test_size', '?')}"
    )


def compare(challenger: ModelEvidence, champion: ModelEvidence | None, min_rows: int) -> Comparison:
    """Pair the challenger with the champion on the held-out rows both left out.

    Paired (DeLong) when at least ``min_rows`` rows are shared with enough of each outcome;
    otherwise unpaired, each on its own held-out rows (the variances add); against a champion
    without stored predictions, its score tag taken as exact; without a champion, nothing.
    """
    from heartml.evidence.measures import MIN_ROWS_PER_OUTCOME, has_both_outcomes
    from heartml.evidence.stats import (
        Interval,
        paired_auc_difference,
        roc_auc_interval,
        unpaired_auc_difference,
    )

    mine = challenger.holdout
    assert mine is not None, "compare needs the challenger's held-out predictions"
    if champion is None:
        return Comparison("none", "no champion to compare with", challenger_roc_auc=None)
    theirs = champion.holdout
    other = champion.version.ref
    if theirs is None:
        tag = "holdout_roc_auc" if "holdout_roc_auc" in champion.version.tags else TAG_ROC_AUC
        score = _float(champion.version.tags.get(tag))
        if score is None:
            return Comparison(
                "none",
                f"champion {other} has neither stored predictions ({champion.problem}) nor a "
                "score tag: nothing to compare with",
            )
        own = roc_auc_interval(mine.y, mine.probability)
        return Comparison(
            "score_only",
            f"champion {other} has no stored predictions ({champion.problem}): the "
            f"challenger's held-out ROC-AUC interval ({len(mine)} rows) against the champion's "
            f"{tag} tag {score:.4f}, taken as exact (its own uncertainty is unknown)",
            rows=len(mine),
            challenger_roc_auc=own.estimate,
            champion_roc_auc=score,
            delta=Interval(own.estimate - score, own.low - score, own.high - score),
        )
    theirs_ids = set(theirs.row_ids.tolist())
    shared = [r for r in mine.row_ids.tolist() if r in theirs_ids]
    a, b = mine.restricted_to(shared), theirs.restricted_to(shared)
    same_rows = len(shared) == len(mine) == len(theirs)
    disagree = int((a.y != b.y).sum())
    lineage = f"challenger: {_lineage(challenger.version)}; champion: {_lineage(champion.version)}"
    if not disagree and len(shared) >= min_rows and has_both_outcomes(a.y, MIN_ROWS_PER_OUTCOME):
        paired = paired_auc_difference(a.y, a.probability, b.probability)
        if not same_rows:
            where = f"the {len(shared)} held-out rows both versions left out ({lineage})"
        elif any(key in challenger.version.tags for key in LINEAGE_TAGS):
            where = (
                f"the same {len(shared)} held-out rows of the same data and split: "
                f"{_lineage(challenger.version)}"
            )
        else:
            where = f"the same {len(shared)} held-out rows"
        return Comparison(
            "paired",
            f"paired on {where}",
            rows=len(shared),
            challenger_roc_auc=paired.a,
            champion_roc_auc=paired.b,
            delta=paired.difference,
        )
    if disagree:
        why = f"{disagree} of the {len(shared)} shared rows have different outcomes ({lineage})"
    else:
        why = (
            f"only {len(shared)} held-out rows are shared (a paired comparison needs "
            f"{min_rows} with at least {MIN_ROWS_PER_OUTCOME} of each outcome; {lineage})"
        )
    unpaired = unpaired_auc_difference(mine.y, mine.probability, theirs.y, theirs.probability)
    return Comparison(
        "unpaired",
        f"unpaired: {why}, so each is scored on its own held-out rows (challenger {len(mine)}, "
        f"champion {len(theirs)}) and the interval adds both variances",
        rows=len(mine) + len(theirs),
        challenger_roc_auc=unpaired.a,
        champion_roc_auc=unpaired.b,
        delta=unpaired.difference,
    )


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class GateEvidence:
    """The evidence of the challenger and of the champion it would replace (None: no
    champion), as :func:`heartml.registry.mlflow_io.read_gate_evidence` reads it."""

    challenger: ModelEvidence
    champion: ModelEvidence | None


@dataclass(frozen=True, slots=True)
class GateInput:
    """What the gate judges: the two versions, their evidence, and the thresholds."""

    challenger: VersionInfo
    champion: VersionInfo | None
    thresholds: Thresholds
    challenger_evidence: ModelEvidence
    champion_evidence: ModelEvidence | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        challenger: ModelEvidence,
        champion: ModelEvidence | None,
    ) -> GateInput:
        return cls(
            challenger.version,
            None if champion is None else champion.version,
            Thresholds.from_settings(settings),
            challenger,
            champion,
        )


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
    """The rules applied to one challenger, with the comparison they rest on."""

    challenger: VersionInfo
    champion: VersionInfo | None
    checks: tuple[GateCheck, ...]
    comparison: Comparison | None = None
    thresholds: Thresholds | None = None
    forced: bool = False
    site: str | None = None  # judged for this site's champion, on its rows

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed_check(self) -> GateCheck | None:
        return next((check for check in self.checks if not check.passed), None)

    @property
    def reason(self) -> str | None:
        """Why the challenger may not replace the champion (every failed rule, then the
        comparison with the champion even when it passed: a refusal always shows both scores
        and the interval); None when it may."""
        failed = [check.detail for check in self.checks if not check.passed]
        if not failed:
            return None
        compared = [
            check.detail
            for check in self.checks
            if check.passed and check.rule == "non_inferior" and check.numbers
        ]
        return "; ".join(failed + compared)

    @property
    def verdict(self) -> str:
        if self.passed:
            return "passed"
        return "overridden (--force)" if self.forced else "refused"

    def as_dict(self) -> dict[str, Any]:
        return {
            "challenger": self.challenger.ref,
            "champion": None if self.champion is None else self.champion.ref,
            "passed": self.passed,
            "verdict": self.verdict,
            "forced": self.forced,
            **({"site": self.site} if self.site else {}),
            "rule": SITE_RULE if self.site else GLOBAL_RULE,
            "thresholds": None if self.thresholds is None else self.thresholds.as_dict(),
            "comparison": None if self.comparison is None else self.comparison.as_dict(),
            "checks": [check.as_dict() for check in self.checks],
        }


GLOBAL_RULE = (
    "the challenger's roc_auc reaches min_roc_auc; its out-of-fold calibration slope and "
    "intercept are within the band; the lower end of the 95 % interval of its ROC-AUC minus "
    "the champion's, on rows neither was trained on, is at least -margin"
)
SITE_RULE = (
    "on the site's validation rows: the challenger's calibration slope and intercept are "
    "within the band; the lower end of the 95 % interval of its ROC-AUC minus that of the "
    "site's champion (else the global champion), paired on the same rows, is at least -margin"
)

Rule = Callable[[GateInput], GateCheck]


def has_evidence(given: GateInput) -> GateCheck:
    """The challenger carries a score tag and its stored predictions."""
    ref, evidence = given.challenger.ref, given.challenger_evidence
    if given.challenger.roc_auc is None:
        return GateCheck("has_evidence", False, f"{ref} has no {TAG_ROC_AUC} tag to judge it by")
    if not evidence.usable:
        return GateCheck(
            "has_evidence",
            False,
            f"{ref} has no stored predictions to judge it by ({evidence.problem}); retrain it, "
            "or promote it by name (a person's decision, not gated)",
        )
    return GateCheck("has_evidence", True, f"{ref} has its score and stored predictions")


def meets_minimum(given: GateInput) -> GateCheck:
    """The challenger's ROC-AUC (its selection score) is at least ``HEARTML_MIN_ROC_AUC``."""
    ref, score = given.challenger.ref, given.challenger.roc_auc or 0.0
    minimum = given.thresholds.min_roc_auc
    numbers = {"challenger_roc_auc": score, "min_roc_auc": minimum}
    if score < minimum:
        detail = f"{ref} roc_auc {score:.4f} is below the minimum {minimum:.4f}"
        return GateCheck("min_roc_auc", False, detail, numbers)
    detail = f"{ref} roc_auc {score:.4f} is at least the minimum {minimum:.4f}"
    return GateCheck("min_roc_auc", True, detail, numbers)


def is_calibrated(given: GateInput) -> GateCheck:
    """The calibration slope and intercept of the challenger's out-of-fold predictions are in
    the band (held-out rows are too few for a stable slope)."""
    from heartml.evidence.stats import calibration

    oof = given.challenger_evidence.out_of_fold
    assert oof is not None
    found = calibration(oof.y, oof.probability)
    band = given.thresholds.band
    slope = found.slope if found.slope == found.slope else None  # NaN: no finite fit
    intercept = found.intercept if found.intercept == found.intercept else None
    numbers = {"calibration_slope": slope, "calibration_intercept": intercept}
    problems = band.problems(slope, intercept)
    ref = given.challenger.ref
    if problems:
        return GateCheck(
            "calibration",
            False,
            f"{ref} out-of-fold {' and '.join(problems)} ({found.rows} rows)",
            numbers,
        )
    return GateCheck(
        "calibration",
        True,
        f"{ref} out-of-fold calibration slope {found.slope:.2f}, intercept "
        f"{found.intercept:+.2f} within slope [{band.slope_min:g}, {band.slope_max:g}], "
        f"intercept ±{band.intercept_max:g}",
        numbers,
    )


def is_non_inferior(given: GateInput) -> GateCheck:
    """ROC-AUC(challenger) − ROC-AUC(champion), on rows neither was trained on: the lower end
    of its 95 % interval is at least ``-margin``."""
    comparison = compare(
        given.challenger_evidence, given.champion_evidence, given.thresholds.min_rows
    )
    delta, margin = comparison.delta, given.thresholds.margin
    ref = given.challenger.ref
    if delta is None:
        return GateCheck("non_inferior", True, comparison.description)
    champion = given.champion.ref if given.champion else "-"
    numbers = {
        "challenger_roc_auc": comparison.challenger_roc_auc,
        "champion_roc_auc": comparison.champion_roc_auc,
        "delta": delta.estimate,
        "delta_low": delta.low,
        "delta_high": delta.high,
        "margin": margin,
        "rows": float(comparison.rows),
    }
    passed = delta.low >= -margin
    verdict = "within" if passed else "beyond"
    detail = (
        f"{ref} ROC-AUC {comparison.challenger_roc_auc:.4f} vs champion {champion} "
        f"{comparison.champion_roc_auc:.4f}: difference {delta.estimate:+.4f}, 95 % CI "
        f"[{delta.low:+.4f}, {delta.high:+.4f}], {verdict} the non-inferiority margin "
        f"-{margin:.4f} ({comparison.description})"
    )
    return GateCheck("non_inferior", passed, detail, numbers)


RULES: tuple[Rule, ...] = (meets_minimum, is_calibrated, is_non_inferior)


def judge_challenger(given: GateInput, *, forced: bool = False) -> GateVerdict:
    """Apply every rule (once the challenger has evidence); the verdict keeps every check."""
    first = has_evidence(given)
    checks = [first]
    comparison = None
    if first.passed:
        checks += [rule(given) for rule in RULES]
        comparison = compare(
            given.challenger_evidence, given.champion_evidence, given.thresholds.min_rows
        )
    return GateVerdict(
        given.challenger,
        given.champion,
        tuple(checks),
        comparison,
        given.thresholds,
        forced,
    )


# --------------------------------------------------------------------------------------------
# The gate for a site's champion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteEvidence:
    """One version's predictions on a site's rows (its ``site:<site>`` set, one per row), or
    why it has none; for a recalibration, also its ``site_base:<site>`` set (``ranking``)."""

    version: VersionInfo
    rows: PredictionSet | None = None
    problem: str | None = None
    # The base model's predictions on the same rows: a recalibration orders the patients as
    # they do, so its discrimination is theirs; ``rows`` (cross-validated, a different update
    # per fold) would understate it.
    ranking: PredictionSet | None = None

    @property
    def discrimination_rows(self) -> PredictionSet | None:
        """The predictions whose order of risks is the registered model's."""
        return self.ranking if self.ranking is not None else self.rows


@dataclass(frozen=True, slots=True)
class SiteGateInput:
    """What the site gate judges: the adapted challenger, the version it is compared with
    (the site's champion, else the global champion; None: the family has neither), and the
    thresholds."""

    site: str
    challenger: SiteEvidence
    comparator: SiteEvidence | None
    comparator_role: str  # "site champion" or "global champion", for the sentences
    thresholds: Thresholds


def judge_site_challenger(given: SiteGateInput, *, forced: bool = False) -> GateVerdict:
    """The site's rules, every one applied once the challenger has rows of the site."""
    first = _has_site_rows(given)
    checks = [first]
    comparison = None
    if first.passed:
        comparison = _compare_on_site(given)
        checks += [_site_calibrated(given), _site_non_inferior(given, comparison)]
    return GateVerdict(
        given.challenger.version,
        None if given.comparator is None else given.comparator.version,
        tuple(checks),
        comparison,
        given.thresholds,
        forced,
        given.site,
    )


def _has_site_rows(given: SiteGateInput) -> GateCheck:
    from heartml.evidence.measures import MIN_ROWS_PER_OUTCOME, has_both_outcomes

    ref, rows = given.challenger.version.ref, given.challenger.rows
    if rows is None:
        return GateCheck(
            "has_evidence",
            False,
            f"{ref} has no stored predictions on site '{given.site}' to judge it by "
            f"({given.challenger.problem}); adapt it again, or promote it by name with --site "
            "(a person's decision, not gated)",
        )
    if not has_both_outcomes(rows.y, MIN_ROWS_PER_OUTCOME):
        positives = int(rows.y.sum())
        return GateCheck(
            "has_evidence",
            False,
            f"{ref} has {len(rows)} validated rows of site '{given.site}' ({positives} with "
            f"disease, {len(rows) - positives} without): judging calibration and discrimination "
            f"needs at least {MIN_ROWS_PER_OUTCOME} of each",
        )
    return GateCheck(
        "has_evidence", True, f"{ref} has {len(rows)} validated rows of site '{given.site}'"
    )


def _site_calibrated(given: SiteGateInput) -> GateCheck:
    from heartml.evidence.stats import calibration

    rows = given.challenger.rows
    assert rows is not None
    found = calibration(rows.y, rows.probability)
    band = given.thresholds.band
    slope = found.slope if found.slope == found.slope else None  # NaN: no finite fit
    intercept = found.intercept if found.intercept == found.intercept else None
    numbers = {"calibration_slope": slope, "calibration_intercept": intercept}
    ref = given.challenger.version.ref
    problems = band.problems(slope, intercept)
    where = f"on {found.rows} validated rows of site '{given.site}'"
    if problems:
        return GateCheck("calibration", False, f"{ref} {' and '.join(problems)} {where}", numbers)
    return GateCheck(
        "calibration",
        True,
        f"{ref} calibration slope {found.slope:.2f}, intercept {found.intercept:+.2f} {where}, "
        f"within slope [{band.slope_min:g}, {band.slope_max:g}], intercept "
        f"±{band.intercept_max:g}",
        numbers,
    )


def _compare_on_site(given: SiteGateInput) -> Comparison:
    """Pair the challenger with the comparator on the site rows both predicted."""
    from heartml.evidence.measures import MIN_ROWS_PER_OUTCOME, has_both_outcomes
    from heartml.evidence.stats import Interval, paired_auc_difference, roc_auc

    mine = given.challenger.discrimination_rows
    assert mine is not None
    site, role = given.site, given.comparator_role
    if given.comparator is None:
        return Comparison("none", f"no {role} to compare with on site '{site}'")
    other = given.comparator.version.ref
    theirs = given.comparator.discrimination_rows
    if theirs is None:
        return Comparison(
            "none",
            f"{role} {other} has no predictions on site '{site}' ({given.comparator.problem}): "
            "nothing to pair with",
        )
    theirs_ids = set(theirs.row_ids.tolist())
    shared = [r for r in mine.row_ids.tolist() if r in theirs_ids]
    a, b = mine.restricted_to(shared), theirs.restricted_to(shared)
    disagree = int((a.y != b.y).sum())
    if disagree or not has_both_outcomes(a.y, MIN_ROWS_PER_OUTCOME):
        why = (
            f"{disagree} of the {len(shared)} shared rows have different outcomes"
            if disagree
            else f"only {len(shared)} rows are shared, without {MIN_ROWS_PER_OUTCOME} of each "
            "outcome"
        )
        return Comparison("none", f"cannot pair with {role} {other} on site '{site}': {why}")
    if ranking_of(given.challenger.version) == ranking_of(given.comparator.version):
        auc = roc_auc(b.y, b.probability)
        return Comparison(
            "same_ranking",
            f"{given.challenger.version.ref} orders the patients exactly as the {role} {other} "
            f"(both keep the order of {ranking_of(given.comparator.version)}'s risks: a "
            "monotone recalibration), so on the "
            f"{len(shared)} rows of site '{site}' its ROC-AUC is the same, {auc:.4f}: the "
            "difference is 0 by construction, not estimated",
            rows=len(shared),
            challenger_roc_auc=auc,
            champion_roc_auc=auc,
            delta=Interval(0.0, 0.0, 0.0),
        )
    paired = paired_auc_difference(a.y, a.probability, b.probability)
    return Comparison(
        "paired",
        f"paired on the {len(shared)} rows of site '{site}' both versions predicted, against "
        f"the {role} {other}",
        rows=len(shared),
        challenger_roc_auc=paired.a,
        champion_roc_auc=paired.b,
        delta=paired.difference,
    )


# Adaptations that keep the order of the risks: the adaptation refuses a logistic
# recalibration whose slope is not positive, so these tags alone say it.
MONOTONE_ADAPTATIONS = frozenset({"none", "intercept", "logistic"})


def ranking_of(version: VersionInfo) -> str:
    """The version whose order of risks ``version`` keeps: the one it was adapted from when
    the adaptation was a monotone recalibration, else itself. Two versions with the same
    ranking have the same ROC-AUC on any rows."""
    origin = version.tags.get(TAG_ADAPTED_FROM)
    if origin and version.tags.get(TAG_ADAPTATION_METHOD) in MONOTONE_ADAPTATIONS:
        return origin
    return version.ref


def _site_non_inferior(given: SiteGateInput, comparison: Comparison) -> GateCheck:
    ref, delta, margin = given.challenger.version.ref, comparison.delta, given.thresholds.margin
    if delta is None:
        # Nothing to compare with passes (a family without any champion); a comparator that
        # cannot be paired does not: non-inferiority was not shown.
        return GateCheck("non_inferior", given.comparator is None, comparison.description)
    numbers = {
        "challenger_roc_auc": comparison.challenger_roc_auc,
        "champion_roc_auc": comparison.champion_roc_auc,
        "delta": delta.estimate,
        "delta_low": delta.low,
        "delta_high": delta.high,
        "margin": margin,
        "rows": float(comparison.rows),
    }
    passed = delta.low >= -margin
    assert given.comparator is not None
    detail = (
        f"{ref} ROC-AUC {comparison.challenger_roc_auc:.4f} vs {given.comparator_role} "
        f"{given.comparator.version.ref} {comparison.champion_roc_auc:.4f}: difference "
        f"{delta.estimate:+.4f}, 95 % CI [{delta.low:+.4f}, {delta.high:+.4f}], "
        f"{'within' if passed else 'beyond'} the non-inferiority margin -{margin:.4f} "
        f"({comparison.description})"
    )
    return GateCheck("non_inferior", passed, detail, numbers)


def gate_record(verdict: GateVerdict, *, at: str, by: str) -> dict[str, Any]:
    """The JSON artifact a gated decision leaves on the challenger's run (and its card)."""
    return {"at": at, "by": by, **verdict.as_dict()}


def evidence_path(at: str) -> str:
    """Where, in the challenger's run, the record of the decision taken at ``at`` goes."""
    return "gate/" + at.replace(":", "").replace("-", "").replace(".", "") + ".json"


def gate_tags(verdict: GateVerdict, *, at: str) -> dict[str, str]:
    """The tags a gated decision sets on the challenger's version: the verdict, what it was
    compared with and the difference with its interval, its calibration, and the record."""
    tags = {
        **({"gate_site": verdict.site} if verdict.site else {}),
        "gate_verdict": verdict.verdict,
        "gate_champion": verdict.champion.ref if verdict.champion else "none",
        "gate_evidence": evidence_path(at),
    }
    comparison = verdict.comparison
    if comparison is not None:
        tags["gate_comparison"] = f"{comparison.kind}, {comparison.rows} rows"
        if comparison.delta is not None:
            delta = comparison.delta
            tags["gate_delta_roc_auc"] = f"{delta.estimate:+.4f}"
            tags["gate_delta_roc_auc_ci"] = f"[{delta.low:+.4f}, {delta.high:+.4f}]"
    for check in verdict.checks:
        if check.rule == "calibration":
            slope = check.numbers.get("calibration_slope")
            intercept = check.numbers.get("calibration_intercept")
            tags["gate_calibration"] = (
                f"slope {'n/a' if slope is None else f'{slope:.2f}'}, intercept "
                f"{'n/a' if intercept is None else f'{intercept:+.2f}'}"
            )
    return tags


def gate_summary(verdict: GateVerdict, *, at: str) -> dict[str, Any]:
    """What a promotion's event (``--history``) keeps of the verdict it rests on."""
    comparison = verdict.comparison
    delta = None if comparison is None or comparison.delta is None else comparison.delta
    calibration = next((c.numbers for c in verdict.checks if c.rule == "calibration"), {})
    return {
        "verdict": verdict.verdict,
        **({"site": verdict.site} if verdict.site else {}),
        "champion": None if verdict.champion is None else verdict.champion.ref,
        "comparison": None if comparison is None else f"{comparison.kind}, {comparison.rows} rows",
        "delta_roc_auc": None if delta is None else [delta.estimate, delta.low, delta.high],
        "calibration_slope": calibration.get("calibration_slope"),
        "calibration_intercept": calibration.get("calibration_intercept"),
        "evidence": evidence_path(at),
    }
