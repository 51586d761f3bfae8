"""The updating procedure for a site and its validation on the site's own rows: pure.

Validation design: **repeated stratified cross-validation of the whole updating procedure**
over the site's rows (:data:`FOLDS` folds × :data:`REPEATS` repeats, seeded). In each fold the
procedure — for ``auto`` the closed test and then the chosen fit, for a named method its fit —
runs on the other folds and predicts the held-out fold; a row's validated prediction is the
mean of its held-out predictions over the repeats. The registered update is the procedure run
on every row. A single adaptation/validation split was rejected: VA has 140 rows the server
answers, so a split leaves about 70 validation rows, and the validated calibration slope swung
from 0.35 to 2.0 with the split's seed; every row validated, over ten repeats, gives one
estimate with intervals that say how precise it is.

Which rows: the rows the server answers (every required field present,
:data:`heartml.data.schema.REQUIRED_FEATURES`). The others stay refused, as the API refuses
them; they are counted per missing field and the base model's scores on them (the training
imputation) are reported beside those of the answered rows, as the data behind that decision.

Arrays in, frozen results out; the refit is passed in as a function, so this module fits
nothing itself but the recalibrations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from heartml.data.schema import FEATURE_NAMES, REQUIRED_FEATURES
from heartml.errors import UserError
from heartml.evidence.measures import (
    MIN_ROWS_PER_OUTCOME,
    auc_json,
    curve_json,
    finite,
    has_both_outcomes,
    interval_json,
)
from heartml.evidence.recalibration import (
    DESCRIPTIONS,
    VALIDATION_ROWS_PER_OUTCOME,
    ClosedTest,
    Method,
    Recalibration,
    SampleCheck,
    closed_test,
    fit_recalibration,
    sample_check,
)
from heartml.evidence.stats import (
    Z_95,
    Interval,
    calibration,
    logistic_fit,
    logit,
    paired_auc_difference,
)

FOLDS = 5
REPEATS = 10
AUTO = "auto"
RECALIBRATIONS = (Method.INTERCEPT, Method.LOGISTIC)
CURVE_BINS = 5

# A refit, as the procedure sees it: fitted on some rows (their positions), it returns the
# function that scores rows (positions) with the refitted model.
Refit = Callable[[NDArray[np.int64]], Callable[[NDArray[np.int64]], NDArray[np.float64]]]


class AdaptationError(UserError):
    """An update the sample cannot support, or cannot estimate; the message is one line."""


@dataclass(frozen=True, slots=True)
class RefitSpec:
    """How to refit the base candidate on some of the site's rows, and how many parameters
    that estimates (what the sample check counts)."""

    fit: Refit
    parameters: int


@dataclass(frozen=True, slots=True)
class Update:
    """One run of the procedure: the method it chose, the recalibration (``refit``: None, the
    refitted model is the update) and the closed test when ``auto`` ran one."""

    method: Method
    recalibration: Recalibration | None
    test: ClosedTest | None = None
    left_out: tuple[SampleCheck, ...] = ()


def answered_rows(features: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Rows the server answers: every required field present (schema order)."""
    required = [FEATURE_NAMES.index(name) for name in REQUIRED_FEATURES]
    mask: NDArray[np.bool_] = np.asarray(~np.isnan(features[:, required]).any(axis=1))
    return mask


def refused_by_field(features: NDArray[np.float64]) -> dict[str, int]:
    """How many rows lack each required field (a row may lack several)."""
    counts = {
        name: int(np.isnan(features[:, FEATURE_NAMES.index(name)]).sum())
        for name in REQUIRED_FEATURES
    }
    return {name: n for name, n in counts.items() if n}


def fold_plan(y: NDArray[np.int64], seed: int, folds: int = FOLDS, repeats: int = REPEATS) -> Any:
    """The held-out fold of every row in every repeat: (repeats, rows), stratified by outcome.

    Fewer folds when the rarer outcome has fewer rows than ``folds`` (each fold needs one)."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    rarer = int(min(y.sum(), y.size - y.sum()))
    folds = max(2, min(folds, rarer))
    plan = np.empty((repeats, y.size), dtype=np.int64)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(y.size), y)):
        plan[i // folds, test] = i % folds
    return plan


def check_method(method: Method, y: NDArray[np.int64], refit: RefitSpec | None) -> SampleCheck:
    """The sample check of a named method; AdaptationError (one line) when it fails."""
    parameters = refit.parameters if method is Method.REFIT and refit is not None else None
    check = sample_check(method, y, parameters)
    if not check.ok:
        raise AdaptationError(f"cannot {method} on this sample: {check.message}")
    return check


def run_procedure(
    y: NDArray[np.int64],
    probability: NDArray[np.float64],
    rows: NDArray[np.int64],
    requested: str,
    refit: RefitSpec | None,
) -> Update:
    """The procedure on the rows at positions ``rows``: the closed test and the chosen fit
    (``auto``), or the named method's fit."""
    y_rows, p_rows = y[rows], probability[rows]
    if requested == AUTO:
        candidates: list[Method] = [Method.NONE, *RECALIBRATIONS]
        refitted = None
        if refit is not None:
            candidates.append(Method.REFIT)
            if sample_check(Method.REFIT, y_rows, refit.parameters).ok:
                refitted = (refit.fit(rows)(rows), refit.parameters)
            else:  # closed_test records why, from the same check
                refitted = (p_rows, refit.parameters)
        test = closed_test(y_rows, p_rows, refitted, candidates)
        chosen = test.chosen
        return Update(chosen, _recalibration(chosen, y_rows, p_rows), test, test.left_out)
    method = Method(requested)
    return Update(method, _recalibration(method, y_rows, p_rows))


def _recalibration(
    method: Method, y: NDArray[np.int64], probability: NDArray[np.float64]
) -> Recalibration | None:
    if method is Method.REFIT:
        return None
    try:
        return fit_recalibration(y, probability, method)
    except ValueError as exc:
        raise AdaptationError(str(exc)) from exc


def predict_update(
    update: Update,
    probability: NDArray[np.float64],
    rows: NDArray[np.int64],
    refitted: Callable[[NDArray[np.int64]], NDArray[np.float64]] | None,
) -> NDArray[np.float64]:
    """The updated model's P(disease) for the rows at positions ``rows``."""
    if update.recalibration is not None:
        return update.recalibration.apply(probability[rows])
    if refitted is None:
        raise ValueError("a refit update needs its refitted model")
    return refitted(rows)


@dataclass(frozen=True, slots=True)
class Validation:
    """The cross-validated predictions: per repeat (repeats, rows) and averaged per row, and
    what the procedure chose in each fold."""

    plan: NDArray[np.int64]
    per_repeat: NDArray[np.float64]
    validated: NDArray[np.float64]
    chosen: dict[str, int] = field(default_factory=dict)  # method -> folds that chose it


def cross_validate(
    y: NDArray[np.int64],
    probability: NDArray[np.float64],
    requested: str,
    refit: RefitSpec | None,
    seed: int,
) -> Validation:
    """Every row predicted by the procedure fitted without it, in every repeat."""
    plan = fold_plan(y, seed)
    per_repeat = np.empty(plan.shape, dtype=np.float64)
    chosen: dict[str, int] = {}
    for repeat in range(plan.shape[0]):
        for fold in np.unique(plan[repeat]):
            held = np.flatnonzero(plan[repeat] == fold)
            rest = np.flatnonzero(plan[repeat] != fold)
            update = run_procedure(y, probability, rest, requested, refit)
            chosen[str(update.method)] = chosen.get(str(update.method), 0) + 1
            refitted = refit.fit(rest) if update.method is Method.REFIT and refit else None
            per_repeat[repeat, held] = predict_update(update, probability, held, refitted)
    return Validation(plan, per_repeat, per_repeat.mean(axis=0), chosen)


# --- the numbers on the card ------------------------------------------------------------------


def calibration_intervals(y: NDArray[np.int64], probability: NDArray[np.float64]) -> dict[str, Any]:
    """Slope and intercept with 95 % Wald intervals from the logistic fit's Fisher information,
    and mean predicted − observed with the normal interval of the mean of (p − y)."""
    yf = np.asarray(y, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    lp = logit(p)
    cal = calibration(yf, p)
    design = np.column_stack([np.ones_like(lp), lp])
    slope_se = _fisher_se(design, logistic_fit(yf, design, np.zeros_like(lp)), np.zeros_like(lp))
    intercept_se = _fisher_se(
        design[:, :1], logistic_fit(yf, design[:, :1], lp), lp
    )  # with the logit as offset
    difference = p - yf
    diff_se = float(np.std(difference, ddof=1) / math.sqrt(difference.size))
    mean_diff = float(difference.mean())
    return {
        "rows": int(yf.size),
        "slope": _wald(cal.slope, slope_se[1]),
        "intercept": _wald(cal.intercept, intercept_se[0]),
        "mean_predicted": cal.mean_predicted,
        "observed": cal.observed,
        "difference": _wald(mean_diff, diff_se),
    }


def _fisher_se(
    design: NDArray[np.float64], beta: NDArray[np.float64], offset: NDArray[np.float64]
) -> NDArray[np.float64]:
    if not np.all(np.isfinite(beta)):
        return np.full(design.shape[1], np.nan)
    mu = 1.0 / (1.0 + np.exp(-(offset + design @ beta)))
    information = design.T @ (design * (mu * (1.0 - mu))[:, np.newaxis])
    try:
        se: NDArray[np.float64] = np.sqrt(np.diag(np.linalg.inv(information)))
    except np.linalg.LinAlgError:
        return np.full(design.shape[1], np.nan)
    return se


def _wald(estimate: float, se: float) -> dict[str, float | None]:
    return interval_json(Interval(estimate, estimate - Z_95 * se, estimate + Z_95 * se))


def discrimination(y: NDArray[np.int64], probability: NDArray[np.float64]) -> dict[str, Any]:
    """ROC-AUC with DeLong's interval, or None with too few rows of an outcome."""
    return {"roc_auc": auc_json(y, probability)}


def population(y: NDArray[np.int64], probability: NDArray[np.float64]) -> dict[str, Any]:
    """A set of rows' calibration (with intervals), ROC-AUC and calibration curve (quintiles)."""
    return {
        **calibration_intervals(y, probability),
        **discrimination(y, probability),
        "calibration_curve": curve_json(y, probability, bins=CURVE_BINS),
    }


def why_text(requested: str, update: Update) -> str:
    """Why this method: the closed test's verdict, or that it was asked for."""
    if update.test is None:
        return f"{update.method} was asked for: {DESCRIPTIONS[update.method]}."
    tests = "; ".join(
        f"{t.simpler} against {t.extensive}: LR {t.statistic:.2f}, df {t.df}, p {t.p_value:.3g}"
        for t in update.test.tests
    )
    text = (
        f"Chosen by Vergouwe's closed test among {', '.join(map(str, update.test.considered))}: "
        f"{DESCRIPTIONS[update.method]}"
    )
    text += f" ({tests})." if tests else " (nothing else could be estimated)."
    if update.left_out:
        text += " Left out for the sample's size: " + "; ".join(c.message for c in update.left_out)
        text += "."
    return text


def precision_note(y: NDArray[np.int64]) -> str | None:
    """The card's warning when the validation rows are too few for precise calibration."""
    events = int(y.sum())
    rarer = min(events, int(y.size) - events)
    if rarer >= VALIDATION_ROWS_PER_OUTCOME:
        return None
    return (
        f"{events} rows with disease and {y.size - events} without: fewer than the "
        f"{VALIDATION_ROWS_PER_OUTCOME} of each outcome a precise calibration slope needs "
        "(Riley et al., Stat Med 2021;40:4230), so the intervals are wide."
    )


def auc_change(
    y: NDArray[np.int64], after: NDArray[np.float64], before: NDArray[np.float64]
) -> dict[str, float | None] | None:
    """Validated ROC-AUC minus the base model's, paired on the same rows (DeLong)."""
    if not has_both_outcomes(y, MIN_ROWS_PER_OUTCOME):
        return None
    return interval_json(paired_auc_difference(y, after, before).difference)


def spread(values: NDArray[np.float64]) -> dict[str, float | None]:
    return {"min": finite(float(np.min(values))), "max": finite(float(np.max(values)))}


def per_repeat_slopes(y: NDArray[np.int64], per_repeat: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each repeat's calibration slope of its held-out predictions (how much the design
    varies from one repeat to the next)."""
    return np.asarray([calibration(y, row).slope for row in per_repeat], dtype=np.float64)


def closed_test_json(update: Update) -> Mapping[str, object] | None:
    return None if update.test is None else update.test.as_dict()
