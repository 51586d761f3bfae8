"""Talking to MLflow: configure it, read the family's state, apply a plan's writes.

Reads go straight to the store when :mod:`heartml.registry.store` can (no MLflow import); everything
else goes through ``MlflowClient``. Every store failure becomes a one-line
:class:`~heartml.registry.values.RegistryError`. The functions that write take a plan from
:mod:`heartml.registry.plans` and decide nothing themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from heartml.errors import one_line
from heartml.registry.access import AccessDeniedError, refused_message
from heartml.registry.values import (
    ARCHIVED,
    NO_STAGE,
    PRODUCTION,
    TAG_BEST,
    TAG_PREVIOUS,
    FamilyState,
    NotFoundError,
    RegisteredModel,
    RegistryError,
    StoreUnavailableError,
    VersionInfo,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from heartml.evidence.predictions import PredictionSet
    from heartml.registry.gate import GateEvidence, ModelEvidence, SiteEvidence
    from heartml.registry.plans import (
        BestTagPlan,
        Claim,
        PromotionPlan,
        ReconcilePlan,
        SiteGateEvidence,
        SiteReconcilePlan,
        SiteSubjects,
    )
    from heartml.registry.store import RawFamily
    from heartml.settings import Settings

T = TypeVar("T")


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow at the store; bound its HTTP retries so a dead server fails in seconds.

    An embedded SQLite store is created or migrated here, by one process at a time
    (:func:`heartml.registry.embedded.prepare_sqlite_store`).
    """
    import mlflow

    from heartml.registry.embedded import prepare_sqlite_store

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.registry_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    call_store(settings, lambda: prepare_sqlite_store(settings.mlflow_tracking_uri))


def get_client(settings: Settings) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    configure_mlflow(settings)
    return MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )


UNREACHABLE_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish",
    "unable to open database",
    "timed out",
    "Connection aborted",
    "RemoteDisconnected",
)


def unreachable_error(settings: Settings) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"tracking store {settings.mlflow_tracking_uri} is unreachable; "
        "is the MLflow server running?"
    )


ENDPOINT = re.compile(r"(/(?:ajax-)?api/\d\.\d/[\w./-]+)")


def refused_status(exc: BaseException) -> int | None:
    """401 or 403 when the server refused the request (MLflow's client, requests, the reader)."""
    status = getattr(exc, "status", None)  # heartml.registry.store.StoreReadError
    response = getattr(exc, "response", None)  # requests.HTTPError (artifact uploads)
    if response is not None:
        status = getattr(response, "status_code", None)
    get_status = getattr(exc, "get_http_status_code", None)  # MlflowException
    if callable(get_status):
        status = get_status()
    return status if status in (401, 403) else None


def configured_username() -> str | None:
    """The account the requests name: MLflow's username, or a token; None when anonymous."""
    if username := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return username
    return (
        "(the token in MLFLOW_TRACKING_TOKEN)" if os.environ.get("MLFLOW_TRACKING_TOKEN") else None
    )


def access_denial(exc: BaseException, settings: Settings, action: str) -> AccessDeniedError | None:
    """The one-line refusal for a 401 or 403, naming the account and the action; else None."""
    status = refused_status(exc)
    if status is None:
        return None
    endpoint = ENDPOINT.search(str(exc))
    detail = f"on {endpoint.group(1)}" if endpoint else ""
    return AccessDeniedError(
        refused_message(settings.mlflow_tracking_uri, configured_username(), status, action, detail)
    )


def is_unreachable(exc: BaseException) -> bool:
    """Whether a failure means the store cannot be reached (rather than a missing thing)."""
    text = one_line(exc, limit=sys.maxsize)
    return any(marker in text for marker in UNREACHABLE_MARKERS) or isinstance(exc, ConnectionError)


def describe_failure(
    exc: BaseException, settings: Settings, action: str = "use the registry"
) -> RegistryError:
    """One line for any failure of the store: refused, missing thing, unreachable, or other."""
    if (denied := access_denial(exc, settings, action)) is not None:
        return denied
    text = one_line(exc, limit=sys.maxsize)
    if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(text.split(". ")[0])
    if is_unreachable(exc):
        return unreachable_error(settings)
    return RegistryError(f"registry error: {one_line(exc)}")


def call_store(settings: Settings, call: Callable[[], T], action: str = "use the registry") -> T:
    """Run one registry call, turning every store failure into a one-line RegistryError;
    ``action`` says what was being done, for a refusal.

    HTTP-level retries of transient errors (connection refused, 429, 5xx) are done by MLflow's
    client, bounded by :func:`configure_mlflow`.
    """
    try:
        return call()
    except RegistryError:
        raise
    except Exception as exc:
        raise describe_failure(exc, settings, action) from exc


def ensure_experiment(settings: Settings) -> str:
    """The training experiment's id; created with its artifacts next to a local store."""

    def _ensure() -> str:
        client = get_client(settings)
        existing = client.get_experiment_by_name(settings.experiment_name)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                client.restore_experiment(existing.experiment_id)
            return str(existing.experiment_id)
        location = settings.artifact_dir.resolve().as_uri() if settings.is_local_store else None
        try:
            return str(client.create_experiment(settings.experiment_name, location))
        except Exception:
            # Another process created it between our look-up and our create.
            again = client.get_experiment_by_name(settings.experiment_name)
            if again is None:
                raise
            return str(again.experiment_id)

    return call_store(
        settings, _ensure, f"open or create the experiment '{settings.experiment_name}'"
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_with_client(client: MlflowClient, prefix: str) -> RawFamily:
    """The family as MlflowClient sees it (the slow, general path; also the tests' reference).

    ``search_model_versions`` leaves ``aliases`` empty on SQL stores, so aliases are read from
    the registered models, which carry them.
    """
    from heartml.registry.store import RawFamily, RawVersion

    pattern = f"name LIKE '{prefix}%'"
    models = _paged(lambda token: client.search_registered_models(pattern, page_token=token))
    versions = _paged(lambda token: client.search_model_versions(pattern, page_token=token))
    aliases = {
        m.name: {alias: int(v) for alias, v in (m.aliases or {}).items()}
        for m in models
        if m.name.startswith(prefix)
    }
    return RawFamily(
        aliases=aliases,
        versions=tuple(
            RawVersion(
                name=mv.name,
                version=int(mv.version),
                stage=mv.current_stage or NO_STAGE,
                tags=dict(mv.tags or {}),
                run_id=mv.run_id or "",
                source=mv.source or "",
                created_ms=int(mv.creation_timestamp or 0),
            )
            for mv in versions
            if mv.name in aliases
        ),
    )


def family_from_raw(raw: RawFamily, alias: str) -> FamilyState:
    by_model: dict[str, list[VersionInfo]] = {name: [] for name in raw.aliases}
    for v in raw.versions:
        held = tuple(sorted(a for a, n in raw.aliases[v.name].items() if n == v.version))
        by_model[v.name].append(
            VersionInfo(
                v.name,
                v.version,
                v.stage,
                held,
                v.tags,
                v.run_id,
                v.source,
                v.created_ms,
                v.storage_location,
            )
        )
    return FamilyState(
        models=tuple(
            RegisteredModel(name, tuple(sorted(vs, key=lambda v: -v.version)))
            for name, vs in sorted(by_model.items())
        ),
        alias=alias,
    )


def read_family(settings: Settings, client: MlflowClient | None = None) -> FamilyState:
    """Every model of the family with its versions, stages, tags and aliases.

    Reads go straight to the store when heartml.registry.store can (no MLflow import), else through
    the client.
    """
    from heartml.registry.store import StoreReadError, read_raw_family

    try:
        raw = read_raw_family(
            settings.mlflow_tracking_uri, settings.model_prefix, settings.registry_retries
        )
    except StoreReadError as exc:
        if (denied := access_denial(exc, settings, "read the registry")) is not None:
            raise denied from exc
        if exc.unreachable:
            raise unreachable_error(settings) from exc
        raise RegistryError(f"registry error: {exc}") from exc
    if raw is None:
        raw = call_store(
            settings,
            lambda: read_with_client(client or get_client(settings), settings.model_prefix),
            "read the registry",
        )
    return family_from_raw(raw, settings.champion_alias)


def _paged(fetch: Callable[[str | None], Any]) -> list[Any]:
    items: list[Any] = []
    token: str | None = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


# --------------------------------------------------------------------------------------------
# Writing what a plan says
# --------------------------------------------------------------------------------------------


def set_version_tags(client: MlflowClient, version: VersionInfo, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(version.name, str(version.version), key, value)


def transition(client: MlflowClient, version: VersionInfo, stage: str) -> str | None:
    """Move a version to a stage; a failure is returned as a warning, never raised.

    Stages only mirror the alias, so a failed transition (MLflow's stage API can fail with a
    YAML RepresenterError) cannot change who is champion; rerunning the same command repairs it.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stages are deprecated; we keep them in step
            client.transition_model_version_stage(
                version.name, str(version.version), stage, archive_existing_versions=False
            )
    except Exception as exc:
        return (
            f"could not move {version.ref} to stage {stage} ({type(exc).__name__}: "
            f"{one_line(exc, limit=200)}); the alias decides who is champion — rerun the same "
            "command to repair the stage"
        )
    return None


def apply_reconcile(
    settings: Settings, client: MlflowClient, plan: ReconcilePlan
) -> tuple[list[str], list[str]]:
    """Make the writes of a reconcile; returns what was archived and the stage warnings."""
    archived: list[str] = []
    warnings: list[str] = []
    alias = settings.champion_alias

    def _act() -> None:
        for other in plan.release_alias:
            client.delete_registered_model_alias(other.name, alias)
        if plan.claim_alias:
            client.set_registered_model_alias(plan.champion.name, alias, str(plan.champion.version))
        for loser in plan.archive:
            if (warning := transition(client, loser, ARCHIVED)) is not None:
                warnings.append(warning)
            else:
                archived.append(loser.ref)
        if (
            plan.to_production
            and (warning := transition(client, plan.champion, PRODUCTION)) is not None
        ):
            warnings.append(warning)

    call_store(settings, _act, f"move the alias '{alias}' and stages to {plan.champion.ref}")
    return archived, warnings


def apply_site_reconcile(settings: Settings, client: MlflowClient, plan: SiteReconcilePlan) -> None:
    """Take the site's alias from every holder but its champion (other models only: within
    one model an alias names one version)."""

    def _act() -> None:
        for other in plan.release_alias:
            client.delete_registered_model_alias(other.name, plan.alias)

    call_store(settings, _act, f"leave the alias '{plan.alias}' to {plan.champion.ref} alone")


def apply_claim(
    settings: Settings, client: MlflowClient, plan: PromotionPlan, claim: Claim
) -> None:
    """Write the claim on the target, then move the alias to it."""
    target = plan.target

    def _claim() -> None:
        # The claim (tags) comes first, then the alias: a reader that sees the alias always
        # sees the promoted_at that orders it. The alias leaves the old champion before it
        # reaches the new one, so even an interrupted promotion never leaves two holders;
        # in between, the old champion's Production stage still names it champion.
        if claim.clear_previous:  # a first promotion, or again after the family had none
            with contextlib.suppress(Exception):
                client.delete_model_version_tag(target.name, str(target.version), TAG_PREVIOUS)
        set_version_tags(client, target, dict(claim.tags))
        for holder in plan.release_alias:
            client.delete_registered_model_alias(holder.name, plan.alias)
        client.set_registered_model_alias(target.name, plan.alias, str(target.version))

    call_store(settings, _claim, f"promote {target.ref}")


def apply_best_tag(client: MlflowClient, plan: BestTagPlan) -> None:
    """Set ``best_model=false`` on every version the plan clears."""
    for other in plan.clear:
        client.set_model_version_tag(other.name, str(other.version), TAG_BEST, "false")


# --------------------------------------------------------------------------------------------
# The gate's evidence: read before a gated decision, recorded after it
# --------------------------------------------------------------------------------------------


def read_prediction_sets(
    client: MlflowClient, version: VersionInfo
) -> dict[str, PredictionSet] | str:
    """Every set of the ``predictions.csv`` a version's run logged, or why there is none (a
    version registered before heartml kept them, or by hand): never an exception but for an
    unreachable store or a refusal, so that the gate decides what a missing set means."""
    import tempfile

    from heartml.evidence.predictions import (
        PREDICTIONS_ARTIFACT,
        PredictionsError,
        read_predictions,
    )

    if not version.run_id:
        return "it was registered without a training run"
    with tempfile.TemporaryDirectory(prefix="heartml-gate-") as staging:
        try:
            path = client.download_artifacts(version.run_id, PREDICTIONS_ARTIFACT, staging)
            return read_predictions(Path(path).read_text(encoding="utf-8"))
        except PredictionsError as exc:
            return f"its {PREDICTIONS_ARTIFACT} is unreadable: {exc}"
        except Exception as exc:
            if is_unreachable(exc) or refused_status(exc) is not None:
                raise
            return f"run {version.run_id} has no readable {PREDICTIONS_ARTIFACT}"


def read_model_evidence(client: MlflowClient, version: VersionInfo) -> ModelEvidence:
    """A version's held-out and out-of-fold predictions (one per row), or why it has none."""
    from heartml.evidence.predictions import CV, HOLDOUT, PREDICTIONS_ARTIFACT
    from heartml.registry.gate import ModelEvidence

    sets = read_prediction_sets(client, version)
    if isinstance(sets, str):
        return ModelEvidence(version, problem=sets)
    if HOLDOUT not in sets or CV not in sets:
        return ModelEvidence(version, problem=f"its {PREDICTIONS_ARTIFACT} lacks {HOLDOUT} or {CV}")
    return ModelEvidence(version, holdout=sets[HOLDOUT].by_row(), out_of_fold=sets[CV].by_row())


def read_site_evidence(client: MlflowClient, version: VersionInfo, site: str) -> SiteEvidence:
    """A version's predictions on ``site``'s rows (its ``site:<site>`` set, one per row)."""
    from heartml.evidence.predictions import PREDICTIONS_ARTIFACT, SITE_BASE_PREFIX, SITE_PREFIX
    from heartml.registry.gate import SiteEvidence, ranking_of

    sets = read_prediction_sets(client, version)
    if isinstance(sets, str):
        return SiteEvidence(version, problem=sets)
    found = sets.get(SITE_PREFIX + site)
    if found is None:
        return SiteEvidence(
            version, problem=f"its {PREDICTIONS_ARTIFACT} has no {SITE_PREFIX}{site} set"
        )
    ranking = sets.get(SITE_BASE_PREFIX + site) if ranking_of(version) != version.ref else None
    return SiteEvidence(
        version, rows=found.by_row(), ranking=None if ranking is None else ranking.by_row()
    )


def read_site_gate_evidence(
    settings: Settings, client: MlflowClient, subjects: SiteSubjects
) -> SiteGateEvidence:
    """The site rows of both versions a gated site promotion judges."""
    from heartml.registry.plans import SiteGateEvidence

    site = subjects.site
    return call_store(
        settings,
        lambda: SiteGateEvidence(
            subjects,
            read_site_evidence(client, subjects.challenger, site),
            None
            if subjects.comparator is None
            else read_site_evidence(client, subjects.comparator, site),
        ),
    )


def read_gate_evidence(
    settings: Settings, client: MlflowClient, challenger: VersionInfo, champion: VersionInfo | None
) -> GateEvidence:
    """The evidence of both versions a gated promotion judges."""
    from heartml.registry.gate import GateEvidence

    return call_store(
        settings,
        lambda: GateEvidence(
            read_model_evidence(client, challenger),
            None if champion is None else read_model_evidence(client, champion),
        ),
    )


def record_gate(
    settings: Settings,
    client: MlflowClient,
    version: VersionInfo,
    record: dict[str, Any],
    tags: dict[str, str],
) -> None:
    """Leave a gated decision on the challenger: the JSON record in its run, the tags on its
    version, and its model card rendered again with the evidence."""
    from heartml.registry.gate import evidence_path

    def _record() -> None:
        if version.run_id:
            client.log_dict(version.run_id, record, evidence_path(str(record["at"])))
            rerender_card(client, version.run_id, record)
        set_version_tags(client, version, tags)

    call_store(settings, _record)


def rerender_card(client: MlflowClient, run_id: str, gate: dict[str, Any]) -> bool:
    """Render the run's model card again with a gate record; False when it has no card."""
    import json
    import tempfile

    from heartml.evidence.card import CARD_JSON, PLOTS_DIR, with_gate, write_card_files

    with tempfile.TemporaryDirectory(prefix="heartml-card-") as staging:
        root = Path(staging)
        try:
            card_path = Path(client.download_artifacts(run_id, CARD_JSON, str(root / "in")))
        except Exception as exc:
            if is_unreachable(exc) or refused_status(exc) is not None:
                raise
            return False
        plots: dict[str, bytes] = {}
        try:
            folder = Path(client.download_artifacts(run_id, PLOTS_DIR, str(root / "in")))
            plots = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
        except Exception as exc:
            if is_unreachable(exc) or refused_status(exc) is not None:
                raise
        card = with_gate(json.loads(card_path.read_text(encoding="utf-8")), gate)
        out = root / "out"
        out.mkdir()
        write_card_files(card, out, plots)
        client.log_artifacts(run_id, str(out))
    return True


def download_model_card(client: MlflowClient, version: VersionInfo, directory: Path) -> Path:
    """Copy a version's model card (Markdown, HTML, JSON) from its run into ``directory``."""
    from heartml.evidence.card import CARD_HTML, CARD_JSON, CARD_MD

    if not version.run_id:
        raise NotFoundError(f"{version.ref} was registered without a training run: no card")
    directory.mkdir(parents=True, exist_ok=True)
    for name in (CARD_MD, CARD_HTML, CARD_JSON):
        try:
            client.download_artifacts(version.run_id, name, str(directory))
        except Exception as exc:
            if is_unreachable(exc) or refused_status(exc) is not None:
                raise
            raise NotFoundError(
                f"{version.ref} has no {name} (registered before heartml wrote model cards; "
                "retrain to get one)"
            ) from exc
    return directory
