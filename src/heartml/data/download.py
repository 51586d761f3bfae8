"""Download the UCI files: sha256-checked, atomic, from the UCI site or a mirror."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from heartml.errors import UserError

if TYPE_CHECKING:
    from heartml.settings import Settings

logger = logging.getLogger(__name__)


class DataError(UserError):
    """A download, checksum or validation failure, with a one-line message for the user."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One UCI file and the digest it must have."""

    site: str
    filename: str
    sha256: str
    rows: int


# From ../shared/data/heart-disease/SOURCE.md: digests of the UCI originals.
SITE_FILES: dict[str, SourceFile] = {
    f.site: f
    for f in (
        SourceFile(
            "cleveland",
            "processed.cleveland.data",
            "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
            303,
        ),
        SourceFile(
            "hungarian",
            "processed.hungarian.data",
            "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
            294,
        ),
        SourceFile(
            "switzerland",
            "processed.switzerland.data",
            "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
            123,
        ),
        SourceFile(
            "va",
            "processed.va.data",
            "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
            200,
        ),
    )
}


DEFAULT_SITES: tuple[str, ...] = ("cleveland",)


ALL_SITES: tuple[str, ...] = tuple(SITE_FILES)


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A verified file in the cache and whether this call had to fetch it."""

    site: str
    path: Path
    sha256: str
    downloaded: bool


@dataclass(frozen=True, slots=True)
class DownloadResult:
    files: tuple[FetchedFile, ...]

    @property
    def fingerprint(self) -> str:
        """One digest for the whole selection: the lineage tag a training run carries."""
        return hashlib.sha256("".join(f.sha256 for f in self.files).encode()).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def select_sites(sites: Iterable[str]) -> tuple[SourceFile, ...]:
    chosen = []
    for site in sites:
        if site not in SITE_FILES:
            raise DataError(f"unknown site {site!r}; choose from {', '.join(ALL_SITES)}")
        chosen.append(SITE_FILES[site])
    return tuple(chosen)


def _is_local(source: str) -> bool:
    return urlparse(source).scheme in ("", "file")


def _local_path(source: str) -> Path:
    parsed = urlparse(source)
    return Path(parsed.path if parsed.scheme == "file" else source)


def _fetch_to(source: str, filename: str, target: Path, timeout_s: float) -> None:
    """Copy or download ``source/filename`` into ``target`` (a temporary file)."""
    if _is_local(source):
        base = _local_path(source)
        if not base.is_dir():
            raise DataError(f"{filename}: source {source!r} is not a directory or URL")
        origin = base / filename
        if not origin.is_file():
            raise DataError(f"{filename}: not found in source {source}")
        shutil.copyfile(origin, target)
        return
    url = f"{source.rstrip('/')}/{filename}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{filename}: {url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{filename}: cannot reach {url} ({reason})") from exc


def fetch_file(spec: SourceFile, settings: Settings, *, force: bool = False) -> FetchedFile:
    """Return a verified copy of one file in the cache, fetching it only when needed.

    The file is written to a temporary name in the cache directory, checked, then renamed into
    place, so the cache never holds a half-written or unverified file under a real name.
    """
    cache = settings.data_dir
    final = cache / spec.filename
    if final.is_file() and not force:
        if sha256_of(final) == spec.sha256:
            return FetchedFile(spec.site, final, spec.sha256, downloaded=False)
        logger.warning("%s: cached copy fails its checksum; fetching it again", spec.filename)

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp makes it private; the cache is ordinary readable data
    try:
        _fetch_to(settings.data_source, spec.filename, tmp, settings.download_timeout_s)
        actual = sha256_of(tmp)
        if actual != spec.sha256:
            raise DataError(
                f"{spec.filename}: checksum mismatch from {settings.data_source} "
                f"(expected sha256 {spec.sha256[:12]}…, got {actual[:12]}…)"
            )
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        # A cached copy that failed its checksum must not survive a failed re-fetch either.
        if final.is_file() and sha256_of(final) != spec.sha256:
            final.unlink()
        raise
    logger.info("fetched %s", spec.filename)
    return FetchedFile(spec.site, final, spec.sha256, downloaded=True)


def download_data(
    settings: Settings, sites: Iterable[str] = DEFAULT_SITES, *, force: bool = False
) -> DownloadResult:
    """Fetch (or reuse) every selected site's file, each verified against its sha256."""
    return DownloadResult(tuple(fetch_file(s, settings, force=force) for s in select_sites(sites)))


def verified_files(settings: Settings, sites: Iterable[str] = DEFAULT_SITES) -> DownloadResult:
    """The cached files, re-checked: training never reads a file that fails its checksum."""
    files = []
    for spec in select_sites(sites):
        path = settings.data_dir / spec.filename
        if not path.is_file():
            raise DataError(f"{spec.filename}: not downloaded yet (run `heartml data download`)")
        if sha256_of(path) != spec.sha256:
            raise DataError(
                f"{spec.filename}: cached copy fails its checksum; run `heartml data download` "
                "to fetch it again"
            )
        files.append(FetchedFile(spec.site, path, spec.sha256, downloaded=False))
    return DownloadResult(tuple(files))
