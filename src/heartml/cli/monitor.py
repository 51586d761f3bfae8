"""`heartml monitor`: the prediction log as an HTML report with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heartml.cli.common import fail, load_settings, user_errors


def monitor(
    log: Annotated[
        Path | None,
        typer.Option(
            "--log", help="Prediction-log directory (default: HEARTML_PREDICTION_LOG_DIR)."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV of outcomes, columns request_id,outcome (0/1) and optionally row: adds "
            "live ROC-AUC and calibration of the champion and the shadow.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the self-contained HTML report.")
    ] = Path("monitor-report.html"),
    window: Annotated[
        int, typer.Option("--window", min=10, help="Rows per PSI window (the server's default).")
    ] = 500,
    scored: Annotated[
        Path | None,
        typer.Option(
            "--scored",
            help="A file `heartml score --keep-features` wrote: the cohort's drift against the "
            "reference profile of the model that scored it, instead of the log's.",
        ),
    ] = None,
) -> None:
    """Write an HTML report of the prediction log (drift, predictions, live performance), or
    of a scored cohort (--scored)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from heartml.monitoring.log import MonitorError, read_labels, read_log
    from heartml.monitoring.report import render_report
    from heartml.monitoring.summary import summarise

    if scored is not None:
        _monitor_cohort(scored, out)
        return
    directory = log or load_settings().prediction_log_dir
    if directory is None:
        fail("no prediction log: pass --log DIR or set HEARTML_PREDICTION_LOG_DIR")
    console = Console(stderr=True)
    with user_errors():
        try:
            with Progress(
                TextColumn("reading the log"),
                BarColumn(),
                DownloadColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("read", total=None)
                data = read_log(
                    directory, lambda done, total: bar.update(task, completed=done, total=total)
                )
            summary = summarise(data, read_labels(labels) if labels else None, window)
            page = render_report(summary)
        except MonitorError as exc:
            fail(str(exc))
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
    typer.echo(f"wrote {out} ({len(data.records)} records, {len(page) // 1024} KiB)")


def _monitor_cohort(scored: Path, out: Path) -> None:
    from heartml.monitoring.cohort import registry_profile, summarise_cohort
    from heartml.monitoring.log import MonitorError
    from heartml.monitoring.report import render_cohort_report

    settings = load_settings()
    with user_errors():
        try:
            cohort = summarise_cohort(scored, registry_profile(settings))
            page = render_cohort_report(cohort)
        except MonitorError as exc:
            fail(str(exc))
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
    worst = max(cohort.psi.values())
    typer.echo(
        f"wrote {out} ({cohort.rows:,} rows scored by {cohort.model}, largest PSI {worst:.3f}, "
        f"{len(page) // 1024} KiB)"
    )
