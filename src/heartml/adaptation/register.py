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

This process never imports scikit-learn: the worker of :mod:`heartml.adaptation.worker` reads
the samples, decides every site (:mod:`heartml.adaptation.decide`) and stages each model's
files while this process imports MLflow and opens the store; :class:`StagedSklearnFlavor`
turns the staged files into the MLflow model ``mlflow.sklearn.log_model`` would have logged.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.adaptation.card import PLOT
from heartml.errors import UserError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from heartml.adaptation.sample import SiteSample
    from heartml.adaptation.worker import BaseFiles, Staged
    from heartml.registry import VersionInfo
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

TAG_SITE = "site"
TAG_ADAPTED_FROM = "adapted_from"
TAG_METHOD = "adaptation_method"
CHAMPION = "champion"


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


def download_base(
    client: MlflowClient, version: VersionInfo, root: Path
) -> tuple[BaseFiles, dict[str, bytes]]:
    """The base version's model directory, card JSON and plots, downloaded under ``root``."""
    import mlflow.artifacts

    from heartml.adaptation.worker import BaseFiles
    from heartml.evidence.card import CARD_JSON, PLOTS_DIR
    from heartml.model.onnx_form import find_onnx_files

    model_dir = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(root))
    )
    files = find_onnx_files(model_dir)
    if files is None:
        raise UserError(f"{version.ref} has no ONNX form: adapting needs one to serve")
    card_path = Path(client.download_artifacts(version.run_id, CARD_JSON, str(root)))
    card = json.loads(card_path.read_text(encoding="utf-8"))
    plots: dict[str, bytes] = {}
    try:
        folder = Path(client.download_artifacts(version.run_id, PLOTS_DIR, str(root)))
        plots = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    except Exception as exc:  # a card without plots is rendered without them
        logger.info("%s: no plots (%s)", version.ref, _one_line(exc))
    return BaseFiles(version, model_dir, files.graph, card), plots


# --- writing --------------------------------------------------------------------------------


def reported_roc_auc(section: dict[str, Any]) -> dict[str, Any] | None:
    """The adapted version's ROC-AUC on the site's rows, with its interval: for a monotone
    recalibration the model's own, which is the base version's (the same order of risks);
    else the validated one."""
    if section["recalibration"] is not None:
        return section["before"]["roc_auc"]  # type: ignore[no-any-return]
    return section["after"]["roc_auc"]  # type: ignore[no-any-return]


def version_tags(base: BaseFiles, sample: SiteSample, staged: Staged, seed: int) -> dict[str, str]:
    from heartml.training.tracking import git_commit

    assert staged.section is not None
    auc = reported_roc_auc(staged.section)
    tags = {
        TAG_SITE: sample.site,
        TAG_ADAPTED_FROM: base.version.ref,
        TAG_METHOD: str(staged.method),
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
    base_card: dict[str, Any],
    run_id: str,
    version: str,
    site_section: dict[str, Any],
    lineage: dict[str, str],
) -> dict[str, Any]:
    """The base version's card, as the adapted version's: its model, lineage, and the section."""
    card = dict(base_card)
    model = dict(card["model"])
    model.update(version=int(version), run_id=run_id, uri=f"models:/{model['name']}/{version}")
    return {
        **card,
        "model": model,
        "gate": None,
        "lineage": {**card["lineage"], **lineage, "run_id": run_id},
        "site_adaptation": site_section,
    }


class StagedSklearnFlavor:
    """``mlflow.sklearn`` as ``Model.log`` calls it, for a model the worker has serialized.

    ``mlflow.sklearn.log_model`` would serialize the model here, which needs scikit-learn and
    skops in this process; the worker wrote the skops file instead (and checked that it loads
    with the trusted types, as MLflow checks it). :meth:`save_model` writes the rest of the
    directory as ``mlflow.sklearn.save_model`` writes it for these arguments (the skops format,
    explicit pip requirements, a signature, extra files, no input example, no code paths);
    tests/integration/test_adapt.py compares the two directories.
    """

    __name__ = "mlflow.sklearn"

    def __init__(self, staged: Staged, environment: ModelEnvironment) -> None:
        self.staged = staged
        self.environment = environment

    def save_model(
        self,
        path: str,
        mlflow_model: Any,
        serialization_format: str,
        signature: Any,
        pyfunc_predict_fn: str,
        skops_trusted_types: list[str],
        extra_files: list[str],
    ) -> None:
        import shutil

        import yaml
        from mlflow import pyfunc
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.utils.environment import (
            _CONDA_ENV_FILE_NAME,
            _CONSTRAINTS_FILE_NAME,
            _PYTHON_ENV_FILE_NAME,
            _REQUIREMENTS_FILE_NAME,
            _PythonEnv,
        )
        from mlflow.utils.file_utils import get_total_file_size
        from mlflow.utils.model_utils import (
            _copy_extra_files,
            _validate_and_prepare_target_save_path,
        )

        assert self.staged.model_file is not None
        model_data = "model.skops"
        directory = Path(path)
        _validate_and_prepare_target_save_path(path)  # type: ignore[no-untyped-call]
        mlflow_model.signature = signature
        shutil.copyfile(self.staged.model_file, directory / model_data)
        extra_files_config = _copy_extra_files(extra_files, path)  # type: ignore[no-untyped-call]
        pyfunc.add_to_model(
            mlflow_model,
            loader_module="mlflow.sklearn",
            model_path=model_data,
            conda_env=_CONDA_ENV_FILE_NAME,
            python_env=_PYTHON_ENV_FILE_NAME,
            code=None,
            predict_fn=pyfunc_predict_fn,
        )
        mlflow_model.add_flavor(
            "sklearn",
            pickled_model=model_data,
            sklearn_version=self.staged.sklearn_version,
            serialization_format=serialization_format,
            code=None,
            skops_trusted_types=skops_trusted_types,
            **extra_files_config,
        )
        if size := get_total_file_size(path):
            mlflow_model.model_size_bytes = size
        mlflow_model.save(str(directory / MLMODEL_FILE_NAME))
        conda_env, requirements, constraints = self.environment
        with (directory / _CONDA_ENV_FILE_NAME).open("w") as f:
            yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
        if constraints:
            (directory / _CONSTRAINTS_FILE_NAME).write_text(
                "\n".join(constraints), encoding="utf-8"
            )
        (directory / _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements), encoding="utf-8")
        python_env = _PythonEnv.current()  # type: ignore[no-untyped-call]
        python_env.to_yaml(str(directory / _PYTHON_ENV_FILE_NAME))


# The conda environment, pip requirements and constraints of a model's directory.
ModelEnvironment = tuple[dict[str, Any], list[str], list[str]]


def model_environment() -> ModelEnvironment:
    """The environment files' contents, as ``mlflow.sklearn.save_model`` makes them from the
    explicit pip requirements (the same for every site: made once; MLflow's check of them
    against the installed packages reads every package's metadata)."""
    from mlflow.utils.environment import _process_pip_requirements

    from heartml.training.tracking import pip_requirements

    wanted = pip_requirements()
    conda_env, requirements, constraints = _process_pip_requirements(  # type: ignore[no-untyped-call]
        None, wanted, None
    )
    return conda_env, requirements, constraints


def log_staged_model(staged: Staged, environment: ModelEnvironment) -> Any:
    """Log the staged model on the active run, as ``mlflow.sklearn.log_model`` logs it."""
    from mlflow.models import Model, infer_signature

    from heartml.adaptation.decide import model_frame
    from heartml.training.tracking import SKOPS_TRUSTED_TYPES

    assert staged.example is not None
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=StagedSklearnFlavor(staged, environment),
        flavor_name="mlflow.sklearn",
        serialization_format="skops",
        skops_trusted_types=sorted(SKOPS_TRUSTED_TYPES),
        signature=infer_signature(model_frame(staged.example), staged.example_output),
        pyfunc_predict_fn="predict_proba",
        extra_files=list(staged.extra_files),
    )


def register(
    client: MlflowClient,
    experiment_id: str,
    base: BaseFiles,
    base_plots: dict[str, bytes],
    sample: SiteSample,
    staged: Staged,
    seed: int,
    environment: ModelEnvironment,
) -> str:
    """Log the adapted model on a run of its own and register it; returns the version."""
    import mlflow

    from heartml.evidence.card import write_card_files
    from heartml.evidence.predictions import PREDICTIONS_ARTIFACT, write_predictions

    assert staged.section is not None and staged.sets is not None
    tags = version_tags(base, sample, staged, seed)
    site_section = staged.section
    plots = {**base_plots, PLOT: staged.plot}
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
        mlflow.log_metric("onnx_max_deviation", staged.deviation)
        mlflow.log_text(write_predictions(staged.sets), PREDICTIONS_ARTIFACT)
        info = log_staged_model(staged, environment)
        with tempfile.TemporaryDirectory(prefix="heartml-adapt-") as staging:
            directory = Path(staging)
            (directory / "plots").mkdir()
            for path, png in plots.items():
                (directory / "plots" / path).write_bytes(png)
            mlflow.log_artifacts(str(directory / "plots"), "plots")
        # As log_model(registered_model_name=...) registers: the version knows its logged model.
        registered = mlflow.register_model(info.model_uri, name, tags=tags)
        version = str(registered.version)
        try:
            card = adapted_card(
                base.card,
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


def _import_for_registering() -> None:
    """What registering imports, imported while the worker decides (this process would wait)."""
    import mlflow.models.signature
    import mlflow.pyfunc
    import mlflow.utils.environment
    import mlflow.utils.model_utils

    from heartml.evidence.card import write_card_files

    del mlflow, write_card_files


def adapt_sites(
    settings: Settings,
    ref: str,
    sites: Sequence[str],
    data: Path | None,
    requested: str,
    seed: int,
) -> list[SiteOutcome]:
    """Adapt ``ref`` to each site's sample. Every site is decided and validated before any is
    registered, so a refusal (a method the sample cannot support) leaves the registry as it
    was; under ``auto``, a site that supports no update at all is left out (its outcome says
    why) and the others go on. The samples are read and checked first: an invalid one raises
    :class:`~heartml.adaptation.sample.InvalidSampleError` before anything else is reported.

    The scikit-learn side runs in a worker (:mod:`heartml.adaptation.worker`) that starts
    importing now, while this process imports MLflow and opens the store."""
    from heartml import registry
    from heartml.adaptation.worker import adaptation_worker, prepare_sites, read_samples

    with adaptation_worker() as worker:
        reading = worker.submit(read_samples, settings, list(sites), data)
        with tempfile.TemporaryDirectory(prefix="heartml-adapt-") as staging:
            root = Path(staging)
            try:
                base_version = resolve_base(settings, ref)
                client = registry.get_client(settings)
                base, base_plots = registry.call_store(
                    settings,
                    lambda: download_base(client, base_version, root / "base"),
                    f"read {base_version.ref}",
                )
            except Exception:
                reading.result()  # an invalid sample is reported first, as it is checked first
                raise
            samples = reading.result()
            preparing = worker.submit(prepare_sites, base, samples, requested, seed, root / "sites")
            experiment_id = registry.ensure_experiment(settings)
            registry.require_experiment_access(settings, experiment_id)
            _import_for_registering()
            environment = model_environment()
            staged = preparing.result()
            outcomes = []
            for sample, found in zip(samples, staged, strict=True):
                if found.refusal is not None:
                    outcomes.append(SiteOutcome(sample.site, None, None, found.refusal))
                    continue
                version = registry.call_store(
                    settings,
                    lambda s=sample, f=found: register(  # type: ignore[misc]
                        client, experiment_id, base, base_plots, s, f, seed, environment
                    ),
                    f"register the adapted version for {sample.site}",
                )
                outcomes.append(
                    SiteOutcome(sample.site, found.section, f"{base_version.name}/{version}", None)
                )
    return outcomes
