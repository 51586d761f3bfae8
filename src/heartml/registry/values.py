"""What the registry holds, as plain values: versions, the family, promotion results.

The family is every registered model whose name starts with ``Settings.model_prefix``. Its
*champion* is the one version holding the alias ``Settings.champion_alias``; the stage
``Production`` follows the alias. A *site champion* is the one version holding the alias
``<champion alias>-<site>`` (``champion-va``): aliases only, since a version has one stage and
the global champion's stage must not move. Nothing here talks to MLflow:
:mod:`heartml.registry.mlflow_io` reads these values from the store, :mod:`heartml.registry.plans`
decides on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from heartml.errors import UserError

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
# What `heartml adapt` writes on an adapted version (the site contract).
TAG_SITE = "site"
TAG_ADAPTED_FROM = "adapted_from"
TAG_ADAPTATION_METHOD = "adaptation_method"
# A site promotion's claim, one pair per site: a version may serve several sites (a base model
# a person chose for two of them), and each site's claims are ordered on their own.
SITE_PROMOTED_AT = "site_promoted_at."
SITE_PREVIOUS = "site_previous_champion."
NO_PREVIOUS = "none"


def site_alias(alias: str, site: str) -> str:
    """The alias of ``site``'s champion: ``champion-va`` for the alias ``champion``."""
    return f"{alias}-{site}"


class RegistryError(UserError):
    """A registry operation failed; the message is one line for the user."""


class NotFoundError(RegistryError):
    """An unknown model or version, or no version tagged best."""


class StoreUnavailableError(RegistryError):
    """The tracking store cannot be reached."""


class BrokenStoreError(RegistryError):
    """The store is damaged (a schema migration left half-done); the message says the repair."""


def utc_now_iso(timespec: str = "microseconds") -> str:
    """Now, in UTC, ISO-8601 with a ``Z``: the one timestamp format of tags, exports and /model."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """A registered version and what travels with it: into ``model.json``, into ``/model``."""

    name: str
    version: int
    run_id: str
    roc_auc: float | None
    model_type: str | None
    promoted_at: str | None

    def summary_fields(self) -> dict[str, Any]:
        """The summary's own fields (not a subclass's), in order."""
        return {f.name: getattr(self, f.name) for f in fields(VersionSummary)}


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
    # Where the files are, when the store says ("" when read through MLflow's client): a hint
    # where to read them, not part of what the version is.
    storage_location: str = field(default="", compare=False)

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
    def summary(self) -> VersionSummary:
        return VersionSummary(
            self.name, self.version, self.run_id, self.roc_auc, self.model_type, self.promoted_at
        )

    @property
    def is_best(self) -> bool:
        return self.tags.get(TAG_BEST, "").lower() == "true"

    @property
    def claim_key(self) -> tuple[str, str, int]:
        """Order of champion claims: the latest promotion wins; name and version break ties."""
        return self.promoted_at or "", self.name, self.version

    @property
    def adapted_for(self) -> str | None:
        """The site this version was adapted for (``heartml adapt``), None for a trained one."""
        if TAG_ADAPTED_FROM not in self.tags:
            return None
        return self.tags.get(TAG_SITE) or None

    def site_promoted_at(self, site: str) -> str | None:
        return self.tags.get(SITE_PROMOTED_AT + site)

    def site_claim_key(self, site: str) -> tuple[str, str, int]:
        """Order of ``site``'s champion claims, as :attr:`claim_key` for the global one."""
        return self.site_promoted_at(site) or "", self.name, self.version


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

    # --- site champions: the alias alone decides (no stage) ------------------------------

    def site_alias(self, site: str) -> str:
        return site_alias(self.alias, site)

    def site_holders(self, site: str) -> tuple[VersionInfo, ...]:
        alias = self.site_alias(site)
        return tuple(v for v in self.versions if alias in v.aliases)

    def site_champion(self, site: str) -> VersionInfo | None:
        """The latest claim among the holders of ``champion-<site>``; None: the site has none
        (it is served by the global champion)."""
        holders = self.site_holders(site)
        return max(holders, key=lambda v: v.site_claim_key(site)) if holders else None

    def sites(self) -> tuple[str, ...]:
        """Every well-formed site some version holds the champion alias of, sorted."""
        from heartml.data.sites import SiteNameError, check_site

        prefix = f"{self.alias}-"
        found: set[str] = set()
        for v in self.versions:
            for alias in v.aliases:
                if alias.startswith(prefix):
                    try:
                        found.add(check_site(alias.removeprefix(prefix)))
                    except SiteNameError:
                        continue  # an alias set by hand that names no site: not ours
        return tuple(sorted(found))

    def site_champions(self) -> dict[str, VersionInfo]:
        """Each site's champion, by site."""
        champions = {site: self.site_champion(site) for site in self.sites()}
        return {site: v for site, v in champions.items() if v is not None}

    def site_disagreements(self) -> list[str]:
        """Sites whose alias more than one version holds (an interrupted site promotion)."""
        notes = []
        for site in self.sites():
            champion = self.site_champion(site)
            for other in self.site_holders(site):
                if champion is not None and other is not champion:
                    notes.append(
                        f"{other.ref} also holds '{self.site_alias(site)}' (set by hand, or an "
                        "interrupted site promotion)"
                    )
        return notes

    def latest_adapted(self, site: str) -> VersionInfo:
        """The newest version adapted for ``site``: what ``promote --auto --site`` judges."""
        adapted = [v for v in self.versions if v.adapted_for == site]
        if not adapted:
            raise NotFoundError(
                f"no version is adapted for site '{site}' (run `heartml adapt NAME --site "
                f"{site}` first)"
            )
        return max(adapted, key=lambda v: (v.created_ms, v.name, v.version))

    def find(
        self, name: str, version: int | None = None, *, site: str | None = None
    ) -> VersionInfo:
        """NAME/VERSION; without VERSION, NAME's latest version for ``site``: adapted for
        it, else not adapted at all (a version adapted for one site is never the latest of
        another, nor of the family)."""
        model = next((m for m in self.models if m.name == name), None)
        if model is None:
            raise NotFoundError(f"unknown model {name!r}")
        if not model.versions:
            raise NotFoundError(f"model {name!r} has no versions")
        if version is None:
            for wanted in dict.fromkeys((site, None)):
                found = next((v for v in model.versions if v.adapted_for == wanted), None)
                if found is not None:
                    return found
            raise NotFoundError(f"model {name!r} has no version that is not adapted for a site")
        found = next((v for v in model.versions if v.version == version), None)
        if found is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return found

    def best_tagged(self) -> VersionInfo:
        tagged = [v for v in self.versions if v.is_best]
        if not tagged:
            raise NotFoundError(f"no version tagged {TAG_BEST}=true (run `heartml train` first)")
        return max(tagged, key=lambda v: (v.roc_auc or 0.0, v.created_ms, v.name, v.version))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One promotion, read back from the event tag it wrote."""

    at: str
    name: str
    version: int
    previous: str | None
    reason: str
    by: str
    roc_auc: float | None = None
    authenticated: bool | None = None  # None: recorded before heartml noted it
    gate: dict[str, Any] | None = None  # the verdict it rested on (None: not gated)
    promoted: bool = True  # False: an attempt the gate refused (the champion did not change)
    site: str | None = None  # the site whose champion it changed; None: the global champion

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
