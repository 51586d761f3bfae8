"""Adapt a registered version to sites: the I/O around :mod:`heartml.adaptation.procedure`.

For each site: the base version's predictions on the site's rows, the procedure validated by
cross-validation and run on every answered row, then a new version of the same registered
model (tags ``site``, ``adapted_from``, ``adaptation_method``). Its MLflow model serves like any
other: the sklearn flavour holds :class:`~heartml.model.recalibrated_classifier.
RecalibratedClassifier` (or the refitted pipeline), the ONNX graph has the update appended
(:func:`heartml.model.recalibrated.recalibrated_graph`) and is checked against the Python
computation on every site row before anything is registered, and the reference profile is the
site's answered rows, so drift at the site is measured against the site.

Nothing half-registered: the run gets the model, the predictions and the plots first; the
version is created from it last but one; then the card, which names the version. Should the
card fail (or the process be interrupted there), the version is deleted again, and the run is
marked failed. Creating the version last of all would need its number before it exists.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from heartml.adaptation.card import PLOT, SiteRows, prediction_sets, section
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
    from mlflow.tracking import MlflowClient

    from heartml.adaptation.sample import SiteSample
    from heartml.registry import VersionInfo
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

TAG_SITE = "site"
TAG_ADAPTED_FROM = "adapted_from"
TAG_METHOD = "adaptation_method"
CHAMPION = "champion"
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
    plots: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class SiteOutcome:
    """What adapting one site did: its section of the card, and the version (None: refused)."""

    site: str
    section: dict[str, Any] | None
    version: str | None
    refusal: str | None


def _one_line(exc: BaseException) -> str:
    from heartml.errors import one_line

    return one_line(exc)


# --- the base version ---------------------------------------------------------------------


def resolve_base(settings: Settings, ref: str) -> VersionInfo:
    """``champion``, ``NAME/VERSION`` or ``NAME`` (its newest version not itself adapted)."""
    from heartml.registry import NotFoundError, read_family

    state = read_family(settings)
    if ref == CHAMPION:
        holders = state.alias_holders
        if not holders:
            raise NotFoundError(f"no version holds the alias '{settings.champion_alias}'")
        found = holders[0]
    else:
        name, _, number = ref.partition("/")
        model = next((m for m in state.models if m.name == name), None)
        if model is None:
            raise NotFoundError(f"no registered model '{name}' in the family")
        if number:
            if not number.isdigit():
                raise UserError(f"'{ref}': the version must be a number (NAME/VERSION)")
            match = [v for v in model.versions if v.version == int(number)]
            if not match:
                raise NotFoundError(f"{name} has no version {number}")
            found = match[0]
        else:
            plain = [v for v in model.versions if TAG_SITE not in v.tags]
            if not plain:
                raise NotFoundError(f"{name} has no version that is not itself adapted")
            found = plain[0]
    if TAG_SITE in found.tags:
        raise UserError(
            f"{found.ref} is itself adapted (for site '{found.tags[TAG_SITE]}', from "
            f"{found.tags.get(TAG_ADAPTED_FROM, '?')}): adapt the version it came from"
        )
    return found


def load_base(client: MlflowClient, version: VersionInfo) -> BaseModel:
    """The base version's pipeline, ONNX graph, card JSON and plots."""
    import mlflow.artifacts
    import mlflow.sklearn

    from heartml.evidence.card import CARD_JSON, PLOTS_DIR
    from heartml.model.onnx_form import find_onnx_files

    with tempfile.TemporaryDirectory(prefix="heartml-adapt-base-") as staging:
        root = Path(staging)
        model_dir = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(root))
        )
        files = find_onnx_files(model_dir)
        if files is None:
            raise UserError(f"{version.ref} has no ONNX form: adapting needs one to serve")
        pipeline = mlflow.sklearn.load_model(str(model_dir))
        graph = files.graph.read_bytes()
        card_path = Path(client.download_artifacts(version.run_id, CARD_JSON, str(root)))
        card = json.loads(card_path.read_text(encoding="utf-8"))
        plots: dict[str, bytes] = {}
        try:
            folder = Path(client.download_artifacts(version.run_id, PLOTS_DIR, str(root)))
            plots = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
        except Exception as exc:  # a card without plots is rendered without them
            logger.info("%s: no plots (%s)", version.ref, _one_line(exc))
    return BaseModel(version, pipeline, graph, card, plots)


def _frame(features: NDArray[np.float64]) -> Any:
    import pandas as pd

    return pd.DataFrame(features, columns=list(FEATURE_NAMES))


def _risk(model: Any, features: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(model.predict_proba(_frame(features))[:, 1], dtype=np.float64)


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
            _frame(features[rows]),
            y[rows],
            np.arange(rows.size).astype(str).astype(object),
            np.full(rows.size, "site", dtype=object),
        )
        model = fit_pipeline(name, params, labelled, seed)
        return lambda wanted: _risk(model, features[wanted])

    preprocess = base.pipeline.steps[0][1]
    columns = int(np.asarray(preprocess.transform(_frame(features[:1]))).shape[1])
    return RefitSpec(fit=fit, parameters=columns + 1)


def refit_model(
    base: BaseModel, features: NDArray[np.float64], y: NDArray[np.int64], seed: int
) -> Any:
    from heartml.training.fit import LabelledRows, fit_pipeline

    labelled = LabelledRows(
        _frame(features),
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
    probe = Probe(rows=every, expected=np.asarray(model.predict_proba(_frame(every))))
    deviation = largest_deviation(OnnxEngine(graph), probe)
    if not deviation <= PARITY:
        raise ConversionError(
            f"{sample.site}: the adapted ONNX graph differs from the Python update by "
            f"{deviation:.3g} (at most {PARITY:g} allowed)"
        )
    return OnnxForm(graph=graph, probe=probe, deviation=deviation)


# --- writing --------------------------------------------------------------------------------


def version_tags(
    base: BaseModel, sample: SiteSample, adaptation: Adaptation, seed: int
) -> dict[str, str]:
    from heartml.training.tracking import git_commit

    after = adaptation.section["after"]
    auc = after["roc_auc"]
    tags = {
        TAG_SITE: sample.site,
        TAG_ADAPTED_FROM: base.version.ref,
        TAG_METHOD: str(adaptation.update.method),
        "data_sha256": sample.sha256,
        "data_sites": sample.site,
        "git_commit": git_commit(),
        "adaptation_seed": str(seed),
        "model_type": base.version.tags.get("model_type", base.card["model"]["candidate"]),
    }
    for key in ("config_hash", "split_seed", "split_test_size", "selection_metric"):
        if key in base.version.tags:
            tags[key] = base.version.tags[key]
    if auc is not None:
        tags["roc_auc"] = f"{auc['estimate']:.4f}"
        tags["roc_auc_ci"] = f"{auc['low']:.4f}-{auc['high']:.4f}"
    return tags


def adapted_card(
    base: BaseModel,
    run_id: str,
    version: str,
    site_section: dict[str, Any],
    lineage: dict[str, str],
) -> dict[str, Any]:
    """The base version's card, as the adapted version's: its model, lineage, and the section."""
    card = dict(base.card)
    model = dict(card["model"])
    model.update(version=int(version), run_id=run_id, uri=f"models:/{model['name']}/{version}")
    return {
        **card,
        "model": model,
        "gate": None,
        "lineage": {**card["lineage"], **lineage, "run_id": run_id},
        "site_adaptation": site_section,
    }


def register(
    settings: Settings,
    client: MlflowClient,
    experiment_id: str,
    base: BaseModel,
    sample: SiteSample,
    adaptation: Adaptation,
    seed: int,
) -> str:
    """Log the adapted model on a run of its own and register it; returns the version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from heartml.data.profile import write_profile
    from heartml.evidence.card import write_card_files
    from heartml.evidence.predictions import PREDICTIONS_ARTIFACT, write_predictions
    from heartml.training.plots import plot_calibration, render_png
    from heartml.training.tracking import SKOPS_TRUSTED_TYPES, onnx_files, pip_requirements

    form = adaptation.form
    tags = version_tags(base, sample, adaptation, seed)
    site_section = adaptation.section
    plot = render_png(
        plot_calibration(
            {
                f"before: {base.version.ref}": site_section["before"]["calibration_curve"],
                f"after: {site_section['method']} (validated)": site_section["after"][
                    "calibration_curve"
                ],
            },
            title=f"Calibration at {sample.site}",
        )
    )
    plots = {**base.plots, PLOT: plot}
    answered = sample.features[adaptation.rows.answered]
    example = _frame(answered[:5])
    name = base.version.name
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"adapt-{sample.site}", tags=tags
    ) as run:
        run_id = run.info.run_id
        mlflow.log_params(
            {
                "site": sample.site,
                "adapted_from": base.version.ref,
                "requested_method": site_section["requested"],
                "folds": site_section["folds"],
                "repeats": site_section["repeats"],
                "seed": seed,
            }
        )
        mlflow.log_metric("onnx_max_deviation", form.deviation)
        mlflow.log_text(write_predictions(adaptation.sets), PREDICTIONS_ARTIFACT)
        with tempfile.TemporaryDirectory(prefix="heartml-adapt-") as staging:
            directory = Path(staging)
            info = mlflow.sklearn.log_model(
                adaptation.model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
                signature=infer_signature(example, adaptation.model.predict_proba(example)),
                pyfunc_predict_fn="predict_proba",
                pip_requirements=pip_requirements(),
                extra_files=[
                    *onnx_files(form, directory),
                    write_profile(answered, directory),
                ],
            )
            (directory / "plots").mkdir()
            for path, png in plots.items():
                (directory / "plots" / path).write_bytes(png)
            mlflow.log_artifacts(str(directory / "plots"), "plots")
        # As log_model(registered_model_name=...) registers: the version knows its logged model.
        registered = mlflow.register_model(info.model_uri, name, tags=tags)
        version = str(registered.version)
        try:
            card = adapted_card(
                base,
                run_id,
                version,
                site_section,
                {
                    "site": sample.site,
                    "adapted_from": base.version.ref,
                    "site_data_sha256": sample.sha256,
                },
            )
            with tempfile.TemporaryDirectory(prefix="heartml-card-") as staging:
                write_card_files(card, Path(staging), plots)
                mlflow.log_artifacts(staging)
        except BaseException:
            client.delete_model_version(name, version)
            raise
    return version


def adapt_sites(
    settings: Settings, ref: str, samples: Sequence[SiteSample], requested: str, seed: int
) -> list[SiteOutcome]:
    """Adapt ``ref`` to each site's sample. Every site is decided and validated before any is
    registered, so a refusal (a method the sample cannot support) leaves the registry as it
    was; under ``auto``, a site that supports no update at all is left out (its outcome says
    why) and the others go on."""
    from heartml import registry

    base_version = resolve_base(settings, ref)
    client = registry.get_client(settings)
    base = registry.call_store(
        settings, lambda: load_base(client, base_version), f"read {base_version.ref}"
    )
    decided: list[tuple[SiteSample, Adaptation | None, str | None]] = []
    for sample in samples:
        try:
            decided.append((sample, decide(base, sample, requested, seed), None))
        except NotAdaptedError as exc:
            decided.append((sample, None, str(exc)))
    experiment_id = registry.ensure_experiment(settings)
    registry.require_experiment_access(settings, experiment_id)
    outcomes = []
    for sample, adaptation, refusal in decided:
        if adaptation is None:
            outcomes.append(SiteOutcome(sample.site, None, None, refusal))
            continue
        version = registry.call_store(
            settings,
            lambda s=sample, a=adaptation: register(  # type: ignore[misc]
                settings, client, experiment_id, base, s, a, seed
            ),
            f"register the adapted version for {sample.site}",
        )
        outcomes.append(
            SiteOutcome(sample.site, adaptation.section, f"{base_version.name}/{version}", None)
        )
    return outcomes
