"""Which registered version scores a cohort, and its files.

``--model`` names it: ``champion`` (the family's champion, as the server serves it),
``champion-SITE`` (the version holding that site's alias) or ``NAME/VERSION``. ``--site SITE``
with the champion picks ``champion-SITE`` when a version holds it, else the global champion,
as the server answers a request that names its site. :func:`choose_model` decides on a
snapshot of the family (pure); :func:`resolve_model` reads the snapshot and
:func:`download_model` fetches the version's MLflow model directory, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heartml.data.sites import check_site
from heartml.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from heartml.registry import FamilyState, VersionInfo
    from heartml.settings import Settings

# The tag an adapted version carries (the site it was adapted for).
SITE_TAG = "site"
_VERSIONED = re.compile(r"^(?P<name>[^/\s]+)/(?P<version>[0-9]+)$")


class ModelChoiceError(UserError):
    """An unknown model, version or alias, or a malformed ``--model``; one line."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The version that scores, and why it was chosen (``champion``, ``champion-va``, ``N/V``)."""

    version: VersionInfo
    chosen_as: str

    @property
    def site_adapted(self) -> bool:
        return bool(self.version.tags.get(SITE_TAG))


def _holder(family: FamilyState, alias: str) -> VersionInfo | None:
    holders = [v for v in family.versions if alias in v.aliases]
    return max(holders, key=lambda v: v.claim_key) if holders else None


def choose_model(family: FamilyState, spec: str, site: str | None = None) -> ModelChoice:
    """The version ``spec`` names in ``family`` (see the module's docstring)."""
    champion_alias = family.alias
    if site is not None:
        check_site(site)
        if spec != champion_alias:
            raise ModelChoiceError(
                f"--site picks a site's champion: use it with --model {champion_alias}, "
                f"not {spec!r}"
            )
        site_champion = _holder(family, f"{champion_alias}-{site}")
        if site_champion is not None:
            return ModelChoice(site_champion, f"{champion_alias}-{site}")
    if spec == champion_alias:
        champion = family.champion
        if champion is None:
            raise ModelChoiceError(
                f"no champion in the {', '.join(m.name for m in family.models) or 'empty'} "
                "family: train and promote first"
            )
        return ModelChoice(champion, champion_alias)
    if spec.startswith(f"{champion_alias}-"):
        check_site(spec.removeprefix(f"{champion_alias}-"))
        holder = _holder(family, spec)
        if holder is None:
            raise ModelChoiceError(f"no version holds the alias {spec!r}")
        return ModelChoice(holder, spec)
    match = _VERSIONED.match(spec)
    if match is None:
        raise ModelChoiceError(
            f"--model {spec!r}: use {champion_alias}, {champion_alias}-SITE or NAME/VERSION"
        )
    from heartml.registry import NotFoundError

    try:
        version = family.find(match["name"], int(match["version"]))
    except NotFoundError as exc:
        raise ModelChoiceError(str(exc)) from exc
    return ModelChoice(version, spec)


def resolve_model(settings: Settings, spec: str, site: str | None = None) -> ModelChoice:
    """:func:`choose_model` on the registry as it is now."""
    from heartml.registry import read_family

    return choose_model(read_family(settings), spec, site)


def download_model(settings: Settings, choice: ModelChoice, directory: Path) -> Path:
    """The chosen version's MLflow model directory, downloaded under ``directory``.

    MLflow is imported in a child process that does only this: in the scorer it would stay
    resident (150 MB) for the whole run, next to the batches. A folder on this machine is read
    where it is, without MLflow.
    """
    import multiprocessing

    from heartml.registry.store import local_model_dir

    if (in_place := local_model_dir(choice.version.storage_location)) is not None:
        return in_place

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        path: str = pool.apply(_download, (settings, choice.version.uri, str(directory)))
    from pathlib import Path

    return Path(path)


def _download(settings: Settings, uri: str, directory: str) -> str:
    import mlflow.artifacts

    from heartml.registry import call_store, configure_mlflow

    configure_mlflow(settings)
    path: str = call_store(
        settings,
        lambda: mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=directory),
        f"download {uri}",
    )
    return path
