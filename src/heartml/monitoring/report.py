"""The monitor report: what the prediction log says, as one self-contained HTML page.

``heartml monitor --log DIR [--labels FILE] [--out FILE]`` reads the JSON-lines files the
server wrote and the training profiles beside them (:mod:`heartml.monitoring.log`), computes
what to show (:mod:`heartml.monitoring.summary`), and draws here:

* PSI per feature over time: the log cut into consecutive windows of ``window`` rows, each
  compared with the profile of the model that answered it (the alert's threshold drawn);
* recent vs reference distributions: the last window's bin shares against training's;
* the probability distribution per model version (champions and the shadowed challenger);
* with a labels file (``request_id,outcome`` and optionally ``row``; outcome 0/1): live
  ROC-AUC with DeLong's 95 % interval, calibration slope and intercept, and a calibration
  curve for the champion and the shadow side by side, on the same labelled rows.

The figures are matplotlib, embedded as PNG; the page is the Jinja2 template
``templates/report.html.j2`` (autoescaped), filled by :func:`report_view`.
"""

from __future__ import annotations

import base64
import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.schema import FEATURE_NAMES
from heartml.monitoring.summary import PSI_ALERT, Summary

if TYPE_CHECKING:
    from jinja2 import Environment
    from matplotlib.figure import Figure

    from heartml.monitoring.cohort import CohortSummary

TIME = "%Y-%m-%d %H:%M:%S"


@functools.cache
def templates() -> Environment:
    """The report's templates, from the installed package, autoescaped."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(
        loader=PackageLoader("heartml.monitoring", "templates"),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["fmt"] = format
    return environment


# --- drawing -------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _psi_figure(summary: Summary) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    psi = summary.psi
    for name in FEATURE_NAMES:
        ax.plot(psi["time"], psi[name], marker="o", markersize=3, label=name)
    ax.axhline(PSI_ALERT, color="red", linestyle="--", linewidth=1, label=f"alert ({PSI_ALERT})")
    ax.set(ylabel="PSI vs training", title=f"PSI per feature, windows of {summary.window} rows")
    ax.legend(ncol=2, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _distribution_figure(summary: Summary) -> Figure:
    import matplotlib.pyplot as plt

    records = summary.data.records
    model = records["model"].iloc[-1]
    profile = summary.data.profiles[model]
    recent = records.tail(summary.window)
    fig, axes = plt.subplots(3, 5, figsize=(14, 7.5))
    for ax, feature in zip(axes.flat, profile.features, strict=False):
        counts = feature.bin_counts(recent[feature.name].to_numpy(dtype="float64"))
        share = counts / max(counts.sum(), 1)
        x = np.arange(feature.bins)
        ax.bar(x - 0.2, feature.frequencies, width=0.4, label="training")
        ax.bar(x + 0.2, share, width=0.4, label="recent")
        if feature.kind == "coded":
            ax.set_xticks(x, [f"{c:g}" for c in feature.edges])
        else:
            ax.set_xticks(x, [f"≤{e:g}" for e in feature.edges] + ["more"], rotation=90, fontsize=6)
        ax.set_title(
            f"{feature.name} (missing {summary.recent_missing[feature.name]:.0%})", fontsize=9
        )
    for ax in list(axes.flat)[len(profile.features) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Last {len(recent)} rows vs the training rows of {model}")
    fig.tight_layout()
    return fig


def _probability_figure(summary: Summary) -> Figure:
    import matplotlib.pyplot as plt

    records = summary.data.records
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 21).tolist()
    for model, group in records.groupby("model"):
        ax.hist(group["probability"], bins=bins, alpha=0.5, label=f"{model} (answered)")
    shadowed = records.dropna(subset=["shadow_probability"])
    for model, group in shadowed.groupby("shadow_model"):
        ax.hist(
            group["shadow_probability"].astype(float),
            bins=bins,
            histtype="step",
            linewidth=2,
            label=f"{model} (shadow)",
        )
    ax.set(
        xlabel="P(heart disease)", ylabel="rows", title="Probability distribution per model version"
    )
    ax.legend(fontsize=8)
    return fig


def _calibration_figure(summary: Summary) -> Figure:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(summary.scores), figsize=(5 * len(summary.scores), 4.5), squeeze=False
    )
    for ax, score in zip(axes.flat, summary.scores, strict=True):
        predicted, observed = score.curve
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.plot(predicted, observed, marker="o")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted (decile)", ylabel="observed")
        ax.set_title(f"{score.model}\nAUC {score.auc} · slope {score.slope:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def report_view(summary: Summary) -> dict[str, Any]:
    """What the page shows: the summary's facts, the latest window's drift, the live scores,
    and each figure drawn as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    records = summary.data.records
    drift = None
    figures = {}
    if len(summary.psi):
        latest = summary.psi.iloc[-1]
        worst = max(FEATURE_NAMES, key=lambda n: -1.0 if math.isnan(latest[n]) else latest[n])
        drift = {"feature": worst, "psi": latest[worst], "above": latest[worst] > PSI_ALERT}
        figures["psi"] = _png(_psi_figure(summary))
        figures["distribution"] = _png(_distribution_figure(summary))
    figures["probability"] = _png(_probability_figure(summary))
    if summary.scores:
        figures["calibration"] = _png(_calibration_figure(summary))
    return {
        "cohort": None,
        "records": len(records),
        "files": summary.data.files,
        "first": records["time"].iloc[0],
        "last": records["time"].iloc[-1],
        "time_format": TIME,
        "answered": list(records["model"].value_counts().items()),
        "lost": summary.data.lost,
        "agreement": summary.agreement,
        "drift": drift,
        "psi_alert": PSI_ALERT,
        "scores": summary.scores,
        "labelled": summary.labelled,
        "figures": figures,
    }


def _cohort_figures(cohort: CohortSummary) -> dict[str, str]:
    import matplotlib.pyplot as plt

    matplotlib_agg()
    names = list(cohort.psi)
    fig, ax = plt.subplots(figsize=(10, 4))
    values = [0.0 if math.isnan(cohort.psi[n]) else cohort.psi[n] for n in names]
    ax.bar(names, values, color=["tab:red" if v > PSI_ALERT else "tab:blue" for v in values])
    ax.axhline(PSI_ALERT, color="red", linestyle="--", linewidth=1, label=f"alert ({PSI_ALERT})")
    ax.set(ylabel="PSI vs training", title=f"PSI per feature, {cohort.rows:,} rows")
    ax.legend(fontsize=8)
    psi = _png(fig)

    fig, axes = plt.subplots(3, 5, figsize=(14, 7.5))
    for ax, feature, counts in zip(axes.flat, cohort.profile.features, cohort.counts, strict=False):
        x = np.arange(feature.bins)
        ax.bar(x - 0.2, feature.frequencies, width=0.4, label="training")
        ax.bar(x + 0.2, counts / max(int(counts.sum()), 1), width=0.4, label="cohort")
        if feature.kind == "coded":
            ax.set_xticks(x, [f"{c:g}" for c in feature.edges])
        else:
            ax.set_xticks(x, [f"≤{e:g}" for e in feature.edges] + ["more"], rotation=90, fontsize=6)
        ax.set_title(f"{feature.name} (missing {cohort.missing[feature.name]:.0%})", fontsize=9)
    for ax in list(axes.flat)[len(cohort.profile.features) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"The cohort vs the training rows of {cohort.model}")
    fig.tight_layout()
    distribution = _png(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    edges = np.linspace(0, 1, len(cohort.probability_counts) + 1)
    ax.stairs(cohort.probability_counts, edges, fill=True, alpha=0.6, label=cohort.model)
    ax.set(xlabel="P(heart disease)", ylabel="rows", title="Probability distribution")
    ax.legend(fontsize=8)
    return {"psi": psi, "distribution": distribution, "probability": _png(fig)}


def matplotlib_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def cohort_view(cohort: CohortSummary) -> dict[str, Any]:
    """What the page shows of a scored cohort: its facts, PSI and missing shares per feature
    against the training rows, and the figures."""
    worst = max(cohort.psi, key=lambda n: -1.0 if math.isnan(cohort.psi[n]) else cohort.psi[n])
    features = [
        {
            "name": f.name,
            "psi": cohort.psi[f.name],
            "above": cohort.psi[f.name] > PSI_ALERT,
            "missing": cohort.missing[f.name],
            "training_missing": f.missing_rate,
        }
        for f in cohort.profile.features
    ]
    return {
        "cohort": {
            "path": str(cohort.path),
            "rows": cohort.rows,
            "model": cohort.model,
            "scored_at": cohort.scored_at,
            "positive": cohort.positive,
            "worst": {"feature": worst, "psi": cohort.psi[worst]},
            "features": features,
        },
        "psi_alert": PSI_ALERT,
        "figures": _cohort_figures(cohort),
    }


def render_cohort_report(cohort: CohortSummary) -> str:
    """A scored cohort's drift as the same HTML page, every plot embedded as a PNG."""
    return templates().get_template("report.html.j2").render(cohort_view(cohort))


def render_report(summary: Summary) -> str:
    """The report as one HTML page, every plot embedded as a PNG."""
    return templates().get_template("report.html.j2").render(report_view(summary))
