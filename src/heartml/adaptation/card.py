"""What an adapted version carries: its predictions table and its card's *Site adaptation*
section, computed from the site's rows and the procedure's results. Pure.

The predictions table (:mod:`heartml.evidence.predictions`) holds, for site ``S``:

* ``site:S``: the validated predictions of the adapted model, one per answered row (the mean of
  its held-out predictions over the repeats): the set the site's promotion gate pairs on;
* ``site_cv:S``: the same, per repeat and fold;
* ``site_base:S``: the base version's predictions on the answered rows (before);
* ``site_refused:S``: the base version's predictions on the refused rows, with the training
  imputation (what answering them would cost).

Every number of the section is computed from these sets; a test recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from heartml.adaptation.procedure import (
    FOLDS,
    REPEATS,
    Update,
    Validation,
    auc_change,
    closed_test_json,
    per_repeat_slopes,
    population,
    precision_note,
    spread,
    why_text,
)
from heartml.evidence.predictions import (
    SITE_BASE_PREFIX,
    SITE_PREFIX,
    PredictionSet,
    prediction_set,
    resampled_set,
)
from heartml.evidence.recalibration import DESCRIPTIONS, SampleCheck
from heartml.evidence.stats import roc_auc

CV_PREFIX = "site_cv:"
REFUSED_PREFIX = "site_refused:"
PLOT = "calibration_site_adaptation.png"

MONOTONE_NOTE = (
    "A monotone recalibration (an intercept, or a positive slope on the logit) keeps the order "
    "of the risks, so the registered update leaves the ROC-AUC on these rows exactly as it was; "
    "the validated predictions come from a different update in each fold, so theirs may differ "
    "a little."
)
DESIGN_NOTE = (
    "Repeated stratified cross-validation of the whole updating procedure over the site's rows "
    "({folds} folds × {repeats} repeats, seed {seed}): in each fold the procedure (for auto, the "
    "closed test and then the chosen fit) runs on the other folds and predicts the held-out "
    "fold; a row's validated prediction is the mean over the repeats; the registered update is "
    "the procedure run on every row. A single adaptation/validation split would leave about "
    "half of a small site's rows to validate on, and its calibration slope would depend on the "
    "split's seed (at VA, from 0.35 to 2.0); every row validated, over repeats, gives one "
    "estimate whose intervals say how precise it is."
)
INTERVALS_NOTE = (
    "95 % intervals: Wald, from the Fisher information of the calibration fits on the "
    "validated predictions (slope, intercept), and the normal interval of the mean of "
    "(predicted − observed); validated predictions share rows between folds, so these are "
    "approximate."
)
REFUSED_NOTE = (
    "Rows lacking a required field are refused by the server, as for every model: they are "
    "counted here and neither fitted on nor validated on. The base model's scores on them "
    "with the training imputation, beside those of the answered rows, are the data behind "
    "that decision."
)


@dataclass(frozen=True, slots=True)
class SiteRows:
    """The site's rows split into answered and refused, with the base model's predictions."""

    site: str
    ids: NDArray[np.object_]
    y: NDArray[np.int64]
    base: NDArray[np.float64]  # the base version's P(disease), every row (imputed)
    answered: NDArray[np.bool_]
    refused_by_field: dict[str, int]


def prediction_sets(rows: SiteRows, validation: Validation | None) -> dict[str, PredictionSet]:
    """The adapted version's predictions table (module docstring)."""
    ok = rows.answered
    ids, y = rows.ids[ok], rows.y[ok]
    sets: dict[str, PredictionSet] = {}
    if validation is not None:
        sets[SITE_PREFIX + rows.site] = prediction_set(ids, y, validation.validated)
        sets[CV_PREFIX + rows.site] = resampled_set(ids, y, validation.plan, validation.per_repeat)
    sets[SITE_BASE_PREFIX + rows.site] = prediction_set(ids, y, rows.base[ok])
    if (~ok).any():
        sets[REFUSED_PREFIX + rows.site] = prediction_set(
            rows.ids[~ok], rows.y[~ok], rows.base[~ok]
        )
    return sets


def check_json(check: SampleCheck) -> dict[str, Any]:
    return {
        "method": str(check.method),
        "events": check.events,
        "non_events": check.non_events,
        "parameters": check.parameters,
        "needed": check.needed,
        "ok": check.ok,
        "message": check.message,
    }


def section(
    rows: SiteRows,
    *,
    adapted_from: str,
    requested: str,
    update: Update,
    validation: Validation,
    checks: list[SampleCheck],
    seed: int,
    refit_parameters: int | None,
) -> dict[str, Any]:
    """The card's ``site_adaptation`` section."""
    ok = rows.answered
    y, before, after = rows.y[ok], rows.base[ok], validation.validated
    registered_auc = None
    if update.recalibration is not None and y.any() and not y.all():
        registered_auc = roc_auc(y, update.recalibration.apply(before))
    refused = rows.y[~ok], rows.base[~ok]
    recalibration = update.recalibration
    slopes = per_repeat_slopes(y, validation.per_repeat)
    return {
        "site": rows.site,
        "adapted_from": adapted_from,
        "requested": requested,
        "method": str(update.method),
        "description": DESCRIPTIONS[update.method],
        "why": why_text(requested, update),
        "closed_test": closed_test_json(update),
        "recalibration": None
        if recalibration is None
        else {"intercept": recalibration.intercept, "slope": recalibration.slope},
        "refit_parameters": refit_parameters,
        "sample_checks": [check_json(c) for c in checks],
        "design": DESIGN_NOTE.format(folds=FOLDS, repeats=REPEATS, seed=seed),
        "folds": int(validation.plan.max()) + 1,
        "repeats": int(validation.plan.shape[0]),
        "seed": seed,
        "fold_choices": dict(validation.chosen),
        "intervals": INTERVALS_NOTE,
        "precision": precision_note(y),
        "rows": {
            "total": len(rows.y),
            "answered": int(ok.sum()),
            "refused": int((~ok).sum()),
            "events": int(y.sum()),
            "non_events": int(y.size - y.sum()),
        },
        "before": population(y, before),
        "after": population(y, after),
        "per_repeat_slope": spread(slopes),
        "roc_auc_registered": registered_auc,
        "roc_auc_change": auc_change(y, after, before),
        "monotone": MONOTONE_NOTE,
        "refused": {
            "rows": int((~ok).sum()),
            "by_field": dict(rows.refused_by_field),
            "note": REFUSED_NOTE,
            "base_on_refused": population(*refused) if refused[0].size else None,
        },
        "plot": PLOT,
    }
