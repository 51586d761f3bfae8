"""A site's adaptation decided on the base pipeline: the scikit-learn side of adapting.

The base version's risks on the site's rows, the procedure (:mod:`heartml.adaptation.procedure`)
run on them and cross-validated, the adapted model (:class:`~heartml.model.
recalibrated_classifier.RecalibratedClassifier` or the refitted pipeline) and its ONNX graph,
checked against the Python computation on every site row. Runs in the adaptation worker
(:mod:`heartml.adaptation.worker`); nothing here writes to the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from heartml.adaptation.card import SiteRows, prediction_sets, section
from heartml.adaptation.procedure import (
    AUTO,
    AdaptationError,
    RefitSpec,
    Update,
    answered_rows,
    check_method,
    cross_validate,
    refused_by_field,
    run_procedure,
)
from heartml.data.schema import FEATURE_NAMES
from heartml.errors import UserError
from heartml.evidence.recalibration import Method, SampleCheck, sample_check

if TYPE_CHECKING:
    from heartml.adaptation.sample import SiteSample
    from heartml.registry import VersionInfo

# The graph with the update appended must give the Python computation's probabilities.
PARITY = 1e-6


class NotAdaptedError(UserError):
    """The site's sample supports no update (``auto`` found nothing it could estimate)."""


@dataclass(frozen=True, slots=True)
class BaseModel:
    """The version adapted from, loaded once for every site."""

    version: VersionInfo
    pipeline: Any  # the fitted sklearn pipeline
    graph: bytes
    card: dict[str, Any]


def model_frame(features: NDArray[np.float64]) -> Any:
    """Rows as the pipelines take them: a frame with the schema's columns."""
    import pandas as pd

    return pd.DataFrame(features, columns=list(FEATURE_NAMES))


def _risk(model: Any, features: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(model.predict_proba(model_frame(features))[:, 1], dtype=np.float64)


# --- refit ----------------------------------------------------------------------------------


def refit_spec(
    base: BaseModel, features: NDArray[np.float64], y: NDArray[np.int64], seed: int
) -> RefitSpec:
    """Refitting the base candidate (its estimator and hyper-parameters, from its card) on some
    of the site's rows. Its parameters are counted as a linear model on the preprocessed
    columns (one per column and the intercept): exact for logistic regression, a floor for
    the others."""
    from heartml.training.fit import LabelledRows, fit_pipeline

    name = base.card["model"]["candidate"]
    params = dict(base.card["model"]["params"])

    def fit(rows: NDArray[np.int64]) -> Callable[[NDArray[np.int64]], NDArray[np.float64]]:
        labelled = LabelledRows(
            model_frame(features[rows]),
            y[rows],
            np.arange(rows.size).astype(str).astype(object),
            np.full(rows.size, "site", dtype=object),
        )
        model = fit_pipeline(name, params, labelled, seed)
        return lambda wanted: _risk(model, features[wanted])

    preprocess = base.pipeline.steps[0][1]
    columns = int(np.asarray(preprocess.transform(model_frame(features[:1]))).shape[1])
    return RefitSpec(fit=fit, parameters=columns + 1)


def refit_model(
    base: BaseModel, features: NDArray[np.float64], y: NDArray[np.int64], seed: int
) -> Any:
    from heartml.training.fit import LabelledRows, fit_pipeline

    labelled = LabelledRows(
        model_frame(features),
        y,
        np.arange(y.size).astype(str).astype(object),
        np.full(y.size, "site", dtype=object),
    )
    return fit_pipeline(
        base.card["model"]["candidate"], dict(base.card["model"]["params"]), labelled, seed
    )


# --- one site -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Adaptation:
    """A site's adaptation, decided and validated, before anything is written."""

    rows: SiteRows
    update: Update
    section: dict[str, Any]
    sets: dict[str, Any]
    model: Any  # RecalibratedClassifier, the refitted pipeline, or the base pipeline (none)
    form: Any  # its checked OnnxForm


def decide(base: BaseModel, sample: SiteSample, requested: str, seed: int) -> Adaptation:
    """The procedure on the site's answered rows and its cross-validation; AdaptationError or
    NotAdaptedError (one line) when the sample supports no such update."""
    from heartml.model.recalibrated_classifier import RecalibratedClassifier

    answered = answered_rows(sample.features)
    rows = SiteRows(
        site=sample.site,
        ids=sample.ids,
        y=sample.y,
        base=_risk(base.pipeline, sample.features),
        answered=answered,
        refused_by_field=refused_by_field(sample.features),
    )
    features, y, p = sample.features[answered], sample.y[answered], rows.base[answered]
    if y.size == 0:
        raise AdaptationError(
            f"{sample.site}: none of its {len(sample)} rows has every required field"
        )
    refit = None
    if requested in (AUTO, str(Method.REFIT)):
        refit = refit_spec(base, features, y, seed)
    checks: list[SampleCheck]
    if requested == AUTO:
        checks = [sample_check(m, y) for m in (Method.INTERCEPT, Method.LOGISTIC)]
        if refit is not None:
            checks.append(sample_check(Method.REFIT, y, refit.parameters))
        if not any(c.ok for c in checks):
            raise NotAdaptedError(
                f"{sample.site}: not adapted, no update can be estimated: {checks[0].message}"
            )
    else:
        checks = [check_method(Method(requested), y, refit)]
    everyone = np.arange(y.size)
    update = run_procedure(y, p, everyone, requested, refit)
    if update.recalibration is not None and not update.recalibration.monotone:
        # What the site gate relies on: a recalibration keeps the order of the risks.
        raise AdaptationError(
            f"{sample.site}: the logistic recalibration's slope is "
            f"{update.recalibration.slope:.2f}: the model orders this site's patients no "
            "better than chance, which no recalibration fixes (refit, or do not use it there)"
        )
    validation = cross_validate(y, p, requested, refit, seed)
    model: Any = base.pipeline
    if update.method is Method.REFIT:
        model = refit_model(base, features, y, seed)
    elif update.recalibration is not None and update.method is not Method.NONE:
        model = RecalibratedClassifier(
            base.pipeline,
            update.recalibration.intercept,
            update.recalibration.slope,
            str(update.method),
        )
    card_section = section(
        rows,
        adapted_from=base.version.ref,
        requested=requested,
        update=update,
        validation=validation,
        checks=checks,
        seed=seed,
        refit_parameters=None if refit is None else refit.parameters,
    )
    sets = prediction_sets(rows, validation)
    form = onnx_form(base, update, model, rows, sample)
    return Adaptation(rows, update, card_section, sets, model, form)


def onnx_form(
    base: BaseModel, update: Update, model: Any, rows: SiteRows, sample: SiteSample
) -> Any:
    """The adapted model's ONNX form, checked on every site row (and the base's probe rows)."""
    from heartml.model.convert import ConversionError, OnnxForm, TrainingRows, convert_pipeline
    from heartml.model.onnx_form import OnnxEngine, Probe, largest_deviation
    from heartml.model.recalibrated import recalibrated_graph

    answered = rows.answered
    if update.method is Method.REFIT:
        return convert_pipeline(
            model,
            sample.features,
            TrainingRows(sample.features[answered], sample.y[answered]),
        )
    recalibration = update.recalibration
    graph = base.graph
    if recalibration is not None and update.method is not Method.NONE:
        graph = recalibrated_graph(base.graph, recalibration.intercept, recalibration.slope)
    every = sample.features
    probe = Probe(rows=every, expected=np.asarray(model.predict_proba(model_frame(every))))
    deviation = largest_deviation(OnnxEngine(graph), probe)
    if not deviation <= PARITY:
        raise ConversionError(
            f"{sample.site}: the adapted ONNX graph differs from the Python update by "
            f"{deviation:.3g} (at most {PARITY:g} allowed)"
        )
    return OnnxForm(graph=graph, probe=probe, deviation=deviation)
