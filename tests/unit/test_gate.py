"""The promotion gate's rules, on stored predictions built here: no store, no training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import family_state, version_info
from heartml.evidence.predictions import prediction_set
from heartml.evidence.stats import paired_auc_difference, unpaired_auc_difference
from heartml.registry import (
    Decision,
    FamilyState,
    GateEvidence,
    GateInput,
    GateVerdict,
    ModelEvidence,
    PromotionOutcome,
    VersionInfo,
    judge_challenger,
    plan_promotion,
)
from heartml.registry.gate import compare, evidence_path, gate_record, gate_tags
from heartml.registry.plans import history_of, refusal_event
from heartml.settings import Settings

SETTINGS = Settings()  # margin 0.05, slope [0.7, 1.3], intercept ±0.35, 30 paired rows


# The patients: each row id has one outcome and one true risk, whichever model scores it.
PATIENTS = 600
_rng = np.random.default_rng(7)
RISK = _rng.uniform(0.03, 0.97, PATIENTS)
OUTCOME = (_rng.uniform(size=PATIENTS) < RISK).astype(int)
IDS = np.array([f"cleveland:{i + 1}" for i in range(PATIENTS)], dtype=object)


def rows(start: int, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows start..start+n: ids, outcomes, and the true risk blurred by ``noise`` (logit)."""
    chosen = slice(start, start + n)
    risk = RISK[chosen]
    blur = np.random.default_rng(seed).normal(0, noise, n) if noise else 0.0
    score = 1 / (1 + np.exp(-(np.log(risk / (1 - risk)) + blur)))
    return IDS[chosen], OUTCOME[chosen], score


def evidence(
    name: str,
    number: int = 1,
    *,
    holdout_noise: float = 0.0,
    oof: np.ndarray | None = None,
    seed: int = 1,
    offset: int = 0,
    roc_auc: float | None = 0.9,
) -> ModelEvidence:
    """A version whose held-out rows are offset..offset+120 and out-of-fold rows 200..600
    (calibrated: the true risks)."""
    version = version_info(name, number, roc_auc=roc_auc)
    ids, y, risk = rows(200, 400, 0.0, seed)
    held_ids, held_y, held = rows(offset, 120, holdout_noise, seed)
    return ModelEvidence(
        version,
        holdout=prediction_set(held_ids, held_y, held),
        out_of_fold=prediction_set(ids, y, risk if oof is None else oof),
    )


def judge(
    challenger: ModelEvidence, champion: ModelEvidence | None = None, **settings: float
) -> GateVerdict:
    given = GateInput.from_settings(Settings(**settings), challenger, champion)  # type: ignore[arg-type]
    return judge_challenger(given)


def test_without_a_champion_the_challenger_needs_its_score_and_calibration() -> None:
    verdict = judge(evidence("knn"))
    assert verdict.passed
    assert [c.rule for c in verdict.checks] == [
        "has_evidence", "min_roc_auc", "calibration", "non_inferior",
    ]  # fmt: skip
    assert verdict.comparison is not None and verdict.comparison.kind == "none"


def test_no_stored_predictions_no_gated_promotion() -> None:
    bare = ModelEvidence(version_info("knn"), problem="it was registered without a training run")
    verdict = judge(bare)
    assert not verdict.passed and [c.rule for c in verdict.checks] == ["has_evidence"]
    assert verdict.reason == (
        "heart-disease-knn/1 has no stored predictions to judge it by (it was registered "
        "without a training run); retrain it, or promote it by name (a person's decision, "
        "not gated)"
    )
    assert "no roc_auc tag" in (judge(evidence("knn", roc_auc=None)).reason or "")


def test_below_the_minimum_says_both_numbers() -> None:
    verdict = judge(evidence("knn", roc_auc=0.75))
    failed = verdict.failed_check
    assert failed is not None and failed.rule == "min_roc_auc"
    assert failed.detail == "heart-disease-knn/1 roc_auc 0.7500 is below the minimum 0.8000"


def test_an_over_regularised_model_is_refused_by_its_calibration_alone() -> None:
    # Every risk near the prevalence: ranking intact, calibration slope far above 1.
    _, _, risk = rows(200, 400, 0.0, 1)
    timid = 0.46 + (risk - risk.mean()) * 0.02
    verdict = judge(evidence("lr", oof=timid))
    assert [c.rule for c in verdict.checks if not c.passed] == ["calibration"]
    check = verdict.checks[2]
    assert check.numbers["calibration_slope"] is not None
    assert check.numbers["calibration_slope"] > 10
    assert "outside [0.7, 1.3]" in check.detail
    # Refused by calibration alone, the message still gives both scores and the interval.
    against = judge(evidence("lr", 2, oof=timid), evidence("lr", 1))
    assert against.reason is not None
    refusal, comparison = against.reason.split("; ")
    assert "calibration slope" in refusal
    assert comparison.startswith("heart-disease-lr/2 ROC-AUC ")
    assert "difference +0.0000, 95 % CI [+0.0000, +0.0000], within" in comparison


def test_an_equivalent_challenger_passes_with_a_difference_of_exactly_zero() -> None:
    verdict = judge(evidence("lr", 2), evidence("lr", 1))
    assert verdict.passed
    comparison = verdict.comparison
    assert comparison is not None and comparison.kind == "paired" and comparison.rows == 120
    assert comparison.delta is not None
    assert (comparison.delta.estimate, comparison.delta.low, comparison.delta.high) == (0, 0, 0)
    assert comparison.description.startswith("paired on the same 120 held-out rows")


def test_a_worse_challenger_is_refused_with_both_scores_and_the_interval() -> None:
    champion, weak = evidence("lr"), evidence("knn", 2, holdout_noise=2.5)
    verdict = judge(weak, champion)
    assert [c.rule for c in verdict.checks if not c.passed] == ["non_inferior"]
    assert weak.holdout is not None and champion.holdout is not None
    expected = paired_auc_difference(
        weak.holdout.y, weak.holdout.probability, champion.holdout.probability
    )
    check = verdict.checks[-1]
    assert check.numbers["delta"] == pytest.approx(expected.difference.estimate)
    assert check.numbers["delta_high"] == pytest.approx(expected.difference.high)
    d = expected.difference
    assert check.detail.startswith(
        f"heart-disease-knn/2 ROC-AUC {expected.a:.4f} vs champion heart-disease-lr/1 "
        f"{expected.b:.4f}: difference {d.estimate:+.4f}, 95 % CI [{d.low:+.4f}, {d.high:+.4f}], "
        "beyond the non-inferiority margin -0.0500 (paired on the same 120 held-out rows"
    )
    # A wide enough margin lets it through: the margin is the rule's only free parameter.
    assert judge(weak, champion, promotion_margin=-d.low + 1e-9).passed


def test_other_splits_are_paired_on_the_rows_both_left_out() -> None:
    # The champion held out rows 1-120, the challenger rows 41-160: 80 rows in common.
    champion = evidence("lr")
    challenger = evidence("svm", offset=40, seed=5)
    comparison = compare(challenger, champion, min_rows=30)
    assert comparison.kind == "paired" and comparison.rows == 80
    assert "the 80 held-out rows both versions left out" in comparison.description


def test_too_few_shared_rows_compare_each_on_its_own_rows_unpaired() -> None:
    champion = evidence("lr")
    challenger = evidence("svm", offset=110, seed=5)  # 10 rows in common
    comparison = compare(challenger, champion, min_rows=30)
    assert comparison.kind == "unpaired" and comparison.rows == 240
    assert comparison.description.startswith("unpaired: only 10 held-out rows are shared")
    assert challenger.holdout is not None and champion.holdout is not None
    expected = unpaired_auc_difference(
        challenger.holdout.y,
        challenger.holdout.probability,
        champion.holdout.y,
        champion.holdout.probability,
    )
    assert comparison.delta == expected.difference


def test_a_champion_without_predictions_is_compared_through_its_score_tag() -> None:
    old = version_info("svm", roc_auc=0.95)
    champion = ModelEvidence(old, problem="registered before heartml kept predictions")
    comparison = compare(evidence("lr", 2), champion, min_rows=30)
    assert comparison.kind == "score_only" and comparison.champion_roc_auc == 0.95
    assert "taken as exact" in comparison.description
    nothing = ModelEvidence(version_info("svm", roc_auc=None), problem="none")
    assert compare(evidence("lr", 2), nothing, min_rows=30).kind == "none"


def test_plans_refuse_unless_forced_and_a_forced_promotion_keeps_the_verdict() -> None:
    champion_version = version_info("lr", champion=True, stage="Production", promoted_at="t")
    weak = evidence("knn", 2, holdout_noise=2.5)
    state = family_state(champion_version, weak.version)
    gathered = GateEvidence(weak, evidence("lr"))
    refused = plan_promotion(state, SETTINGS, "heart-disease-knn", gated=True, evidence=gathered)
    assert refused.decision is Decision.REFUSE
    result = refused.unapplied_result(dry_run=False)
    assert result is not None and result.outcome is PromotionOutcome.REFUSED
    assert result.message.startswith("refused by the gate: heart-disease-knn/2 ROC-AUC")
    forced = plan_promotion(
        state, SETTINGS, "heart-disease-knn", gated=True, force=True, evidence=gathered
    )
    assert forced.decision is Decision.PROMOTE
    assert (
        forced.gate is not None
        and forced.gate.forced
        and forced.gate.verdict.startswith("overridden")
    )
    # Without evidence read, a gated promotion has none: refused.
    blind = plan_promotion(state, SETTINGS, "heart-disease-knn", gated=True)
    assert blind.decision is Decision.REFUSE
    by_name = plan_promotion(state, SETTINGS, "heart-disease-knn")
    assert by_name.decision is Decision.PROMOTE and by_name.gate is None
    # A refusal leaves an event --history reads as an attempt that promoted nothing; a
    # forced promotion's event is its claim's, not a refusal.
    at = "2026-11-30T12:00:00.000000Z"
    tags = refusal_event(refused, by="ci", at=at)
    assert refusal_event(forced, by="ci", at=at) == {}
    [entry] = history_of(replace_tags(state, weak.version, tags))
    assert (entry.name, entry.version, entry.promoted) == ("heart-disease-knn", 2, False)
    assert entry.previous is None and entry.gate is not None
    assert entry.gate["verdict"] == "refused"


def test_the_record_and_tags_a_decision_leaves_on_the_challenger() -> None:
    verdict = judge(evidence("knn", 2, holdout_noise=2.5), evidence("lr"))
    at = "2026-01-02T03:04:05.678901Z"
    record = gate_record(verdict, at=at, by="jenkins")
    assert record["verdict"] == "refused" and record["by"] == "jenkins"
    assert record["comparison"]["kind"] == "paired"
    assert record["thresholds"]["margin"] == 0.05
    assert [c["rule"] for c in record["checks"]][-1] == "non_inferior"
    tags = gate_tags(verdict, at=at)
    assert tags["gate_verdict"] == "refused"
    assert tags["gate_champion"] == "heart-disease-lr/1"
    assert tags["gate_comparison"] == "paired, 120 rows"
    assert tags["gate_evidence"] == evidence_path(at) == "gate/20260102T030405678901Z.json"
    assert tags["gate_delta_roc_auc_ci"].startswith("[-")


def test_a_gated_promotion_s_event_carries_its_verdict_into_the_history() -> None:
    from heartml.cli.promote import format_history
    from heartml.registry import history_of, plan_claim

    champion_version = version_info("lr", champion=True, stage="Production", promoted_at="t")
    challenger = evidence("svm", 2)
    state = family_state(champion_version, challenger.version)
    gated = plan_promotion(
        state,
        SETTINGS,
        "heart-disease-svm",
        gated=True,
        evidence=GateEvidence(challenger, evidence("lr")),
    )
    at = "2026-01-02T03:04:05.678901Z"
    claim = plan_claim(gated, reason="auto", by="jenkins", at=at)
    promoted = dataclasses.replace(version_info("svm", 2), tags=dict(claim.tags))
    [entry] = history_of(family_state(promoted))
    assert entry.gate is not None
    assert entry.gate["verdict"] == "passed"
    assert entry.gate["champion"] == "heart-disease-lr/1"
    assert entry.gate["delta_roc_auc"] == [0.0, 0.0, 0.0]
    assert entry.gate["comparison"] == "paired, 120 rows"
    assert entry.gate["evidence"] == "gate/20260102T030405678901Z.json"
    text = format_history([entry])
    assert (
        "gate:     passed; ROC-AUC difference +0.0000 [+0.0000, +0.0000] vs heart-disease-lr/1 "
        "(paired, 120 rows); calibration slope" in text
    )
    by_name = plan_promotion(state, SETTINGS, "heart-disease-svm")
    event = plan_claim(by_name, reason="manual", by="ana", at=at).tags
    # Not gated (a person chose it): the event has no gate key at all.
    assert '"gate"' not in next(v for k, v in event.items() if k.startswith("promotion_event."))


def replace_tags(state: FamilyState, target: VersionInfo, tags: dict[str, str]) -> FamilyState:
    """``state`` with ``tags`` added to ``target``'s version."""
    from dataclasses import replace

    return family_state(
        *(replace(v, tags={**v.tags, **tags}) if v.ref == target.ref else v for v in state.versions)
    )
