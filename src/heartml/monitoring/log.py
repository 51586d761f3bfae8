"""Reading what the server wrote: the prediction log and the training profiles beside it, and
the outcomes a site sends back as a labels file.

``read_log`` reads every JSON-lines file of a log directory (:mod:`heartml.serve.predlog`),
with a progress callback in bytes, counts the records that never reached the disk (gaps in
each writing process's sequence numbers), and loads the ``reference-*.json`` profiles.
``read_labels`` reads ``request_id,outcome[,row]``. Both raise :class:`MonitorError` with a
one-line message on input they cannot read. Runs in the training environment (pandas).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.data.profile import ReferenceProfile
from heartml.data.schema import FEATURE_NAMES

if TYPE_CHECKING:
    import pandas as pd


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
