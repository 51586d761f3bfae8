"""Prometheus metrics of the live evidence: the shadow, the prediction log and input drift.

The names are a contract (alerts, the Grafana dashboard and runbooks use them):
``heartml_shadow_predictions_total``, ``heartml_shadow_disagreements_total``,
``heartml_shadow_abs_diff``, ``heartml_shadow_restarts_total``,
``heartml_background_dropped_total{queue}``,
``heartml_feature_psi{feature}`` and ``heartml_feature_missing_ratio{feature}``.

The shadow's and the log's figures are counted by the shadow process and added here by the
server's thread that reads its totals (:mod:`heartml.serve.feed`).

With several workers each keeps its own window of recent requests: the drift gauges then
report the largest value over the live workers (the one that would page someone).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from heartml.serve.frames import ABS_DIFF_BUCKETS

QUEUES = ("shadow", "predlog")


class LiveMetrics:
    """The evidence metrics, registered in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "heartml_background_dropped_total",
            "Answers not shadowed (queue=shadow) or not logged (queue=predlog) because the "
            "shadow process was behind (its pipe full) or had died.",
            ["queue"],
            registry=registry,
        )
        self.shadow_predictions = Counter(
            "heartml_shadow_predictions_total",
            "Rows the shadowed challenger scored (off the request path).",
            registry=registry,
        )
        self.shadow_disagreements = Counter(
            "heartml_shadow_disagreements_total",
            "Rows where the challenger's predicted class differs from the champion's.",
            registry=registry,
        )
        self.shadow_abs_diff = Histogram(
            "heartml_shadow_abs_diff",
            "Absolute difference between the champion's and the challenger's P(disease).",
            buckets=ABS_DIFF_BUCKETS,
            registry=registry,
        )
        self.shadow_errors = Counter(
            "heartml_shadow_errors_total",
            "Batches the challenger failed to score (the answers were not affected).",
            registry=registry,
        )
        self.shadow_restarts = Counter(
            "heartml_shadow_restarts_total",
            "Shadow processes (the challenger's scoring and the prediction log) that died and "
            "were started again (the answers were not affected).",
            registry=registry,
        )
        self.shadow_info = Gauge(
            "heartml_shadow_info",
            "1 for the challenger being shadowed, labelled with its name and version.",
            ["name", "version"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.pending = Gauge(
            "heartml_background_pending",
            "Answers given to the shadow process and not yet handled, by queue (shadow, "
            "predlog): at the last scrape before a crash, how many prediction-log records it "
            "can have cost at most.",
            ["queue"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.log_written = Counter(
            "heartml_prediction_log_records_total",
            "Prediction-log records written to disk.",
            registry=registry,
        )
        self.psi = Gauge(
            "heartml_feature_psi",
            "Population stability index of the feature over the recent-request window, "
            "against the served model's training profile (> 0.2: the inputs have moved).",
            ["feature"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.missing_ratio = Gauge(
            "heartml_feature_missing_ratio",
            "Share of the recent-request window in which the feature was missing (null).",
            ["feature"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.window_rows = Gauge(
            "heartml_drift_window_rows",
            "Rows in the recent-request window that the drift gauges are computed over.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        for name in QUEUES:
            self.dropped.labels(name)
        self.window_rows.set(0)
        self._shadowed: tuple[str, str] | None = None

    def show_shadow(self, name: str | None, version: int | None) -> None:
        """Point ``heartml_shadow_info`` at the challenger now shadowed (or at none)."""
        if self._shadowed is not None:
            self.shadow_info.labels(*self._shadowed).set(0)
        self._shadowed = None if name is None else (name, str(version))
        if self._shadowed is not None:
            self.shadow_info.labels(*self._shadowed).set(1)

    def add_abs_diffs(self, counts: list[int], total: float) -> None:
        """Add what the shadow process observed since its last totals to the histogram."""
        add_observations(self.shadow_abs_diff, counts, total)


def add_observations(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add ``counts`` observations per bucket (the last: +Inf) summing to ``total``.

    The shadow process counts its differences per bucket with numpy, in its own process;
    here they are added to the server's histogram at the cost of one call per bucket.
    prometheus_client has no public bulk observe: this increments its bucket counters,
    checked against ``observe`` by tests/unit/test_serve_evidence.py.
    """
    if not any(counts):
        return
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)
