"""Prometheus metrics of the API; alerts and the Grafana dashboard use exactly these names.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` must name an empty directory shared
by the workers (``heartml serve --workers N`` makes one): every worker writes its samples
there and ``GET /metrics``, whichever worker answers it, reports the sum over all of them.
Gauges then aggregate over live workers: ``heartml_model_loaded`` is the minimum (0 while any
worker has no model), ``heartml_model_version`` and ``heartml_model_info`` the maximum.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from heartml.data.download import ALL_SITES

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Paths are labelled by route, never by the raw path, so a scanner cannot create series.
KNOWN_ENDPOINTS = frozenset(
    {
        "/health",
        "/ready",
        "/model",
        "/predict",
        "/predict/batch",
        "/schema",
        "/metrics",
        "/admin/reload",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)


# The site a prediction was asked for, as a label: the UCI sites by name, `none` when the
# request named none (and the deployment has no default), any other site `other`, so that a
# client cannot create series by naming sites.
NO_SITE = "none"
OTHER_SITE = "other"
SITE_LABELS = (*ALL_SITES, NO_SITE, OTHER_SITE)
_KNOWN_SITES = frozenset(ALL_SITES)


def site_label(site: str | None) -> str:
    if site is None:
        return NO_SITE
    return site if site in _KNOWN_SITES else OTHER_SITE


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class ServeMetrics:
    """Every metric of one app, in its own registry (tests build many apps in one process)."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        # The *_created series double every counter and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry
        self.requests = Counter(
            "heartml_http_requests_total",
            "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "heartml_http_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "heartml_predictions_total",
            "Predictions served, by predicted class and by the site the request named (a known "
            "UCI site, none, or other; a batch counts each row).",
            ["prediction", "site"],
            registry=r,
        )
        self.model_info = Gauge(
            "heartml_model_info",
            "1 for the model being served, labelled with its name, version and source.",
            ["name", "version", "source"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_version = Gauge(
            "heartml_model_version",
            "Registered version number of the model being served (0: none).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_loaded = Gauge(
            "heartml_model_loaded",
            "1 when a model is loaded and predictions can be served.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.site_model_info = Gauge(
            "heartml_site_model_info",
            "1 for each site's champion being served (alias champion-SITE), labelled with the "
            "site (known UCI site or other), its name, version and whether it was adapted for "
            "the site. Sites without one are answered by heartml_model_info's model.",
            ["site", "name", "version", "adapted"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "heartml_model_reloads_total",
            "Model loads (the first one included), by result: success or failure.",
            ["result"],
            registry=r,
        )
        self.registry_checks = Counter(
            "heartml_registry_checks_total",
            "Looks at the registry (or the model directory) for the champion, by result: ok, "
            "refused (the registry refused the serving account: 401 or 403) or error.",
            ["result"],
            registry=r,
        )
        # Pre-create the label sets dashboards expect, so they read 0 rather than nothing.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for result in ("ok", "refused", "error"):
            self.registry_checks.labels(result)
        self._by_site = {
            site: (self.predictions.labels("0", site), self.predictions.labels("1", site))
            for site in SITE_LABELS
        }
        self.model_loaded.set(0)
        self.model_version.set(0)
        self._served: tuple[str, str, str] | None = None
        self._sites_shown: set[tuple[str, str, str, str]] = set()

    def count_predictions(self, negative: int, positive: int, site: str = NO_SITE) -> None:
        """Count a request's predictions under its site label (see :func:`site_label`)."""
        counters = self._by_site[site]
        if negative:
            counters[0].inc(negative)
        if positive:
            counters[1].inc(positive)

    def show_sites(self, sites: Mapping[str, tuple[str, int, bool]]) -> None:
        """Point the site gauges at the site champions now served (site: name, version,
        adapted)."""
        shown = {
            (site_label(site), name, str(version), str(adapted).lower())
            for site, (name, version, adapted) in sites.items()
        }
        for gone in self._sites_shown - shown:
            if multiprocess_dir():
                self.site_model_info.labels(*gone).set(0)
            else:
                self.site_model_info.remove(*gone)
        for labels in shown:
            self.site_model_info.labels(*labels).set(1)
        self._sites_shown = shown

    def show_model(self, name: str, version: int, source: str) -> None:
        """Point the model gauges at the model now served."""
        labels = (name, str(version), source)
        if self._served is not None and self._served != labels:
            if multiprocess_dir():
                self.model_info.labels(*self._served).set(0)  # files cannot forget a series
            else:
                self.model_info.remove(*self._served)
        self.model_info.labels(*labels).set(1)
        self.model_version.set(version)
        self.model_loaded.set(1)
        self._served = labels

    def exposition(self) -> tuple[bytes, str]:
        """The text format, summed over workers in multiprocess mode."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
