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
"""

from __future__ import annotations

import base64
import html
import math
from typing import TYPE_CHECKING

import numpy as np

from heartml.data.schema import FEATURE_NAMES
from heartml.monitoring.summary import PSI_ALERT, Summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TIME = "%Y-%m-%d %H:%M:%S"


# --- drawing -------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(fig: Figure) -> str:
    return f"<img src='data:image/png;base64,{_png(fig)}'>"


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


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_report(summary: Summary) -> str:
    """The report as one HTML page, every plot embedded as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    records = summary.data.records
    facts = [
        ("records", f"{len(records)} in {summary.data.files} file(s)"),
        (
            "from / to",
            f"{records['time'].iloc[0]:{TIME}} / {records['time'].iloc[-1]:{TIME}} UTC",
        ),
        (
            "models (answered)",
            ", ".join(f"{m}: {n}" for m, n in records["model"].value_counts().items()),
        ),
        ("records lost (gaps in seq)", str(summary.data.lost)),
    ]
    if summary.agreement:
        a = summary.agreement
        pairs = "; ".join(f"{c} vs {s}" for c, s in a["pairs"])
        facts.append(
            (
                "shadow",
                f"{a['rows']} rows ({pairs}): agreement {a['agreement']:.1%}, "
                f"mean |Δp| {a['mean_abs_diff']:.3f}",
            )
        )
    sections = [f"<h2>Summary</h2>{_table(facts)}"]
    if len(summary.psi):
        latest = summary.psi.iloc[-1]
        worst = max(FEATURE_NAMES, key=lambda n: -1.0 if math.isnan(latest[n]) else latest[n])
        verdict = "above" if latest[worst] > PSI_ALERT else "below"
        sections.append(
            f"<h2>Input drift</h2><p>Latest window: largest PSI {latest[worst]:.2f} "
            f"({html.escape(worst)}), {verdict} the alert's {PSI_ALERT}.</p>"
            + _img(_psi_figure(summary))
            + _img(_distribution_figure(summary))
        )
    else:
        sections.append(
            "<h2>Input drift</h2><p>No training profile beside the log: drift not computed.</p>"
        )
    sections.append("<h2>Predictions</h2>" + _img(_probability_figure(summary)))
    if summary.scores:
        score_rows = [
            (
                s.model,
                f"ROC-AUC {s.auc} (DeLong 95 %), calibration slope {s.slope:.2f}, "
                f"intercept {s.intercept:.2f}, {s.rows} rows",
            )
            for s in summary.scores
        ]
        sections.append(
            f"<h2>Live performance ({summary.labelled} labelled rows)</h2>{_table(score_rows)}"
            f"<img src='data:image/png;base64,{_png(_calibration_figure(summary))}'>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "img{max-width:100%;display:block;margin:1em 0}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>heartml monitor report</title>"
        f"<style>{style}</style></head><body><h1>heartml: live evidence</h1>"
        f"{''.join(sections)}</body></html>\n"
    )
