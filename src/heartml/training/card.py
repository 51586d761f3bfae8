"""The model card's numbers, from a training session: headline scores, version tags, why a
candidate was or was not chosen, the data it saw. Every number comes from the candidate's
predictions table (:mod:`heartml.evidence.measures`) or the data, which a test checks; the
files are rendered by :mod:`heartml.evidence.card`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heartml.data.schema import OPTIONAL_FEATURES
from heartml.evidence.card import CARD_VERSION, comparison_markdown
from heartml.evidence.stats import Interval

if TYPE_CHECKING:
    from heartml.data.validate import LoadedData
    from heartml.training.experiment import ExperimentConfig
    from heartml.training.fit import HeldOutSplit


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every candidate of a session shares: the experiment, data, split, lineage, and
    every candidate's numbers (each card compares its candidate with the others)."""

    config: ExperimentConfig
    lineage: dict[str, str]
    dataset: LoadedData
    others: LoadedData | None  # the sites not trained on, when downloaded
    split: HeldOutSplit
    evidence: Mapping[str, Mapping[str, Any]]
    best: str
    experiment_id: str


@dataclass(frozen=True, slots=True)
class Headline:
    """What a training table shows of a candidate."""

    metric: str  # the selection metric
    score: Interval  # its value: what the roc_auc tag carries
    cv: Interval
    holdout: Interval
    oof_slope: float | None
    oof_intercept: float | None
    brier_score: float


def _interval(found: Mapping[str, float | None]) -> Interval:
    return Interval(
        float(found["estimate"] or 0.0), float(found["low"] or 0.0), float(found["high"] or 0.0)
    )


def headline(evidence: Mapping[str, Any], config: ExperimentConfig) -> Headline:
    cv = _interval(evidence["cv"]["roc_auc"])
    holdout = _interval(evidence["holdout"]["roc_auc"])
    metric = config.selection.primary_metric
    calibration = evidence["cv"]["out_of_fold"]["calibration"]
    return Headline(
        metric=metric,
        score=cv if metric == "cv_roc_auc_mean" else holdout,
        cv=cv,
        holdout=holdout,
        oof_slope=calibration["slope"],
        oof_intercept=calibration["intercept"],
        brier_score=float(evidence["holdout"]["at_threshold"]["brier_score"]),
    )


def version_tags(
    name: str, evidence: Mapping[str, Any], config: ExperimentConfig, lineage: Mapping[str, str]
) -> dict[str, str]:
    """The registry tags of a candidate's version: the selection score (``roc_auc``) with its
    interval, the held-out score with its interval, and the lineage the gate pairs on."""
    top = headline(evidence, config)
    return {
        "roc_auc": f"{top.score.estimate:.4f}",
        "roc_auc_ci": top.score.as_tag(),
        "holdout_roc_auc": f"{top.holdout.estimate:.4f}",
        "holdout_roc_auc_ci": top.holdout.as_tag(),
        "selection_metric": top.metric,
        "model_type": name,
        **{
            key: lineage[key]
            for key in (
                "data_sha256",
                "data_sites",
                "split_seed",
                "split_test_size",
                "config_hash",
                "git_commit",
            )
        },
    }


def comparison_rows(session: SessionContext) -> list[dict[str, Any]]:
    """One row per candidate of the session: what selection compared."""
    rows = []
    for name, evidence in session.evidence.items():
        cv = evidence["cv"]
        rows.append(
            {
                "candidate": name,
                "chosen": name == session.best,
                "cv_roc_auc": cv["roc_auc"],
                "oof_calibration_slope": cv["out_of_fold"]["calibration"]["slope"],
                "oof_calibration_intercept": cv["out_of_fold"]["calibration"]["intercept"],
                "holdout_roc_auc": evidence["holdout"]["roc_auc"],
                "brier_score": evidence["holdout"]["at_threshold"]["brier_score"],
            }
        )
    return rows


def comparison_table(session: SessionContext) -> str:
    return comparison_markdown(comparison_rows(session))


def _why(name: str, session: SessionContext) -> str:
    """Why this candidate was, or was not, chosen: the pre-specified rule and its numbers."""
    config = session.config
    metric, tie_break = config.selection.primary_metric, config.selection.tie_break
    scores = {n: headline(e, config).score for n, e in session.evidence.items()}
    best = scores[session.best]
    if name != session.best:
        mine = scores[name]
        return (
            f"Not chosen: {session.best} ranks higher on {metric} "
            f"({best.estimate:.4f} against {mine.estimate:.4f})."
        )
    others = {n: s for n, s in scores.items() if n != name}
    overlapping = sorted(n for n, s in others.items() if s.high >= best.low)
    text = (
        f"Chosen by the pre-specified rule: the highest {metric} of {len(scores)} candidates "
        f"({best.estimate:.4f} [{best.low:.4f}, {best.high:.4f}]; ties, at four decimals, "
        f"go to the higher {tie_break})."
    )
    if overlapping:
        text += (
            f" Its interval overlaps those of {', '.join(overlapping)}: the data do not rank "
            "these candidates with confidence, and the choice among them is the rule's, not "
            "evidence of superiority."
        )
    return text


def data_json(session: SessionContext) -> dict[str, Any]:
    """Sites, rows, outcomes, missing values and what the data stage cleaned."""
    import numpy as np

    from heartml.training.features import split_features_target

    trained_on = set(session.config.data.sites)
    sites: dict[str, Any] = {}
    for loaded in (session.dataset, session.others):
        if loaded is None:
            continue
        frame = loaded.frame
        cleaned: dict[str, dict[str, int]] = {}
        for note in loaded.report.violations:
            if not note.fatal:
                per_site = cleaned.setdefault(note.site, {})
                per_site[note.column] = per_site.get(note.column, 0) + 1
        for fetched in loaded.files.files:
            rows = frame[frame["site"] == fetched.site]
            features, target = split_features_target(rows)
            missing = {c: int(n) for c, n in features.isna().sum().items() if n}
            sites[fetched.site] = {
                "role": "training" if fetched.site in trained_on else "not trained on",
                "rows": len(rows),
                "events": int(np.sum(target)),
                "prevalence": float(np.mean(target)),
                "missing": missing,
                "cleaned": cleaned.get(fetched.site, {}),
                "sha256": fetched.sha256,
            }
    split = session.split
    ages = split.train.features["age"]
    return {
        "sites": sites,
        "age_range": [float(ages.min()), float(ages.max())],
        "training_rows": len(split.train),
        "training_events": int(split.train.target.sum()),
        "heldout_rows": len(split.test),
        "heldout_events": int(split.test.target.sum()),
    }


def build_card(
    name: str,
    params: Mapping[str, Any],
    session: SessionContext,
    *,
    model_name: str,
    version: str,
    run_id: str,
) -> dict[str, Any]:
    """The card's JSON: the candidate's numbers, its session, its data and lineage."""
    config = session.config
    evidence = session.evidence[name]
    return {
        "card_version": CARD_VERSION,
        "model": {
            "name": model_name,
            "version": int(version),
            "run_id": run_id,
            "uri": f"models:/{model_name}/{version}",
            "candidate": name,
            "params": dict(params),
        },
        "experiment": {
            "version": config.version,
            "config_hash": config.config_hash,
            "sites": list(config.data.sites),
            "split": config.split.model_dump(),
            "cv": {"folds": config.cv.folds, "repeats": config.cv.repeats},
            "selection": config.selection.model_dump(),
        },
        "data": data_json(session),
        "selection": {
            "chosen": name == session.best,
            "best": session.best,
            "score": _interval_dict(headline(evidence, config).score),
            "why": _why(name, session),
            "candidates": comparison_rows(session),
        },
        "evidence": dict(evidence),
        "optional_fields": list(OPTIONAL_FEATURES),
        "gate": None,
        "lineage": {**session.lineage, "run_id": run_id},
    }


def _interval_dict(interval: Interval) -> dict[str, float]:
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high}
