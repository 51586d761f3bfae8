"""Registry stage: list, tag best, promote, auto-promote, roll back — over the whole family.

The family is every registered model whose name starts with ``Settings.model_prefix``. Its
*champion* is the one version holding the alias ``Settings.champion_alias``; the stage
``Production`` follows the alias. MLflow offers no transaction across models, so every write
here is followed by :func:`reconcile_family`, which demotes every claim but the winning one.

The winning claim is the one with the latest ``promoted_at`` tag (then name, then version), a
rule every process applies identically. Whatever interleaving two promotions take, the one that
reads last sees both claims and removes the loser, and no process ever removes the winner: the
family converges to exactly one champion, which is the only version in Production.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from heartml.settings import Settings
    from heartml.store import RawFamily

logger = logging.getLogger(__name__)

T = TypeVar("T")

PRODUCTION = "Production"
ARCHIVED = "Archived"
NO_STAGE = "None"

TAG_BEST = "best_model"
TAG_ROC_AUC = "roc_auc"
TAG_MODEL_TYPE = "model_type"
TAG_PROMOTED_AT = "promoted_at"
TAG_PROMOTED_BY = "promoted_by"
TAG_PREVIOUS = "previous_champion"
TAG_REASON = "promotion_reason"
EVENT_PREFIX = "promotion_event."


class RegistryError(Exception):
    """A registry operation failed; the message is one line for the user."""


class NotFoundError(RegistryError):
    """An unknown model or version, or no version tagged best."""


class StoreUnavailableError(RegistryError):
    """The tracking store cannot be reached."""


# --------------------------------------------------------------------------------------------
# What the registry holds
# --------------------------------------------------------------------------------------------


def utc_now_iso(timespec: str = "microseconds") -> str:
    """Now, in UTC, ISO-8601 with a ``Z``: the one timestamp format of tags, exports and /model."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A registered version and what travels with it: into ``model.json``, into ``/model``."""

    name: str
    version: int
    run_id: str
    roc_auc: float | None
    model_type: str | None
    promoted_at: str | None

    def card_fields(self) -> dict[str, Any]:
        """The card's own fields (not a subclass's), in order."""
        return {f.name: getattr(self, f.name) for f in fields(ModelCard)}


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One model version as heartml sees it."""

    name: str
    version: int
    stage: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str
    source: str
    created_ms: int

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def roc_auc(self) -> float | None:
        try:
            return float(self.tags[TAG_ROC_AUC])
        except (KeyError, ValueError):
            return None

    @property
    def model_type(self) -> str | None:
        return self.tags.get(TAG_MODEL_TYPE)

    @property
    def promoted_at(self) -> str | None:
        return self.tags.get(TAG_PROMOTED_AT)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            self.name, self.version, self.run_id, self.roc_auc, self.model_type, self.promoted_at
        )

    @property
    def is_best(self) -> bool:
        return self.tags.get(TAG_BEST, "").lower() == "true"

    @property
    def claim_key(self) -> tuple[str, str, int]:
        """Order of champion claims: the latest promotion wins; name and version break ties."""
        return self.promoted_at or "", self.name, self.version


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """One registered model of the family and its versions."""

    name: str
    versions: tuple[VersionInfo, ...]  # newest first


@dataclass(frozen=True, slots=True)
class FamilyState:
    """A snapshot of every model in the family and who holds the champion alias and stage."""

    models: tuple[RegisteredModel, ...]
    alias: str

    @property
    def versions(self) -> tuple[VersionInfo, ...]:
        return tuple(v for m in self.models for v in m.versions)

    @property
    def alias_holders(self) -> tuple[VersionInfo, ...]:
        return tuple(v for v in self.versions if self.alias in v.aliases)

    @property
    def in_production(self) -> tuple[VersionInfo, ...]:
        return tuple(v for v in self.versions if v.stage == PRODUCTION)

    @property
    def champion(self) -> VersionInfo | None:
        """The alias decides; without any alias holder, the (latest) Production version."""
        claims = self.alias_holders or self.in_production
        return max(claims, key=lambda v: v.claim_key) if claims else None

    @property
    def consistent(self) -> bool:
        """Exactly the champion holds the alias and the Production stage, nobody else."""
        champion = self.champion
        if champion is None:
            return True
        return self.alias_holders == (champion,) and self.in_production == (champion,)

    def disagreements(self) -> list[str]:
        """Human-readable reasons why the family is not consistent."""
        notes: list[str] = []
        champion = self.champion
        if champion is None:
            return notes
        if not self.alias_holders:
            notes.append(
                f"no version holds the '{self.alias}' alias; {champion.ref} is in "
                f"{PRODUCTION} (set by hand?) and is served"
            )
        for other in self.alias_holders:
            if other is not champion:
                notes.append(
                    f"{other.ref} also holds '{self.alias}' (set by hand, or an interrupted "
                    "promotion)"
                )
        if champion.stage != PRODUCTION:
            notes.append(f"champion {champion.ref} is in stage {champion.stage}, not {PRODUCTION}")
        for other in self.in_production:
            if other is not champion:
                notes.append(
                    f"{other.ref} is in {PRODUCTION} but is not the champion (moved by hand?)"
                )
        return notes

    def find(self, name: str, version: int | None = None) -> VersionInfo:
        model = next((m for m in self.models if m.name == name), None)
        if model is None:
            raise NotFoundError(f"unknown model {name!r}")
        if not model.versions:
            raise NotFoundError(f"model {name!r} has no versions")
        if version is None:
            return model.versions[0]
        found = next((v for v in model.versions if v.version == version), None)
        if found is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return found

    def best_tagged(self) -> VersionInfo:
        tagged = [v for v in self.versions if v.is_best]
        if not tagged:
            raise NotFoundError(f"no version tagged {TAG_BEST}=true (run `heartml train` first)")
        return max(tagged, key=lambda v: (v.roc_auc or 0.0, v.created_ms, v.name, v.version))


class PromotionOutcome(StrEnum):
    PROMOTED = "promoted"
    ALREADY_CHAMPION = "already_champion"
    REPAIRED = "repaired"
    REFUSED = "refused"
    DRY_RUN = "dry_run"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class PromotionResult:
    outcome: PromotionOutcome
    target: VersionInfo
    previous: VersionInfo | None
    message: str
    archived: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return self.outcome is PromotionOutcome.REFUSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "name": self.target.name,
            "version": self.target.version,
            "roc_auc": self.target.roc_auc,
            "previous": self.previous.ref if self.previous else None,
            "message": self.message,
            "archived": list(self.archived),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: str
    name: str
    version: int
    previous: str | None
    reason: str
    by: str
    roc_auc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


# --------------------------------------------------------------------------------------------
# Talking to MLflow
# --------------------------------------------------------------------------------------------


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow at the store; bound its HTTP retries so a dead server fails in seconds."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.registry_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def get_client(settings: Settings) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    configure_mlflow(settings)
    return MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )


def _describe_failure(exc: BaseException, settings: Settings) -> RegistryError:
    """One line for any failure of the store: missing thing, unreachable store, or other."""
    text = " ".join(str(exc).split())
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(text.split(". ")[0])
    unreachable = (
        "Max retries exceeded",
        "Connection refused",
        "Failed to establish",
        "unable to open database",
        "timed out",
        "Connection aborted",
        "RemoteDisconnected",
    )
    if any(marker in text for marker in unreachable) or isinstance(exc, ConnectionError):
        return StoreUnavailableError(
            f"tracking store {settings.mlflow_tracking_uri} is unreachable; "
            "is the MLflow server running?"
        )
    return RegistryError(f"registry error: {text[:300]}")


def call_store(settings: Settings, action: Callable[[], T]) -> T:
    """Run one registry call, turning every store failure into a one-line RegistryError.

    HTTP-level retries of transient errors (connection refused, 429, 5xx) are done by MLflow's
    client, bounded by :func:`configure_mlflow`.
    """
    try:
        return action()
    except RegistryError:
        raise
    except Exception as exc:
        raise _describe_failure(exc, settings) from exc


def ensure_experiment(settings: Settings) -> str:
    """The training experiment's id; created with its artifacts next to a local store."""
    client = get_client(settings)

    def _ensure() -> str:
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

    return call_store(settings, _ensure)


def read_with_client(client: MlflowClient, prefix: str) -> RawFamily:
    """The family as MlflowClient sees it (the slow, general path; also the tests' reference).

    ``search_model_versions`` leaves ``aliases`` empty on SQL stores, so aliases are read from
    the registered models, which carry them.
    """
    from heartml.store import RawFamily, RawVersion

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
            VersionInfo(v.name, v.version, v.stage, held, v.tags, v.run_id, v.source, v.created_ms)
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

    Reads go straight to the store when heartml.store can (no MLflow import), else through
    the client.
    """
    from heartml.store import StoreReadError, read_raw_family

    try:
        raw = read_raw_family(
            settings.mlflow_tracking_uri, settings.model_prefix, settings.registry_retries
        )
    except StoreReadError as exc:
        if exc.unreachable:
            raise StoreUnavailableError(
                f"tracking store {settings.mlflow_tracking_uri} is unreachable; "
                "is the MLflow server running?"
            ) from exc
        raise RegistryError(f"registry error: {exc}") from exc
    if raw is None:
        active = client or get_client(settings)
        raw = call_store(settings, lambda: read_with_client(active, settings.model_prefix))
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
# Tagging after training
# --------------------------------------------------------------------------------------------


def tag_candidate_version(
    settings: Settings, name: str, version: str, roc_auc: float, model_type: str
) -> None:
    """Every registered candidate carries its held-out score and algorithm."""
    client = get_client(settings)

    def _tag() -> None:
        client.set_model_version_tag(name, version, TAG_ROC_AUC, f"{roc_auc:.4f}")
        client.set_model_version_tag(name, version, TAG_MODEL_TYPE, model_type)

    call_store(settings, _tag)


def tag_best_version(
    settings: Settings, name: str, version: str, roc_auc: float, model_type: str
) -> None:
    """Tag this version ``best_model=true`` and every other one in the family ``false``.

    Like promotion, it converges under concurrency: each trainer marks its own, then clears
    every marked version but the newest, so the last one to look leaves exactly one.
    """
    client = get_client(settings)

    def _tag() -> None:
        tag_candidate_version(settings, name, version, roc_auc, model_type)
        client.set_model_version_tag(name, version, TAG_BEST, "true")
        marked = [v for v in read_family(settings, client).versions if v.is_best]
        if marked:
            newest = max(marked, key=lambda v: (v.created_ms, v.name, v.version))
            _untag_best_except(client, marked, newest.ref)

    call_store(settings, _tag)


def _untag_best_except(client: MlflowClient, marked: list[VersionInfo], keep: str) -> None:
    """Set ``best_model=false`` on every marked version but ``keep`` (a ``name/version``)."""
    for other in marked:
        if other.ref != keep:
            client.set_model_version_tag(other.name, str(other.version), TAG_BEST, "false")


# --------------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------------


def whoami() -> str:
    """Who promotes: HEARTML_PROMOTED_BY (Jenkins sets its build tag), else user@host."""
    if explicit := os.environ.get("HEARTML_PROMOTED_BY"):
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_gate(
    settings: Settings, challenger: VersionInfo, champion: VersionInfo | None
) -> str | None:
    """Why the challenger may not replace the champion, or None when it may."""
    score = challenger.roc_auc
    if score is None:
        return f"{challenger.ref} has no {TAG_ROC_AUC} tag to judge it by"
    if score < settings.min_roc_auc:
        return (
            f"{challenger.ref} roc_auc {score:.4f} is below the minimum {settings.min_roc_auc:.4f}"
        )
    if champion is not None and champion.roc_auc is not None:
        floor = champion.roc_auc - settings.promotion_tolerance
        if score < floor:
            return (
                f"{challenger.ref} roc_auc {score:.4f} is worse than champion {champion.ref} "
                f"roc_auc {champion.roc_auc:.4f} (tolerance {settings.promotion_tolerance:.4f})"
            )
    return None


def _transition(client: MlflowClient, version: VersionInfo, stage: str) -> str | None:
    """Move a version to a stage; a failure is returned as a warning, never raised.

    Stages only mirror the alias, so a failed transition (the seed's known issue) cannot
    change who is champion; rerunning the same command repairs it.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stages are deprecated; we keep them in step
            client.transition_model_version_stage(
                version.name, str(version.version), stage, archive_existing_versions=False
            )
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        return (
            f"could not move {version.ref} to stage {stage} ({type(exc).__name__}: {first}); "
            f"the alias decides who is champion — rerun the same command to repair the stage"
        )
    return None


RECONCILE_PASSES = 3


def reconcile_family(
    settings: Settings, client: MlflowClient
) -> tuple[FamilyState, list[str], list[str]]:
    """Demote every claim but the winning one; put the winner in Production.

    Reads, acts, and reads again until the family is consistent (a few passes at most): a
    concurrent promotion may have moved things between the read and the writes, and the pass
    after it repairs whatever a stale read got wrong. Returns the last state read, what was
    archived, and warnings of stage moves that failed.
    """
    archived: list[str] = []
    warnings: list[str] = []
    state = read_family(settings, client)
    for _ in range(RECONCILE_PASSES):
        champion = state.champion
        if champion is None or state.consistent:
            break
        warnings = []
        _reconcile_once(settings, client, state, champion, archived, warnings)
        state = read_family(settings, client)
    return state, sorted(set(archived)), warnings


def _reconcile_once(
    settings: Settings,
    client: MlflowClient,
    state: FamilyState,
    champion: VersionInfo,
    archived: list[str],
    warnings: list[str],
) -> None:
    def _act() -> None:
        for other in state.alias_holders:
            if other is not champion:
                client.delete_registered_model_alias(other.name, settings.champion_alias)
        if settings.champion_alias not in champion.aliases:
            client.set_registered_model_alias(
                champion.name, settings.champion_alias, str(champion.version)
            )
        losers = {v.ref: v for v in (*state.alias_holders, *state.in_production)}
        losers.pop(champion.ref, None)
        for loser in losers.values():
            if loser.stage == ARCHIVED:
                continue
            if (warning := _transition(client, loser, ARCHIVED)) is not None:
                warnings.append(warning)
            else:
                archived.append(loser.ref)
        if (
            champion.stage != PRODUCTION
            and (warning := _transition(client, champion, PRODUCTION)) is not None
        ):
            warnings.append(warning)

    call_store(settings, _act)


def promote_version(
    settings: Settings,
    name: str,
    version: int | None = None,
    *,
    reason: str = "manual promotion",
    gated: bool = False,
    force: bool = False,
    dry_run: bool = False,
    state: FamilyState | None = None,
) -> PromotionResult:
    """Make NAME/VERSION (latest when None) the champion of the family.

    Gated promotions (``--auto`` and training) refuse a challenger below the gate unless
    ``force``. Promoting the champion again is a no-op that still repairs its stage.
    """
    state = state or read_family(settings)
    target = state.find(name, version)
    current = state.champion

    if current is not None and current.ref == target.ref:
        if state.consistent:
            return PromotionResult(
                PromotionOutcome.ALREADY_CHAMPION,
                target,
                current,
                f"{target.ref} is already champion",
            )
        if dry_run:
            notes = "; ".join(state.disagreements())
            return PromotionResult(
                PromotionOutcome.DRY_RUN, target, current, f"would repair the family: {notes}"
            )
        _, repaired, repair_warnings = reconcile_family(settings, get_client(settings))
        return PromotionResult(
            PromotionOutcome.REPAIRED,
            target,
            current,
            f"{target.ref} is champion; repaired the family",
            tuple(repaired),
            tuple(repair_warnings),
        )

    if gated and not force and (why := check_gate(settings, target, current)) is not None:
        return PromotionResult(
            PromotionOutcome.REFUSED, target, current, f"refused by the gate: {why}"
        )

    if dry_run:
        to_archive = sorted(
            {v.ref for v in (*state.alias_holders, *state.in_production)} - {target.ref}
        )
        archive_note = f"; would archive {', '.join(to_archive)}" if to_archive else ""
        return PromotionResult(
            PromotionOutcome.DRY_RUN,
            target,
            current,
            f"would promote {target.ref} to {PRODUCTION} (alias '{settings.champion_alias}')"
            + archive_note,
            tuple(to_archive),
        )

    client = get_client(settings)
    when = utc_now_iso()
    event = {
        "at": when,
        "by": whoami(),
        "previous": current.ref if current else None,
        "reason": reason,
        "roc_auc": target.roc_auc,
    }

    def _claim() -> None:
        # The claim (tags) comes first, then the alias: a reader that sees the alias always
        # sees the promoted_at that orders it. The alias leaves the old champion before it
        # reaches the new one, so even an interrupted promotion never leaves two holders;
        # in between, the old champion's Production stage still names it champion.
        tags = {
            TAG_PROMOTED_AT: when,
            TAG_PROMOTED_BY: event["by"],
            TAG_REASON: reason,
            EVENT_PREFIX + when.replace(":", "").replace("-", "").replace(".", ""): json.dumps(
                event, sort_keys=True
            ),
        }
        if event["previous"]:
            tags[TAG_PREVIOUS] = event["previous"]
        else:  # a first promotion, or again after the family had no champion
            with contextlib.suppress(Exception):
                client.delete_model_version_tag(target.name, str(target.version), TAG_PREVIOUS)
        for key, value in tags.items():
            client.set_model_version_tag(target.name, str(target.version), key, str(value))
        for holder in state.alias_holders:
            if holder.name != target.name:  # within one model, setting the alias moves it
                client.delete_registered_model_alias(holder.name, settings.champion_alias)
        client.set_registered_model_alias(target.name, settings.champion_alias, str(target.version))

    call_store(settings, _claim)
    warnings: list[str] = []
    if (warning := _transition(client, target, PRODUCTION)) is not None:
        warnings.append(warning)
    final, archived, more = reconcile_family(settings, client)
    warnings.extend(more)
    winner = final.champion
    if winner is not None and winner.ref != target.ref:
        return PromotionResult(
            PromotionOutcome.SUPERSEDED,
            target,
            current,
            f"{target.ref} was promoted but a concurrent promotion of {winner.ref} is newer "
            "and won",
            tuple(archived),
            tuple(warnings),
        )
    return PromotionResult(
        PromotionOutcome.PROMOTED,
        target,
        current,
        f"promoted {target.ref} to {PRODUCTION}",
        tuple(archived),
        tuple(warnings),
    )


def promote_best(
    settings: Settings,
    *,
    reason: str = "auto-promotion of the best model",
    force: bool = False,
    dry_run: bool = False,
    state: FamilyState | None = None,
) -> PromotionResult:
    """Find the version tagged ``best_model=true`` and promote it through the gate."""
    state = state or read_family(settings)
    best = state.best_tagged()
    return promote_version(
        settings,
        best.name,
        best.version,
        reason=reason,
        gated=True,
        force=force,
        dry_run=dry_run,
        state=state,
    )


def promotion_history(settings: Settings) -> list[HistoryEntry]:
    """Every promotion recorded in the family's version tags, newest first."""
    state = read_family(settings)
    entries: list[HistoryEntry] = []
    for version in state.versions:
        for key, value in version.tags.items():
            if not key.startswith(EVENT_PREFIX):
                continue
            try:
                event = json.loads(value)
            except ValueError:
                continue
            entries.append(
                HistoryEntry(
                    at=str(event.get("at", "")),
                    name=version.name,
                    version=version.version,
                    previous=event.get("previous"),
                    reason=str(event.get("reason", "")),
                    by=str(event.get("by", "")),
                    roc_auc=event.get("roc_auc"),
                )
            )
    return sorted(entries, key=lambda e: (e.at, e.name, e.version), reverse=True)


def rollback(settings: Settings, *, dry_run: bool = False) -> PromotionResult:
    """Make the champion's predecessor the champion again (no gate: an operator's decision)."""
    state = read_family(settings)
    current = state.champion
    if current is None:
        raise NotFoundError("there is no champion to roll back from")
    previous = current.tags.get(TAG_PREVIOUS, "")
    if not previous or "/" not in previous:
        raise NotFoundError(f"champion {current.ref} has no previous champion to roll back to")
    name, _, version = previous.rpartition("/")
    result = promote_version(
        settings,
        name,
        int(version),
        reason=f"rollback from {current.ref}",
        dry_run=dry_run,
        state=state,
    )
    if result.outcome is PromotionOutcome.PROMOTED:
        # The restored version becomes the one tagged best, so the next `--auto` (every
        # pipeline run) confirms the rollback instead of promoting the rolled-back version
        # again; a new training session tags its own winner as usual.
        client = get_client(settings)

        def _move_best() -> None:
            client.set_model_version_tag(name, version, TAG_BEST, "true")
            marked = [v for v in read_family(settings, client).versions if v.is_best]
            _untag_best_except(client, marked, result.target.ref)

        call_store(settings, _move_best)
    return result
