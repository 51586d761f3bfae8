"""Train stage: fit and validate every candidate, log and register it with its card, tag the best.

A thin orchestration. Fitting and validation are pure (:mod:`heartml.training.fit`), the numbers
are :mod:`heartml.evidence.measures`, the plots :mod:`heartml.training.plots`, the card's numbers
:mod:`heartml.training.card`, the worker processes :mod:`heartml.training.workers`, the handling
of SIGINT and SIGTERM :mod:`heartml.training.interruption`, and MLflow is only in
:mod:`heartml.training.tracking`.

The work is cut into tasks for the worker pool, each fitting on its own seeded folds, so which
process runs which task changes the wall time, never a number:

1. one task per repeat of the cross-validation (every candidate on that repeat's folds, one
   preprocessing per fold), one per candidate for its final fit (held-out rows, other sites,
   importance, ONNX form), and with several sites one for leave-one-site-out;
2. once selection is made: each candidate's plots, and the chosen candidate's internal
   validation (one task per repeat over every row).

The main process meanwhile imports MLflow and opens the store, then logs each candidate as its
plots arrive, the chosen one last.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.download import ALL_SITES, SITE_FILES
from heartml.data.schema import FEATURE_NAMES, OPTIONAL_FEATURES
from heartml.data.validate import LoadedData, load_dataset
from heartml.evidence.measures import (
    CalibrationBand,
    RowFacts,
    candidate_evidence,
    selection_scores,
)
from heartml.evidence.predictions import (
    CV,
    HOLDOUT,
    INTERNAL,
    LOSO,
    MASKED_PREFIX,
    SITE_PREFIX,
    PredictionSet,
    prediction_set,
    resampled_set,
)
from heartml.model.convert import TrainingRows, convert_pipeline
from heartml.training.candidates import TrainingError
from heartml.training.card import SessionContext
from heartml.training.experiment import ExperimentConfig, load_experiment
from heartml.training.fit import (
    FoldPredictions,
    HeldOutSplit,
    LabelledRows,
    cross_validate_repeat,
    fit_pipeline,
    labelled_rows,
    plan_folds,
    plan_sites,
    predict,
    rank_key,
    split_data,
)
from heartml.training.interruption import (
    Interrupted,
    SignalGuard,
    TrainingInterrupted,
    stop_on_signals,
)
from heartml.training.plots import (
    draw_roc_curves,
    feature_importance,
    plot_calibration,
    plot_confusion_matrix,
    plot_importance,
    plot_roc_curves,
    render_png,
)
from heartml.training.tracking import (
    CandidateRecord,
    CandidateResult,
    git_commit,
    log_candidate,
    log_session_summary,
    open_store,
)
from heartml.training.workers import candidate_pool, collect_results, worker_context

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from heartml.model.convert import OnnxForm
    from heartml.registry import PromotionResult
    from heartml.settings import Settings

__all__ = [
    "CandidateResult",
    "Progress",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "train_candidates",
]

logger = logging.getLogger(__name__)

# The cost of a missing test is measured by removing these fields from the out-of-fold rows:
# each optional field alone, and all of them (a patient with none of those tests).
ALL_OPTIONAL = "all_optional"
MASKINGS: dict[str, tuple[str, ...]] = {
    **{field: (field,) for field in OPTIONAL_FEATURES},
    ALL_OPTIONAL: OPTIONAL_FEATURES,
}


# Called each time training moves on (a candidate fitted, one registered, the promotion
# attempted) with a line saying so and the session's number of steps. The CLI draws a progress
# bar from it. "fitted" events come from the worker pool's own thread, so the callback must be
# thread-safe (Rich's Progress is).
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class TrainResult:
    parent_run_id: str
    experiment_id: str
    candidates: tuple[CandidateResult, ...]
    best: CandidateResult
    promotion: PromotionResult | None
    promotion_warning: str | None


@dataclass(slots=True)
class Ledger:
    """What a session has registered so far: what an interruption reports."""

    candidates: tuple[str, ...] = ()
    registered: dict[str, CandidateResult] = field(default_factory=dict)
    promoting: bool = False

    def interrupted(self, signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(
            signum,
            tuple(f"{r.model_name}/{r.model_version}" for r in self.registered.values()),
            tuple(name for name in self.candidates if name not in self.registered),
            promoting=self.promoting,
        )


@dataclass(frozen=True, slots=True)
class FinalFit:
    """A candidate fitted on every training row, and what only that model gives."""

    name: str
    params: dict[str, Any]
    model: Pipeline
    holdout: np.ndarray  # P(disease) of each held-out row
    sites: dict[str, np.ndarray]  # site not trained on -> P(disease) of each of its rows
    importance_kind: str
    importance: dict[str, float]
    onnx: OnnxForm


def fit_final(
    name: str,
    params: dict[str, Any],
    config: ExperimentConfig,
    split: HeldOutSplit,
    others: Mapping[str, LabelledRows],
    probe_rows: np.ndarray,
) -> bytes:
    """Fit on every training row; score the held-out rows and the other sites; explain; convert
    to ONNX, checked on ``probe_rows`` (every row trained on, complete and with optional fields
    missing: a disagreement fails the session).

    Returned pickled: the pool unpickles a result in its own thread, and a fitted pipeline's
    classes would then be imported there while the main thread imports MLflow and skops, which
    import scikit-learn too — two threads importing the same modules in opposite orders, and
    Python's import deadlock detection hands one a partially initialised module. As bytes, the
    result is unpickled by the main thread, once the store is open.
    """
    model = fit_pipeline(name, params, split.train, config.split.seed)
    training = split.x_train.to_numpy(dtype="float64")
    onnx = convert_pipeline(model, probe_rows, TrainingRows(training, split.y_train))
    kind, importance = feature_importance(
        model, onnx.graph, training, split.x_test.to_numpy(dtype="float64"), config.split.seed
    )
    fitted = FinalFit(
        name=name,
        params=params,
        model=model,
        holdout=predict(model, split.x_test),
        sites={site: predict(model, rows.features) for site, rows in others.items()},
        importance_kind=kind,
        importance=importance,
        onnx=onnx,
    )
    return pickle.dumps(fitted)


def draw_plots(
    name: str,
    sets: Mapping[str, PredictionSet],
    evidence: Mapping[str, Any],
    importance_kind: str,
    importance: dict[str, float],
) -> dict[str, bytes]:
    """The candidate's plots, as PNG: artifact path (under ``plots/``) -> bytes."""
    holdout, oof = sets[HOLDOUT], sets[CV].by_row()
    figures = {
        "roc_curve.png": plot_roc_curves(
            {
                "held-out": (holdout.y, holdout.probability),
                "out-of-fold": (oof.y, oof.probability),
            }
        ),
        "calibration_curve.png": plot_calibration(
            {
                "out-of-fold (deciles)": evidence["cv"]["calibration_curve"],
                "held-out (quintiles)": evidence["holdout"]["calibration_curve"],
            },
            title=f"Calibration: {name}",
        ),
        "confusion_matrix.png": plot_confusion_matrix(holdout.y, holdout.probability),
        "feature_importance.png": plot_importance(importance_kind, importance),
    }
    for key, title in (("sites", "other sites"), ("leave_one_site_out", "left-out sites")):
        if evidence.get(key):
            curves = {site: _site_curve(sets, key, site, i) for i, site in enumerate(evidence[key])}
            figures[f"calibration_{key}.png"] = plot_calibration(
                curves, title=f"Calibration on {title}"
            )
    return {path: render_png(fig) for path, fig in figures.items()}


def _site_curve(
    sets: Mapping[str, PredictionSet], key: str, site: str, position: int
) -> list[dict[str, float]]:
    from heartml.evidence.measures import curve_json

    if key == "sites":
        rows = sets[SITE_PREFIX + site]
        return curve_json(rows.y, rows.probability, bins=5)
    loso = sets[LOSO]
    chosen = loso.fold == position
    return curve_json(loso.y[chosen], loso.probability[chosen], bins=5)


def _on_done(message: str, report: Callable[[str], None]) -> Callable[[Future[Any]], None]:
    """A done-callback that reports a finished task (it runs in the pool's own thread)."""

    def on_done(future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            report(message)

    return on_done


def other_sites(settings: Settings, config: ExperimentConfig) -> LoadedData | None:
    """The downloaded sites the experiment does not train on (checked like the others), or
    None when none is: ``heartml data download --all-sites`` fetches them."""
    cached = [
        site
        for site in ALL_SITES
        if site not in config.data.sites
        and (settings.data_dir / SITE_FILES[site].filename).is_file()
    ]
    return load_dataset(settings, cached) if cached else None


def probe_rows_of(features: np.ndarray) -> np.ndarray:
    """The rows an ONNX form must reproduce: every row, and every row again with a pattern of
    its optional fields missing (row i drops the fields of the bits of i + 1), so that the
    graph is checked on imputation as the API will use it."""
    positions = [FEATURE_NAMES.index(f) for f in OPTIONAL_FEATURES]
    masked = features.copy()
    for i in range(len(masked)):
        pattern = (i % (2 ** len(positions) - 1)) + 1
        for bit, column in enumerate(positions):
            if pattern >> bit & 1:
                masked[i, column] = np.nan
    return np.vstack([features, masked])


def row_facts(frames: list[LabelledRows]) -> RowFacts:
    sex: dict[str, float] = {}
    age: dict[str, float] = {}
    missing: dict[str, frozenset[str]] = {}
    for rows in frames:
        values = rows.features.to_numpy(dtype="float64")
        absent = np.isnan(values)
        for i, row_id in enumerate(rows.ids):
            sex[row_id] = float(values[i, FEATURE_NAMES.index("sex")])
            age[row_id] = float(values[i, FEATURE_NAMES.index("age")])
            missing[row_id] = frozenset(
                name for name, gone in zip(FEATURE_NAMES, absent[i], strict=True) if gone
            )
    return RowFacts(sex=sex, age=age, missing=missing)


def missing_counts(rows: LabelledRows) -> dict[str, int]:
    """Missing feature values per site."""
    values = rows.features.to_numpy(dtype="float64")
    return {
        site: int(np.isnan(values[rows.sites == site]).sum()) for site in dict.fromkeys(rows.sites)
    }


def assemble_sets(
    name: str,
    split: HeldOutSplit,
    plan: np.ndarray,
    repeats: list[dict[str, FoldPredictions]],
    final: FinalFit,
    others: Mapping[str, LabelledRows],
    loso: tuple[LabelledRows, np.ndarray, dict[str, FoldPredictions]] | None,
) -> dict[str, PredictionSet]:
    """A candidate's predictions table from the tasks' results."""
    train = split.train
    stacked = np.vstack([r[name].probability for r in repeats])
    sets = {CV: resampled_set(train.ids, train.target, plan, stacked)}
    for masking, masked in repeats[0][name].masked.items():
        sets[MASKED_PREFIX + masking] = resampled_set(train.ids, train.target, plan[:1], masked)
    sets[HOLDOUT] = prediction_set(split.test.ids, split.test.target, final.holdout)
    for site, rows in others.items():
        sets[SITE_PREFIX + site] = prediction_set(rows.ids, rows.target, final.sites[site])
    if loso is not None:
        rows, site_plan, results = loso
        sets[LOSO] = resampled_set(rows.ids, rows.target, site_plan, results[name].probability)
    return sets


def train_candidates(
    settings: Settings, *, promote: bool = True, progress: Progress | None = None
) -> TrainResult:
    """Run one training session: every candidate of the experiment, logged and registered.

    The best version is tagged ``best_model=true``; then training attempts the promotion. A
    refused or failed promotion is reported in the result (``promotion_warning``) and never
    fails training: the pipeline's promote step decides.

    The work runs in worker processes (:mod:`heartml.training.workers`). As with any use of
    multiprocessing, a script that calls this must keep its top-level code under
    ``if __name__ == "__main__":`` (the ``heartml`` command, ``python -m heartml`` and pytest do).

    SIGINT or SIGTERM (called from the main thread) stops the workers and raises
    :class:`TrainingInterrupted`, which says what was registered; a version is registered
    whole or not at all (:mod:`heartml.training.interruption`).
    """
    ledger = Ledger()
    with stop_on_signals() as guard:
        try:
            return _run_session(settings, promote, progress, guard, ledger)
        except Interrupted as stop:
            raise ledger.interrupted(stop.signum) from None


def _run_session(
    settings: Settings,
    promote: bool,
    progress: Progress | None,
    guard: SignalGuard,
    ledger: Ledger,
) -> TrainResult:
    from heartml import registry

    workers = worker_context()
    config = load_experiment(settings.experiment_config)
    ledger.candidates = tuple(config.candidates)
    dataset = load_dataset(settings, config.data.sites)
    rows = labelled_rows(dataset.frame)
    split = split_data(rows, config)
    elsewhere = other_sites(settings, config)
    others_rows = labelled_rows(elsewhere.frame) if elsewhere is not None else None
    others: dict[str, LabelledRows] = {}
    if others_rows is not None:
        others = {site: others_rows.where_site(site) for site in dict.fromkeys(others_rows.sites)}
    seed, cv = config.split.seed, config.cv
    plan = plan_folds(split.train, cv.folds, cv.repeats, seed)
    probe_rows = probe_rows_of(rows.features.to_numpy(dtype="float64"))
    band = CalibrationBand(
        settings.calibration_slope_min,
        settings.calibration_slope_max,
        settings.calibration_intercept_max,
    )

    # fit each, register each, promote
    steps = 2 * len(config.candidates) + int(promote)

    def report(step: str) -> None:
        if progress is not None:
            progress(step, steps)

    started = time.perf_counter()
    candidates = config.candidates
    with candidate_pool(len(candidates), workers) as pool:
        # The missing tests are measured on the first repeat's folds: a paired comparison on
        # every training row, at a fifth of the cost of doing it for every repeat.
        repeat_futures = [
            pool.submit(
                cross_validate_repeat,
                candidates,
                split.train,
                plan[r],
                seed,
                MASKINGS if r == 0 else None,
            )
            for r in range(cv.repeats)
        ]
        final_futures = []
        for name, params in candidates.items():
            future = pool.submit(fit_final, name, params, config, split, others, probe_rows)
            future.add_done_callback(_on_done(f"fitted {name}", report))
            final_futures.append(future)
        loso_future = None
        if config.validation.leave_one_site_out:
            site_plan = plan_sites(rows, config.data.sites)
            loso_future = pool.submit(cross_validate_repeat, candidates, rows, site_plan[0], seed)

        experiment_id = open_store(settings)

        repeats = collect_results(repeat_futures)
        finals: list[FinalFit] = [pickle.loads(b) for b in collect_results(final_futures)]
        loso = None
        if loso_future is not None:
            loso = (rows, site_plan, collect_results([loso_future])[0])
        facts = row_facts([rows, *others.values()])
        missing = missing_counts(rows) | (
            missing_counts(others_rows) if others_rows is not None else {}
        )

        def evidence_of(sets: Mapping[str, PredictionSet]) -> dict[str, Any]:
            return candidate_evidence(
                sets,
                test_fraction=cv.test_fraction,
                facts=facts,
                maskings=MASKINGS,
                missing_values=missing,
                band=band,
                sites=config.data.sites,
            )

        tables = {
            f.name: assemble_sets(f.name, split, plan, repeats, f, others, loso) for f in finals
        }
        evidence = {name: evidence_of(sets) for name, sets in tables.items()}
        best_name = max(
            candidates, key=lambda n: rank_key(n, selection_scores(evidence[n]), config)
        )
        logger.info(
            "cross-validated %d candidates in %.1f s", len(finals), time.perf_counter() - started
        )

        # The chosen candidate last: its internal validation runs meanwhile.
        order = [f for f in finals if f.name != best_name] + [
            f for f in finals if f.name == best_name
        ]
        # The chosen procedure's internal validation, over every row, after the plots.
        plot_futures = {
            f.name: pool.submit(
                draw_plots,
                f.name,
                tables[f.name],
                evidence[f.name],
                f.importance_kind,
                f.importance,
            )
            for f in finals
        }
        internal_futures = []
        if config.validation.internal:
            everyone = plan_folds(rows, cv.folds, cv.repeats, seed)
            internal_futures = [
                pool.submit(
                    cross_validate_repeat,
                    {best_name: candidates[best_name]},
                    rows,
                    everyone[r],
                    seed,
                )
                for r in range(cv.repeats)
            ]
        # Every candidate's held-out ROC curve, for the session's run: needed last.
        summary_future = pool.submit(
            draw_roc_curves,
            {
                f.name: (tables[f.name][HOLDOUT].y, tables[f.name][HOLDOUT].probability)
                for f in order
            },
        )

        import mlflow

        lineage = {
            "data_sha256": dataset.files.fingerprint,
            "data_sites": ",".join(config.data.sites),
            "git_commit": git_commit(),
            "config_hash": config.config_hash,
            "experiment_version": str(config.version),
            "split_seed": str(config.split.seed),
            "split_test_size": str(config.split.test_size),
        }
        session = SessionContext(
            config=config,
            lineage=lineage,
            dataset=dataset,
            others=elsewhere,
            split=split,
            evidence=evidence,
            best=best_name,
            experiment_id=experiment_id,
        )
        with mlflow.start_run(
            experiment_id=experiment_id, run_name="training-session", tags=lineage
        ) as parent:
            mlflow.log_params(
                {"candidates": ",".join(candidates), "rows": len(rows), "best": best_name}
            )
            results: dict[str, CandidateResult] = {}
            records: dict[str, CandidateRecord] = {}
            for final in order:
                sets = tables[final.name]
                if final.name == best_name and internal_futures:
                    done = collect_results(internal_futures)
                    sets = {
                        **sets,
                        INTERNAL: resampled_set(
                            rows.ids,
                            rows.target,
                            everyone,
                            np.vstack([r[best_name].probability for r in done]),
                        ),
                    }
                    evidence[best_name] = evidence_of(sets)
                record = CandidateRecord(
                    name=final.name,
                    params=final.params,
                    model=final.model,
                    sets=sets,
                    evidence=evidence[final.name],
                    importance_kind=final.importance_kind,
                    importance=final.importance,
                    plots=collect_results([plot_futures[final.name]])[0],
                    onnx=final.onnx,
                )
                # A signal waits until this version is whole: the card names the version, so
                # the version exists before its card and predictions can be logged, and the
                # tags follow them. Deferring costs the user the time of one registration
                # (about a second); undoing a half-made version instead would mean more writes
                # to the store just when the process is asked to stop, themselves open to the
                # next signal.
                with guard.deferred():
                    result = log_candidate(record, settings, session)
                    tag = (
                        registry.tag_best_version
                        if final.name == best_name
                        else registry.tag_candidate_version
                    )
                    tag(settings, result.model_name, result.model_version, result.tags)
                    ledger.registered[final.name] = result
                report(f"registered {result.model_name} v{result.model_version}")
                results[final.name] = result
                records[final.name] = record
            log_session_summary(
                list(records.values()), session, collect_results([summary_future])[0]
            )
            ordered = tuple(results[name] for name in candidates)
            best = results[best_name]

    # On an authenticated registry, the promoters may promote the models just created.
    for note in registry.share_with_promoters(settings, [r.model_name for r in ordered]):
        logger.warning(note)

    promotion, warning = None, None
    if promote:
        ledger.promoting = True
        report("promoting the best version")
        try:
            promotion = registry.promote_best(
                settings, reason="training session " + parent.info.run_id
            )
            if promotion.refused:
                warning = promotion.message
        except registry.RegistryError as exc:
            warning = f"promotion did not complete: {exc} (run `heartml promote --auto`)"
        if warning:
            logger.warning(warning)
        ledger.promoting = False
    return TrainResult(
        parent_run_id=parent.info.run_id,
        experiment_id=experiment_id,
        candidates=ordered,
        best=best,
        promotion=promotion,
        promotion_warning=warning,
    )
