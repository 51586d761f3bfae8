"""The scikit-learn side of adapting, in a worker process started with the command.

Adapting imports two large libraries that no one part of the work needs both of: MLflow and
its SQL store (to read the base version and register the new ones) and scikit-learn with skops
(to load the base pipeline, score the site's rows and save the adapted model). Imported in
one process they take most of the command's time, one after the other. Here a worker process
imports scikit-learn, skops, pandas and ONNX Runtime while the command's process imports MLflow
and opens the store, and then does all of the work that needs them: it reads and validates the
site samples, loads the base pipeline from the files the main process downloaded, decides and
validates every site's update, and stages each adapted model's files (its skops file, checked
to load with the trusted types, its ONNX graph and probe, its reference profile). The main
process writes the MLflow model from those files (:mod:`heartml.adaptation.register`) and
never imports scikit-learn.

Each task returns plain values (arrays, dicts, paths); the worker keeps nothing between tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from heartml.errors import UserError
from heartml.lifeline import stop_pool

if TYPE_CHECKING:
    from heartml.adaptation.sample import SiteSample
    from heartml.registry import VersionInfo
    from heartml.settings import Settings

# What the worker needs, imported as it starts.
WORKER_PRELOAD = [
    "heartml.adaptation.worker",
    "heartml.adaptation.decide",
    "heartml.adaptation.sample",
    "pandas",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "skops.io",
    "onnx",
    "onnxruntime",
    "threadpoolctl",
    # Last: the worker has time for them while the main process opens the store.
    "heartml.training.plots",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
]

SKOPS_FORMAT = "skops"


@contextmanager
def adaptation_worker() -> Iterator[ProcessPoolExecutor]:
    """One worker process, started now: it imports what it needs as it starts.

    Spawned, not forked from a fork server: a fork server answers only once it has imported
    its preloaded modules, so the first task would wait for them here; a spawned process
    starts at once and imports on the other core while this process goes on."""
    import multiprocessing
    import os

    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    except BrokenProcessPool as exc:
        raise UserError(f"the adaptation worker process died ({exc})") from exc
    finally:
        # Nothing the worker still does is wanted once the command ends (an error, Ctrl-C).
        stop_pool(pool)


def _start(session_pid: int) -> None:
    """The worker's start: follow the command's process, one native thread, the imports."""
    import importlib

    from heartml.training.workers import start_worker

    start_worker(session_pid)
    for module in WORKER_PRELOAD:
        importlib.import_module(module)


def read_samples(settings: Settings, sites: Sequence[str], data: Path | None) -> list[SiteSample]:
    """Every site's sample, read and validated in the order given (the first invalid one
    raises :class:`~heartml.adaptation.sample.InvalidSampleError` with its report)."""
    from heartml.adaptation.sample import read_site_sample

    return [read_site_sample(settings, site, data) for site in sites]


@dataclass(frozen=True, slots=True)
class BaseFiles:
    """The base version's files, downloaded by the main process."""

    version: VersionInfo
    model_dir: Path
    graph: Path
    card: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Staged:
    """A site's adaptation, decided, validated and its model's files written: what the main
    process registers. ``refusal``: the site supports no update (nothing else is set)."""

    site: str
    section: dict[str, Any] | None = None
    sets: dict[str, Any] | None = None
    method: str | None = None
    deviation: float = float("nan")
    model_file: Path | None = None
    extra_files: tuple[str, ...] = ()
    example: NDArray[np.float64] | None = None  # the signature's input rows
    example_output: NDArray[np.float64] | None = None  # the model's predict_proba on them
    sklearn_version: str = ""
    plot: bytes = b""  # the site's before/after calibration curves (PNG)
    refusal: str | None = None


def load_pipeline(model_dir: Path) -> Any:
    """The base version's sklearn model, as ``mlflow.sklearn.load_model`` loads it: the file
    and trusted types its MLmodel names (skops); any other format through MLflow."""
    import yaml

    flavor = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))["flavors"][
        "sklearn"
    ]
    if flavor.get("serialization_format") != SKOPS_FORMAT:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(model_dir))
    import skops.io

    return skops.io.load(
        model_dir / flavor["pickled_model"], trusted=flavor.get("skops_trusted_types")
    )


def prepare_sites(
    base_files: BaseFiles,
    samples: Sequence[SiteSample],
    requested: str,
    seed: int,
    staging: Path,
) -> list[Staged]:
    """Decide and validate every site (an :class:`~heartml.adaptation.procedure.
    AdaptationError` for any site stops them all, before anything is written), then stage
    each adapted model's files under ``staging/<site>``."""
    from heartml.adaptation.decide import BaseModel, NotAdaptedError, decide

    base = BaseModel(
        base_files.version,
        load_pipeline(base_files.model_dir),
        base_files.graph.read_bytes(),
        base_files.card,
    )
    decided: list[tuple[SiteSample, Any, str | None]] = []
    for sample in samples:
        try:
            decided.append((sample, decide(base, sample, requested, seed), None))
        except NotAdaptedError as exc:
            decided.append((sample, None, str(exc)))
    staged = []
    for sample, adaptation, refusal in decided:
        if adaptation is None:
            staged.append(Staged(sample.site, refusal=refusal))
        else:
            staged.append(_stage(base_files, sample, adaptation, staging / sample.site))
    return staged


def _stage(base: BaseFiles, sample: SiteSample, adaptation: Any, directory: Path) -> Staged:
    """Write the adapted model's files as ``mlflow.sklearn.save_model`` would: the skops file,
    loaded back with the trusted types (as MLflow checks it), the ONNX files and the profile."""
    import sklearn
    import skops.io

    from heartml.adaptation.decide import model_frame
    from heartml.data.profile import write_profile
    from heartml.training.tracking import SKOPS_TRUSTED_TYPES, onnx_files

    directory.mkdir(parents=True)
    model_file = directory / "model.skops"
    skops.io.dump(adaptation.model, model_file)
    skops.io.load(model_file, trusted=sorted(SKOPS_TRUSTED_TYPES))
    answered = sample.features[adaptation.rows.answered]
    example = answered[:5]
    extra = directory / "extra_files"
    extra.mkdir()
    return Staged(
        site=sample.site,
        section=adaptation.section,
        sets=adaptation.sets,
        method=str(adaptation.update.method),
        deviation=float(adaptation.form.deviation),
        model_file=model_file,
        extra_files=(
            *onnx_files(adaptation.form, extra),
            write_profile(answered, extra),
            *_explainer_files(base, adaptation, answered, extra),
        ),
        example=example,
        example_output=np.asarray(adaptation.model.predict_proba(model_frame(example))),
        sklearn_version=sklearn.__version__,
        plot=calibration_plot(base, sample.site, adaptation.section),
    )


def calibration_plot(base: BaseFiles, site: str, site_section: dict[str, Any]) -> bytes:
    """The site's before/after calibration curves (validated), as a PNG."""
    from heartml.training.plots import plot_calibration, render_png

    return render_png(
        plot_calibration(
            {
                f"before: {base.version.ref}": site_section["before"]["calibration_curve"],
                f"after: {site_section['method']} (validated)": site_section["after"][
                    "calibration_curve"
                ],
            },
            title=f"Calibration at {site}",
        )
    )


def _explainer_files(
    base: BaseFiles, adaptation: Any, answered: np.ndarray, directory: Path
) -> list[str]:
    """The adapted model's explainer: the base's, recalibrated (a linear explanation scales by
    the slope; a Shapley estimate explains whatever the recalibrated graph answers), or, for a
    refit, one built from the refitted pipeline on the site's rows. None when the base has
    none (registered before explanations were stored)."""
    from heartml.model.explain import StoredExplainer, find_explainer_files
    from heartml.model.explainer_files import build_explainer

    found = find_explainer_files(base.model_dir)
    if found is None:
        return []
    update = adaptation.update.recalibration
    if update is None:  # refit: the site's rows are its training rows
        stored = build_explainer(adaptation.model, answered, seed=0)
    else:
        stored = StoredExplainer.load(*found).recalibrated(update.intercept, update.slope)
    return [str(path) for path in stored.save(directory)]
