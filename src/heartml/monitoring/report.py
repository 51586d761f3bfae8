"""The monitor report: what the prediction log says, as one self-contained HTML page.

``heartml monitor --log DIR [--labels FILE] [--out FILE]`` reads the JSON-lines files the
server wrote (:mod:`heartml.serve.predlog`) and the training profiles beside them, and draws:

* PSI per feature over time: the log cut into consecutive windows of ``window`` rows, each
  compared with the profile of the model that answered it (the alert's threshold drawn);
* recent vs reference distributions: the last window's bin shares against training's;
* the probability distribution per model version (champions and the shadowed challenger);
* with a labels file (``request_id,outcome`` and optionally ``row``; outcome 0/1): live
  ROC-AUC with DeLong's 95 % interval, calibration slope and intercept, and a calibration
  curve for the champion and the shadow side by side, on the same labelled rows.

Reading is :func:`read_log` (with a progress callback in bytes), deciding what to show is
:func:`summarise`, drawing is :func:`render_report`. Runs in the training environment
(pandas, matplotlib).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.data.profile import ReferenceProfile, feature_stability, missing_ratios
from heartml.data.schema import FEATURE_NAMES

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

PSI_ALERT = 0.2
TIME = "%Y-%m-%d %H:%M:%S"
DEFAULT_WINDOW = 500


class MonitorError(Exception):
    """The log or the labels cannot be read; the message is one line."""


@dataclass(frozen=True)
class PredictionLogData:
    """Every record of a log directory, and the training profiles found beside them."""

    records: pd.DataFrame  # one row per record; features as received in columns of FEATURE_NAMES
    profiles: dict[str, ReferenceProfile]  # "name/version" -> profile
    files: int
    lost: int  # gaps in each process's sequence numbers: records that never reached the disk


def log_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise MonitorError(f"{directory} is not a directory")
    files = sorted(directory.glob("predictions-*.jsonl"))
    if not files:
        raise MonitorError(f"{directory} holds no prediction log (predictions-*.jsonl)")
    return files


def read_log(
    directory: Path, progress: Callable[[int, int], None] | None = None
) -> PredictionLogData:
    """Read every log file of ``directory``; ``progress(bytes_read, total_bytes)`` as it goes."""
    import pandas as pd

    files = log_files(directory)
    total = sum(f.stat().st_size for f in files)
    done = 0
    rows: list[dict[str, Any]] = []
    # Per writing process (its rotated files continue its numbering): records seen and the
    # highest number. Numbers are given on the request path, so a record dropped from a full
    # queue or lost in a crash is a number never seen, in whatever order the rest was written.
    seen: dict[str, int] = {}
    highest: dict[str, int] = {}
    for path in files:
        process = path.name.rsplit("-", 1)[0]
        with path.open("rb") as stream:
            for number, line in enumerate(stream, 1):
                done += len(line)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    flat = {
                        "request_id": str(record["request_id"]),
                        "row": int(record.get("row", 0)),
                        "time": record["time"],
                        "model": f"{record['model_name']}/{record['model_version']}",
                        "probability": float(record["probability"]),
                        "prediction": int(record["prediction"]),
                        "shadow_model": record.get("shadow_model"),
                        "shadow_probability": record.get("shadow_probability"),
                        **{n: record["features"].get(n) for n in FEATURE_NAMES},
                    }
                    seq = int(record.get("seq", highest.get(process, -1) + 1))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise MonitorError(
                        f"{path.name}:{number}: not a prediction record ({exc!r})"
                    ) from exc
                seen[process] = seen.get(process, 0) + 1
                highest[process] = max(highest.get(process, -1), seq)
                rows.append(flat)
                if progress is not None and number % 2000 == 0:
                    progress(done, total)
    lost = sum(max(0, highest[p] + 1 - seen[p]) for p in seen)
    if progress is not None:
        progress(total, total)
    records = pd.DataFrame(rows)
    records["time"] = pd.to_datetime(records["time"], utc=True)
    for name in FEATURE_NAMES:
        records[name] = pd.to_numeric(records[name], errors="coerce").astype("float64")
    records = records.sort_values("time", kind="stable").reset_index(drop=True)
    profiles = {}
    for path in sorted(directory.glob("reference-*.json")):
        try:
            profile = ReferenceProfile.load(path)
        except (OSError, ValueError) as exc:
            raise MonitorError(f"{path.name}: {exc}") from exc
        name, _, version = path.stem.removeprefix("reference-").rpartition("-v")
        profiles[f"{name}/{version}"] = profile
    return PredictionLogData(records, profiles, len(files), lost)


def read_labels(path: Path) -> pd.DataFrame:
    """``request_id,outcome[,row]`` (CSV with a header); outcome 0 or 1."""
    import pandas as pd

    try:
        labels = pd.read_csv(path, dtype={"request_id": str})
    except (OSError, ValueError) as exc:
        raise MonitorError(f"cannot read labels {path}: {' '.join(str(exc).split())}") from exc
    missing = {"request_id", "outcome"} - set(labels.columns)
    if missing:
        raise MonitorError(f"{path}: no column {', '.join(sorted(missing))} (request_id,outcome)")
    if "row" not in labels.columns:
        labels["row"] = 0
    if not labels["outcome"].isin([0, 1]).all():
        raise MonitorError(f"{path}: outcome must be 0 or 1 on every line")
    return labels[["request_id", "row", "outcome"]].astype({"row": int, "outcome": int})


@dataclass(frozen=True)
class LiveScore:
    """One model's live ROC-AUC and calibration on the labelled rows."""

    model: str
    rows: int
    auc: Any  # heartml.evidence.stats.Interval
    slope: float
    intercept: float
    curve: tuple[list[float], list[float]]  # mean predicted, observed, per decile


@dataclass(frozen=True)
class Summary:
    """What the report shows, computed; the figures are drawn from it."""

    data: PredictionLogData
    window: int
    psi: pd.DataFrame  # one row per window: end time, model, PSI per feature
    recent_missing: dict[str, float]
    agreement: dict[str, Any] | None
    scores: list[LiveScore] = field(default_factory=list)
    labelled: int = 0


def _windows(records: pd.DataFrame, window: int) -> list[pd.DataFrame]:
    count = len(records)
    if count <= window:
        return [records]
    return [records.iloc[start : start + window] for start in range(0, count - window + 1, window)]


def _calibration_curve(
    y: np.ndarray, p: np.ndarray, bins: int = 10
) -> tuple[list[float], list[float]]:
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, len(p)))
    return [float(p[g].mean()) for g in groups], [float(y[g].mean()) for g in groups]


def _score(model: str, y: np.ndarray, p: np.ndarray) -> LiveScore:
    from heartml.evidence.stats import calibration, roc_auc_interval

    fit = calibration(y, np.clip(p, 1e-6, 1 - 1e-6))
    return LiveScore(
        model, len(y), roc_auc_interval(y, p), fit.slope, fit.intercept, _calibration_curve(y, p)
    )


def summarise(
    data: PredictionLogData, labels: pd.DataFrame | None = None, window: int = DEFAULT_WINDOW
) -> Summary:
    """The numbers behind every plot of the report."""
    import pandas as pd

    records = data.records
    features = list(FEATURE_NAMES)
    psi_rows = []
    for chunk in _windows(records, window):
        model = chunk["model"].mode().iloc[0]
        profile = data.profiles.get(model)
        if profile is None:
            continue
        values = feature_stability(profile, chunk[features].to_numpy(dtype="float64"))
        psi_rows.append(
            {
                "time": chunk["time"].iloc[-1],
                "model": model,
                "rows": len(chunk),
                **dict(zip(features, values, strict=True)),
            }
        )
    psi = pd.DataFrame(psi_rows)
    recent = records.tail(window)[features].to_numpy(dtype="float64")
    recent_missing = dict(zip(features, missing_ratios(recent).tolist(), strict=True))

    shadowed = records.dropna(subset=["shadow_probability"])
    agreement = None
    if len(shadowed):
        theirs = shadowed["shadow_probability"].astype(float).to_numpy()
        their_class = (theirs > 1 - theirs).astype(int)
        agreement = {
            "rows": len(shadowed),
            "pairs": sorted(set(zip(shadowed["model"], shadowed["shadow_model"], strict=True))),
            "agreement": float((their_class == shadowed["prediction"].to_numpy()).mean()),
            "mean_abs_diff": float(np.abs(shadowed["probability"].to_numpy() - theirs).mean()),
        }

    scores: list[LiveScore] = []
    labelled = 0
    if labels is not None:
        joined = records.merge(labels, on=["request_id", "row"], how="inner")
        labelled = len(joined)
        if labelled == 0:
            raise MonitorError("no labelled request_id matches a logged prediction")
        y = joined["outcome"].to_numpy()
        if y.min() == y.max():
            raise MonitorError(f"the {labelled} labelled rows all have outcome {y[0]}: no ROC-AUC")
        both = joined.dropna(subset=["shadow_probability"])
        # Side by side on the same rows: those the shadow scored too, when there are any.
        rows = both if len(both) and both["outcome"].nunique() == 2 else joined
        champion = " + ".join(sorted(rows["model"].unique()))
        scores.append(
            _score(
                f"champion ({champion})", rows["outcome"].to_numpy(), rows["probability"].to_numpy()
            )
        )
        if rows is both:
            shadow = " + ".join(sorted(both["shadow_model"].unique()))
            scores.append(
                _score(
                    f"shadow ({shadow})",
                    both["outcome"].to_numpy(),
                    both["shadow_probability"].astype(float).to_numpy(),
                )
            )
    return Summary(data, window, psi, recent_missing, agreement, scores, labelled)


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
