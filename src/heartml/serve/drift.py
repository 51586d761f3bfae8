"""Input drift: a sliding window of the most recent rows, compared with the training profile.

Each answered row is copied into a ring buffer of ``HEARTML_DRIFT_WINDOW`` rows (a numpy row
assignment: about a microsecond on the request path). The comparison with the served model's
:class:`~heartml.data.profile.ReferenceProfile` is computed when ``/metrics`` is scraped, and every
tenth of a window in between, so the gauges follow traffic without costing each request.

PSI over a handful of rows is noise: the PSI gauges appear once the window holds
:data:`MIN_ROWS` rows (``heartml_drift_window_rows`` says how full it is). The missing ratio
is meaningful from the first row and is exported from the start.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from heartml.data.profile import ReferenceProfile, feature_stability, missing_ratios
from heartml.data.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from heartml.serve.livemetrics import LiveMetrics

MIN_ROWS = 200


class DriftWindow:
    """The last ``size`` rows answered, and their drift from the reference profile."""

    def __init__(self, size: int, metrics: LiveMetrics | None) -> None:
        # metrics None: a site's window, reported on /model only (the gauges are the global
        # champion's window).
        self.size = size
        self.metrics = metrics
        self._rows = np.full((size, len(FEATURE_NAMES)), np.nan)
        self._next = 0
        self._count = 0
        self._profile: ReferenceProfile | None = None
        self._lock = threading.Lock()
        self.psi: dict[str, float] = {}

    @property
    def rows(self) -> int:
        return self._count

    @property
    def profile(self) -> ReferenceProfile | None:
        return self._profile

    def use_profile(self, profile: ReferenceProfile | None) -> None:
        """Compare with this profile from now on (a new champion: its own training rows)."""
        with self._lock:
            self._profile = profile
        self.update()

    def add(self, rows: NDArray[np.float64]) -> None:
        """Copy ``rows`` into the window (a batch larger than the window keeps its tail)."""
        count = len(rows)
        if count == 0:
            return
        with self._lock:
            if count >= self.size:
                self._rows[:] = rows[-self.size :]
                self._next, self._count = 0, self.size
            else:
                end = self._next + count
                if end <= self.size:
                    self._rows[self._next : end] = rows
                else:
                    split = self.size - self._next
                    self._rows[self._next :] = rows[:split]
                    self._rows[: end - self.size] = rows[split:]
                self._next = end % self.size
                self._count = min(self._count + count, self.size)
        # The gauges are recomputed when they are read (/metrics, /model), never here: this
        # runs on the request path, and a PSI pass over every feature would land in the p99.

    def update(self) -> None:
        """Recompute the gauges from the window as it is now."""
        with self._lock:
            window = self._rows[: self._count].copy()
            profile = self._profile
        metrics = self.metrics
        if metrics is not None:
            metrics.window_rows.set(len(window))
            for name, ratio in zip(FEATURE_NAMES, missing_ratios(window), strict=True):
                metrics.missing_ratio.labels(name).set(float(ratio))
        if profile is None or len(window) < min(MIN_ROWS, self.size):
            self.psi = {}
            return
        self.psi = {}
        for name, value in zip(FEATURE_NAMES, feature_stability(profile, window), strict=True):
            if not math.isnan(value):
                self.psi[name] = value
                if metrics is not None:
                    metrics.psi.labels(name).set(value)
