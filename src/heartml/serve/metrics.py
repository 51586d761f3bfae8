"""Prometheus metrics of the API; alerts and the Grafana dashboard use exactly these names.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` must name an empty directory shared
by the workers (``heartml serve --workers N`` makes one): every worker writes its samples
there and ``GET /metrics``, whichever worker answers it, reports the sum over all of them.
Gauges then aggregate over live workers: ``heartml_model_loaded`` is the minimum (0 while any
worker has no model), ``heartml_model_version`` and ``heartml_model_info`` the maximum.
"""

from __future__ import annotations

import os
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
            "Predictions served, by predicted class (a batch counts each row).",
            ["prediction"],
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
        for prediction in ("0", "1"):
            self.predictions.labels(prediction)
        self.model_loaded.set(0)
        self.model_version.set(0)
        self._served: tuple[str, str, str] | None = None
        self._negative = self.predictions.labels("0")
        self._positive = self.predictions.labels("1")

    def count_predictions(self, negative: int, positive: int) -> None:
        if negative:
            self._negative.inc(negative)
        if positive:
            self._positive.inc(positive)

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
