"""The model being served, and how it follows the registry.

``ModelHolder.current`` is one reference to an immutable :class:`ServedModel`. A request reads
it once and uses that object to the end, so swapping the reference (atomic in CPython) changes
what *new* requests get while requests in flight finish on the model they started with.

Loading never happens on a request: a background thread looks for the champion every
``reload_interval_s`` seconds (``POST /admin/reload`` asks for a look at once), loads a new
champion beside the old one (its inference engine checked, see :mod:`heartml.model.engine`),
and only then swaps. A failed look or
load leaves the old model serving and is recorded for ``/model`` and ``/metrics``. Until a
first model is loaded (the tracking server down at start, say) the thread retries with
exponential back-off.

Site champions (alias ``champion-<site>``) are followed the same way, by the same thread and
look: ``ModelHolder.sites`` is one reference to an immutable mapping from site to served
model, swapped whole, so a request resolves its site with one dictionary look-up and never
waits for the registry. A site with no champion is answered by the global champion.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol

from heartml.errors import one_line
from heartml.registry import AccessDeniedError, VersionSummary, utc_now_iso

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from heartml.data.profile import ReferenceProfile
    from heartml.model.engine import Engine
    from heartml.model.explain import Explainer
    from heartml.serve.metrics import ServeMetrics
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0

SourceKind = Literal["registry", "directory"]


@dataclass(frozen=True, slots=True)
class ModelRef(VersionSummary):
    """Which model a source names: its summary, and where it is loaded from."""

    source: SourceKind
    uri: str
    stamp: str = ""  # changes when a directory is exported again over the same version
    adapted_for: str | None = None  # the site it was adapted for (`heartml adapt`), if any
    location: str = ""  # where the registry keeps the version's files, when it says

    @property
    def identity(self) -> tuple[str, int, str]:
        return self.name, self.version, self.stamp

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model's engine and, when training stored them, its reference profile (for drift) and
    its explainer (for ``explain=true``)."""

    engine: Engine
    profile: ReferenceProfile | None = None
    explainer: Explainer | None = None


@dataclass(frozen=True, slots=True)
class ServedModel:
    ref: ModelRef
    engine: Engine
    loaded_at: str
    profile: ReferenceProfile | None = None
    explainer: Explainer | None = None
    site: str | None = None  # the site it is the champion of; None: the global champion

    @property
    def site_adapted(self) -> bool:
        """It answers as a site's champion and was adapted for that site."""
        return self.site is not None and self.ref.adapted_for == self.site


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    result: Literal["reloaded", "unchanged", "failed"]
    message: str


class ModelSource(Protocol):
    """Where models come from: the registry's champion, or an exported directory."""

    kind: SourceKind

    def describe(self) -> str: ...

    def resolve(self) -> ModelRef | None:
        """The model that should be served now (None: there is none); raises on failure."""
        ...

    def resolve_sites(self) -> dict[str, ModelRef]:
        """Each site's champion, by site (empty: none); raises on failure."""
        ...

    def load(self, ref: ModelRef) -> Engine | LoadedModel:
        """The inference engine of ``ref``, ready to serve (with its profile, when known)."""
        ...


class RegistrySource:
    """The family's champion, resolved by :mod:`heartml.registry`'s rule."""

    kind: SourceKind = "registry"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> str:
        return (
            f"the champion of the {self.settings.model_prefix}* family "
            f"in {self.settings.mlflow_tracking_uri}"
        )

    def resolve(self) -> ModelRef | None:
        from heartml.registry import read_family

        champion = read_family(self.settings).champion
        if champion is None:
            return None
        return ModelRef(
            **champion.summary.summary_fields(),
            source="registry",
            uri=champion.uri,
            location=champion.storage_location,
        )

    def resolve_sites(self) -> dict[str, ModelRef]:
        from heartml.registry import read_family

        found: dict[str, ModelRef] = {}
        for site, version in read_family(self.settings).site_champions().items():
            fields = {
                **version.summary.summary_fields(),
                "promoted_at": version.site_promoted_at(site),
            }
            found[site] = ModelRef(
                **fields,
                source="registry",
                uri=version.uri,
                adapted_for=version.adapted_for,
                location=version.storage_location,
            )
        return found

    def load(self, ref: ModelRef) -> LoadedModel:
        return self.load_model(ref)

    def load_model(self, ref: ModelRef) -> LoadedModel:
        import tempfile

        from heartml.registry.store import local_model_dir

        if (in_place := local_model_dir(ref.location)) is not None:
            return load_model_dir(in_place)

        import mlflow.artifacts

        from heartml.registry import configure_mlflow
        from heartml.registry.mlflow_io import access_denial

        configure_mlflow(self.settings)
        # The engine holds what it needs in memory: the downloaded files can go.
        with tempfile.TemporaryDirectory(prefix="heartml-model-") as local:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=local)
            except Exception as exc:
                denied = access_denial(exc, self.settings, f"download {ref.ref}")
                if denied is None:
                    raise
                raise denied from exc
            return load_model_dir(Path(path))


class DirectorySource:
    """A model written by ``heartml export``: no tracking server involved."""

    kind: SourceKind = "directory"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"the exported model in {self.directory}"

    def resolve(self) -> ModelRef | None:
        from heartml.model.export import read_export_info

        info = read_export_info(self.directory)
        return ModelRef(
            **info.summary_fields(),
            source="directory",
            uri=str(self.directory.resolve()),
            stamp=info.exported_at,
        )

    def resolve_sites(self) -> dict[str, ModelRef]:
        return {}  # an export holds the global champion only

    def load(self, ref: ModelRef) -> LoadedModel:
        return load_model_dir(Path(ref.uri))


def load_model_dir(model_dir: Path) -> LoadedModel:
    """The engine of an MLflow model directory and the profile and explainer stored with it."""
    from heartml.data.profile import read_profile
    from heartml.model.engine import load_engine
    from heartml.model.explain import load_explainer

    engine = load_engine(model_dir)
    try:
        explainer = load_explainer(model_dir, engine)
    except Exception as exc:  # numpy, ONNX Runtime and YAML raise their own types
        # The answers do not depend on it: serve without explanations (explain=true is a 409).
        logger.warning("%s: explanations unavailable (%s)", model_dir, one_line(exc, 200))
        explainer = None
    return LoadedModel(engine, read_profile(model_dir), explainer)


def source_for(settings: Settings) -> ModelSource:
    if settings.model_dir is not None:
        return DirectorySource(settings.model_dir)
    return RegistrySource(settings)


def freeze_heap(*, replacing: bool) -> None:
    """Move everything alive now (MLflow, scikit-learn, the model) out of the GC's sight.

    Otherwise every full collection walks those millions of objects: a 100+ ms pause, every
    few seconds under load, that lands on some unlucky request's latency. When a loaded model
    is ``replacing`` another (or one was dropped), unfreezing first lets this one collection
    reclaim the old model's cycles; a first load has none to reclaim, and its collection walks
    only what is not frozen yet: everything, in the server's process. (A process that builds
    many apps, as the tests do, keeps the frozen cycles of the apps it has dropped.)
    """
    if replacing:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    """The served model, the background thread that replaces it, and what happened so far."""

    def __init__(
        self,
        source: ModelSource,
        metrics: ServeMetrics,
        reload_interval_s: float,
        on_check: Callable[[ServedModel | None], None] | None = None,
        on_sites: Callable[[Mapping[str, ServedModel]], None] | None = None,
    ) -> None:
        self.source = source
        # Called after every look, in the same thread, with the model then served: how the
        # shadowed challenger and the drift reference follow promotions.
        self.on_check = on_check
        self.on_sites = on_sites  # the same, for the site champions (their drift windows)
        self.metrics = metrics
        self.reload_interval_s = reload_interval_s
        self._current: ServedModel | None = None
        self._sites: Mapping[str, ServedModel] = MappingProxyType({})
        self.site_check: str | None = None  # outcome of the last look at the site champions
        self._check_lock = threading.Lock()
        # Set by a look that loaded a model (True: one was dropped): the heap to freeze after it.
        self._to_freeze: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set once the first look at the source is over, loaded or not.
        self.first_check_done = threading.Event()
        self.last_check_at: str | None = None
        self.last_check: str | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
        # The registry's refusal of the account (401/403) at the last look, if it refused:
        # the model loaded before keeps serving, and /ready and /model say why it is not
        # following promotions.
        self.registry_refusal: str | None = None

    # --- what requests see -----------------------------------------------------------------

    @property
    def current(self) -> ServedModel | None:
        return self._current

    @property
    def sites(self) -> Mapping[str, ServedModel]:
        return self._sites

    def serving(self, site: str | None) -> ServedModel | None:
        """What answers a request for ``site``: its champion, else the global champion.
        One look-up in the mapping read once: no registry, no lock."""
        if site is not None:
            champion = self._sites.get(site)
            if champion is not None:
                return champion
        return self._current

    def warning(self) -> str | None:
        """Why a ready server is not following the registry (its account is refused)."""
        served = self._current
        if served is None or self.registry_refusal is None:
            return None
        return (
            f"{self.registry_refusal}; promotions are not followed, still serving {served.ref.ref}"
        )

    def not_ready_reason(self) -> str:
        if self._current is not None:
            return ""
        if self.last_error:
            return f"no model loaded yet: {self.last_error}"
        if self.last_check:
            return f"no model loaded yet: {self.last_check}"
        return f"loading {self.source.describe()}"

    # --- following the source --------------------------------------------------------------

    def check(self) -> CheckOutcome:
        """Look at the source once; load and swap in a different model. Never raises."""
        with self._check_lock:
            outcome = self._check()
            if outcome.result != "failed" or self._current is not None:
                self._check_sites()
            # Once both looks are over, when nothing of theirs still holds a dropped model.
            if self._to_freeze is not None:
                replacing, self._to_freeze = self._to_freeze, None
                freeze_heap(replacing=replacing)
            if self.on_check is not None:
                self.on_check(self._current)
            if self.on_sites is not None:
                self.on_sites(self._sites)
            self.first_check_done.set()
            return outcome

    def _check(self) -> CheckOutcome:
        self.last_check_at = utc_now_iso(timespec="milliseconds")
        try:
            ref = self.source.resolve()
        except Exception as exc:
            refused = isinstance(exc, AccessDeniedError)
            self.metrics.registry_checks.labels("refused" if refused else "error").inc()
            self.registry_refusal = one_line(exc) if refused else None
            message = f"could not read {self.source.describe()}: {one_line(exc)}"
            return self._failed(message, check=True)
        self.metrics.registry_checks.labels("ok").inc()
        self.registry_refusal = None

        current = self._current
        if ref is None:
            self.last_check = f"there is no model to serve: {self.source.describe()} is empty"
            if current is not None:
                self.last_check += f"; still serving {current.ref.ref}"
            return CheckOutcome("unchanged", self.last_check)
        if current is not None and current.ref.identity == ref.identity:
            if current.ref != ref:  # same model, new metadata (promoted again, say)
                self._current = replace(current, ref=ref)
            self.last_check = f"{ref.ref} is still the model to serve"
            return CheckOutcome("unchanged", self.last_check)

        started = time.perf_counter()
        try:
            loaded = self.source.load(ref)
        except Exception as exc:
            if isinstance(exc, AccessDeniedError):
                self.registry_refusal = one_line(exc)
            keeping = f"; still serving {current.ref.ref}" if current else ""
            return self._failed(f"could not load {ref.ref}: {one_line(exc)}{keeping}")

        if not isinstance(loaded, LoadedModel):
            loaded = LoadedModel(loaded)
        engine = loaded.engine
        previous = current.ref.ref if current else None
        message = (
            f"loaded {ref.ref} from {ref.source} in {time.perf_counter() - started:.2f} s "
            f"(engine: {engine.name})" + (f", replacing {previous}" if previous else "")
        )
        # The bookkeeping first: whoever sees the new model in /model also sees its reload.
        self.reloads += 1
        self.last_error = None
        self.last_check = message
        self.metrics.reloads.labels("success").inc()
        self.metrics.show_model(ref.name, ref.version, ref.source)
        self._current = ServedModel(
            ref=ref,
            engine=engine,
            loaded_at=utc_now_iso(timespec="milliseconds"),
            profile=loaded.profile,
            explainer=loaded.explainer,
        )
        self._to_freeze = current is not None
        logger.info(message)
        return CheckOutcome("reloaded", message)

    def _check_sites(self) -> None:
        """Follow the site champions: load what changed (an engine already loaded for the
        same version is shared), keep a site's old model when its new one fails to load, drop
        a site whose alias is gone (its requests go to the global champion)."""
        try:
            refs = self.source.resolve_sites()
        except Exception as exc:
            self.site_check = f"could not read the site champions: {one_line(exc)}"
            return
        old = self._sites
        loaded = [m for m in (self._current, *old.values()) if m is not None]
        sites: dict[str, ServedModel] = {}
        notes: list[str] = []
        for site, ref in sorted(refs.items()):
            have = old.get(site)
            if have is not None and have.ref.identity == ref.identity:
                sites[site] = have if have.ref == ref else replace(have, ref=ref)
                continue
            same = next((m for m in loaded if m.ref.identity == ref.identity), None)
            if same is not None:
                sites[site] = ServedModel(
                    ref, same.engine, same.loaded_at, same.profile, same.explainer, site
                )
                notes.append(f"{site}: {ref.ref}")
                continue
            try:
                model = self.source.load(ref)
            except Exception as exc:
                keeping = f"; still serving {have.ref.ref}" if have is not None else ""
                notes.append(f"{site}: could not load {ref.ref}: {one_line(exc)}{keeping}")
                self.failed_reloads += 1
                self.metrics.reloads.labels("failure").inc()
                if have is not None:
                    sites[site] = have
                continue
            if not isinstance(model, LoadedModel):
                model = LoadedModel(model)
            served = ServedModel(
                ref,
                model.engine,
                utc_now_iso(timespec="milliseconds"),
                model.profile,
                model.explainer,
                site,
            )
            sites[site] = served
            loaded.append(served)
            self.reloads += 1
            self.metrics.reloads.labels("success").inc()
            notes.append(f"{site}: loaded {ref.ref}")
        notes += [
            f"{site}: no champion, the global champion answers" for site in old if site not in refs
        ]
        if notes or sites.keys() != old.keys():
            logger.info("site champions: %s", "; ".join(notes))
            self.metrics.show_sites(
                {site: (m.ref.name, m.ref.version, m.site_adapted) for site, m in sites.items()}
            )
        self._sites = MappingProxyType(sites)
        if notes:
            self.site_check = "; ".join(notes)
        elif self.site_check is None or self.site_check.startswith("could not"):
            self.site_check = f"{len(sites)} site champion(s), unchanged"
        if sites.keys() != old.keys() or any(sites[k] is not old.get(k) for k in sites):
            engines = {id(m.engine) for m in (self._current, *sites.values()) if m is not None}
            dropped = any(id(m.engine) not in engines for m in old.values())
            self._to_freeze = bool(self._to_freeze) or dropped

    def _failed(self, message: str, *, check: bool = False) -> CheckOutcome:
        if message != self.last_error:
            logger.warning(message)
        self.last_error = message
        self.last_check = message
        if not check:
            self.failed_reloads += 1
            self.metrics.reloads.labels("failure").inc()
        return CheckOutcome("failed", message)

    # --- the background thread -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartml-model-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        delay = FIRST_RETRY_S
        ceiling = min(MAX_RETRY_S, self.reload_interval_s or MAX_RETRY_S)
        while not self._stop.is_set():
            self.check()
            if self._current is None:
                # Not serving yet: retry soon, backing off while the source stays down.
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, max(ceiling, FIRST_RETRY_S))
                continue
            if self.reload_interval_s <= 0:
                return  # loaded, and periodic checks are off: only /admin/reload from now on
            if self._stop.wait(self.reload_interval_s):
                return
