"""The shadowed challenger: a second model that scores every answered row, off the request path.

Which model, by ``HEARTML_SHADOW``:

* ``auto`` (default): the family's ``best_model=true`` version when it is not the champion, a
  retrain the gate refused or one waiting for a person; none when the best is the champion.
  A server of an exported model has no registry to ask, so ``auto`` shadows nothing there.
* ``NAME/VERSION``: that version (read from the registry, also by a server of an export).
* ``off``: none.

The champion answers alone. The challenger is chosen and loaded here, in the model holder's
reload thread, then handed (pickled, once) to the shadow process
(:mod:`heartml.serve.shadow_process`, fed by :mod:`heartml.serve.feed`), which scores the
global champion's answers with it in batches, counts agreement and logs each answer with the
challenger's probability. When the process is behind, the answers are not shadowed (counted
in ``heartml_background_dropped_total{queue="shadow"}``).

The challenger is chosen again after every look the model holder takes at the registry, so it
follows promotions: promote the challenger and it becomes the champion, and ``auto`` shadows
the next best-tagged version, if any. Agreement on ``/model`` is counted per pair of champion
and challenger; the Prometheus counters run on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from heartml.errors import one_line
from heartml.registry import utc_now_iso
from heartml.serve.frames import PairStats
from heartml.serve.holder import ModelRef, ServedModel, freeze_heap
from heartml.settings import AUTO, OFF, parse_shadow_setting

if TYPE_CHECKING:
    from collections.abc import Callable

    from heartml.registry import FamilyState, VersionInfo
    from heartml.serve.feed import ShadowFeed
    from heartml.serve.holder import LoadedModel
    from heartml.serve.livemetrics import LiveMetrics
    from heartml.settings import Settings

logger = logging.getLogger(__name__)


def choose_challenger(
    state: FamilyState, setting: str, champion: tuple[str, int] | None
) -> tuple[VersionInfo | None, str]:
    """The version to shadow under ``setting`` while ``champion`` serves, and why (pure)."""
    from heartml.registry import NotFoundError

    wanted = parse_shadow_setting(setting)
    if wanted == OFF:
        return None, "shadowing is off (HEARTML_SHADOW=off)"
    if wanted == AUTO:
        try:
            best = state.best_tagged()
        except NotFoundError:
            return None, "no version is tagged best_model=true"
        if (best.name, best.version) == champion:
            return None, f"the best-tagged version {best.ref} is the champion"
        return best, f"{best.ref} is tagged best_model=true and is not the champion"
    if isinstance(wanted, str):
        raise ValueError(f"unknown HEARTML_SHADOW value {wanted!r}")
    name, version = wanted
    if (name, version) == champion:
        return None, f"{name}/{version} (HEARTML_SHADOW) is the champion"
    try:
        return state.find(name, version), f"{name}/{version} is named by HEARTML_SHADOW"
    except NotFoundError as exc:
        return None, f"HEARTML_SHADOW names {name}/{version}: {exc}"


class Shadow:
    """The challenger being shadowed and how it is chosen; the shadow process scores with it."""

    def __init__(
        self,
        settings: Settings,
        metrics: LiveMetrics,
        feed: ShadowFeed,
        load: Callable[[ModelRef], LoadedModel] | None = None,
        read_state: Callable[[], FamilyState] | None = None,
    ) -> None:
        self.settings = settings
        self.setting = settings.shadow
        self.metrics = metrics
        self.feed = feed
        # Replaceable (tests): how a challenger is loaded, how the family is read.
        self.loader = load or self._load_from_registry
        self.state_reader = read_state or self._read_registry
        self.current: ServedModel | None = None
        self.reason = "not chosen yet"
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return self.setting != OFF

    # --- following the registry (the holder's reload thread) -------------------------------

    def follow(self, champion: ServedModel | None) -> None:
        """Choose and load the challenger for ``champion``. Never raises."""
        if not self.enabled:
            self.reason = "shadowing is off (HEARTML_SHADOW=off)"
            return
        if self.setting == AUTO and self.settings.model_dir is not None:
            self.reason = (
                "serving an export: HEARTML_SHADOW=auto needs the registry (name a version)"
            )
            return
        served = None if champion is None else (champion.ref.name, champion.ref.version)
        try:
            chosen, self.reason = choose_challenger(self.state_reader(), self.setting, served)
        except Exception as exc:
            self.last_error = f"could not read the registry: {one_line(exc)}"
            return
        current = self.current
        if chosen is None:
            self._swap(None, champion)
            if current is not None:
                logger.info("no longer shadowing %s: %s", current.ref.ref, self.reason)
                current = None  # held here, the dropped challenger would survive the collection
                freeze_heap(replacing=True)
            return
        if current is not None and (current.ref.name, current.ref.version) == (
            chosen.name,
            chosen.version,
        ):
            self._swap(current, champion)  # same challenger; the champion may be new
            return
        ref = ModelRef(
            **chosen.summary.summary_fields(),
            source="registry",
            uri=chosen.uri,
            location=chosen.storage_location,
        )
        try:
            loaded = self.loader(ref)
        except Exception as exc:
            self.last_error = f"could not load challenger {ref.ref}: {one_line(exc)}"
            logger.warning(self.last_error)
            return
        self.last_error = None
        served_model = ServedModel(
            ref=ref,
            engine=loaded.engine,
            loaded_at=utc_now_iso(timespec="milliseconds"),
            profile=loaded.profile,
        )
        logger.info("shadowing %s (%s)", ref.ref, self.reason)
        self._swap(served_model, champion)
        replacing, current = current is not None, None  # see above
        freeze_heap(replacing=replacing)

    def _swap(self, challenger: ServedModel | None, champion: ServedModel | None) -> None:
        if challenger is not None and not self.feed.running:
            try:
                self.feed.start()
            except OSError as exc:
                self.last_error = f"could not start the shadow process: {one_line(exc)}"
                logger.warning(self.last_error)
                return
        pair = self.feed.pair
        if challenger is None or champion is None:
            pair = None
        elif pair is None or (pair.champion, pair.challenger) != (
            champion.ref.ref,
            challenger.ref.ref,
        ):
            pair = PairStats(champion.ref.ref, challenger.ref.ref, utc_now_iso(timespec="seconds"))
        if challenger is None:
            self.feed.use(None, None, None)
        else:
            self.feed.use(challenger.ref.ref, challenger.engine, pair)
        # After the process has it: the answers are flagged for shadowing from now on.
        self.current = challenger
        if challenger is None:
            self.metrics.show_shadow(None, None)
        else:
            self.metrics.show_shadow(challenger.ref.name, challenger.ref.version)

    def _read_registry(self) -> FamilyState:
        from heartml.registry import read_family

        return read_family(self.settings)

    def _load_from_registry(self, ref: ModelRef) -> LoadedModel:
        from heartml.serve.holder import RegistrySource

        return RegistrySource(self.settings).load_model(ref)

    def describe(self) -> dict[str, Any]:
        """What ``/model`` shows under ``shadow``."""
        challenger = self.current
        pair = self.feed.pair if challenger is not None else None
        feed = self.feed
        return {
            "setting": self.setting,
            "challenger": None
            if challenger is None
            else {
                **challenger.ref.summary_fields(),
                "uri": challenger.ref.uri,
                "engine": challenger.engine.name,
                "loaded_at": challenger.loaded_at,
            },
            "reason": self.reason,
            "last_error": self.last_error or feed.totals.last_error,
            "agreement": None if pair is None else pair.as_dict(),
            "dropped": feed.dropped["shadow"],
            "pending": feed.pending("shadow"),
            "process": {"pid": feed.pid if feed.running else None, "restarts": feed.restarts},
        }


__all__ = ["AUTO", "OFF", "PairStats", "Shadow", "choose_challenger", "parse_shadow_setting"]
