"""Live evidence, wired: what the prediction routes hand over after answering, and where it goes.

``LiveEvidence.record`` is the one call a prediction route makes once its answer is known. On
the request path it only copies the rows into the drift window and appends the answer to a
queue that the event loop writes, in its idle moments, as messages to the pipe of the
server's shadow process; the challenger's scoring and the log's writing happen there, in
another interpreter (:mod:`heartml.serve.feed`, :mod:`heartml.serve.giveway`,
:mod:`heartml.serve.shadow_process`)::

    request ──answer──> client
       └─ record ─> drift window (ring buffer)
                 └─> queue ─(when the loop idles)─> pipe ─> shadow process:
                        challenger scores ─> totals back to /metrics and /model
                                          └─> prediction log (JSONL files)

``follow`` runs after each look the model holder takes at the registry: the drift reference
becomes the served model's training profile and the shadow chooses its challenger again.

Rows answered by a site's champion go to that site's own drift window, compared with that
champion's reference profile (built from the site's rows when it was adapted), and to the log;
they are not shadowed: the challenger shadows the global champion's answers only.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from heartml.serve.drift import MIN_ROWS, DriftWindow
from heartml.serve.feed import ShadowFeed
from heartml.serve.livemetrics import LiveMetrics
from heartml.serve.predlog import SeqNumbers, write_reference
from heartml.serve.shadow import Shadow

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    from numpy.typing import NDArray
    from prometheus_client import CollectorRegistry

    from heartml.serve.holder import ServedModel
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

# Of the drain: how long a clean shutdown may spend writing what is still queued.
FLUSH_TIMEOUT_S = 5.0
# How often a background thread recomputes the drift gauges. /metrics and /model recompute
# them too; this keeps a worker's gauges fresh when another worker answers the scrape.
DRIFT_REFRESH_S = 5.0


class LiveEvidence:
    """The drift window, the shadowed challenger and the prediction log of one app."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.metrics = LiveMetrics(registry)
        self.drift = DriftWindow(settings.drift_window, self.metrics)
        self.log_dir = settings.prediction_log_dir
        self.seq = SeqNumbers()
        self.feed = ShadowFeed(
            self.metrics,
            self.log_dir,
            settings.prediction_log_max_bytes,
            settings.background_queue_size,
            settings.log_level,
        )
        self.shadow = Shadow(settings, self.metrics, self.feed)
        self._references: set[tuple[str, int]] = set()
        self._served: tuple[str, int] | None = None
        self._window = settings.drift_window
        # One window per site with a champion, replaced whole (a request reads it once).
        self.site_drift: Mapping[str, DriftWindow] = {}
        self._site_served: dict[str, tuple[str, int]] = {}
        self._stopping = threading.Event()
        self._refresher: threading.Thread | None = None

    # --- the request path ------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        served: ServedModel,
        rows: NDArray[np.float64],
        classes: list[int],
        probabilities: list[float],
    ) -> None:
        """Hand an answered request over (rows as received, NaN = missing). Never blocks."""
        if served.site is not None:
            window = self.site_drift.get(served.site)
            if window is not None:
                window.add(rows)
            shadowing = False  # the shadow compares with the global champion's answers
        else:
            self.drift.add(rows)
            shadowing = self.shadow.current is not None
        if not shadowing and self.log_dir is None:
            return
        feed = self.feed
        ref = served.ref
        model = feed.model_id(
            ref.identity,
            ref.name,
            ref.version,
            None if served.profile is None else served.profile.impute_values,
        )
        seq = -1 if self.log_dir is None else self.seq.take(len(rows))
        feed.record(request_id, model, rows, classes, probabilities, seq, shadowing)

    # --- following the served model (the holder's reload thread) ---------------------------

    def follow(self, served: ServedModel | None) -> None:
        key = None if served is None else (served.ref.name, served.ref.version)
        if key != self._served:
            self._served = key
            self.drift.use_profile(None if served is None else served.profile)
            if served is not None and served.profile is None:
                logger.warning(
                    "%s has no reference profile (trained before heartml stored one): "
                    "input drift is not measured",
                    served.ref.ref,
                )
            key = None if served is None else (served.ref.name, served.ref.version)
            if (
                self.log_dir is not None
                and served is not None
                and served.profile is not None
                and key not in self._references
            ):
                try:
                    write_reference(
                        self.log_dir, served.ref.name, served.ref.version, served.profile
                    )
                    self._references.add((served.ref.name, served.ref.version))
                except OSError as exc:
                    logger.warning("could not write the reference profile to the log: %s", exc)
        self.shadow.follow(served)

    def follow_sites(self, sites: Mapping[str, ServedModel]) -> None:
        """Each site champion's window compares with its own profile; a new champion for a
        site starts a new window (its reference changed), a site without one has none."""
        windows: dict[str, DriftWindow] = {}
        served: dict[str, tuple[str, int]] = {}
        for site, model in sites.items():
            key = (model.ref.name, model.ref.version)
            served[site] = key
            window = self.site_drift.get(site)
            if window is None or self._site_served.get(site) != key:
                window = DriftWindow(self._window, None)
                window.use_profile(model.profile)
            windows[site] = window
        self._site_served = served
        self.site_drift = windows

    def describe_site(self, site: str) -> dict[str, Any] | None:
        """What ``/model`` shows under ``sites[site].drift``; None without a window."""
        window = self.site_drift.get(site)
        if window is None:
            return None
        window.update()
        profile = window.profile
        return {
            "window": window.size,
            "rows": window.rows,
            "psi_from_rows": min(MIN_ROWS, window.size),
            "reference_rows": None if profile is None else profile.rows,
            "psi": dict(window.psi),
        }

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the drift thread, and the shadow process when there is a log to write (a
        challenger starts it when one is chosen)."""
        if self.log_dir is not None:
            try:
                self.feed.start()
            except OSError as exc:  # the answers go on; the log is dropped and counted
                logger.error("could not start the shadow process for the log: %s", exc)
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_drift, name="heartml-drift", daemon=True
            )
            self._refresher.start()

    def _refresh_drift(self) -> None:
        while not self._stopping.wait(DRIFT_REFRESH_S):
            try:
                self.drift.update()
            except Exception as exc:  # the gauges wait for the next round
                logger.warning("could not update the drift gauges: %s", exc)

    def close(self) -> None:
        """Score and write everything given, then stop (the app's shutdown, after the drain)."""
        self._stopping.set()
        self.feed.close(FLUSH_TIMEOUT_S)

    def describe(self) -> dict[str, Any]:
        """What ``/model`` shows under ``drift`` (the shadow has its own entry)."""
        self.drift.update()
        profile = self.drift.profile
        return {
            "window": self.drift.size,
            "rows": self.drift.rows,
            "psi_from_rows": min(MIN_ROWS, self.drift.size),
            "reference_rows": None if profile is None else profile.rows,
            "psi": dict(self.drift.psi),
        }

    def refresh(self) -> None:
        """Recompute the drift gauges and the queues' depths (before ``/metrics`` answers)."""
        self.drift.update()
        self.feed.report_drops()
        self.metrics.pending.labels("shadow").set(self.feed.pending("shadow"))
        if self.log_dir is not None:
            self.metrics.pending.labels("predlog").set(self.feed.pending("predlog"))
