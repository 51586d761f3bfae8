"""`heartml score`: a cohort from files, scored by a registered model, into a file."""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from heartml.cli.common import fail, load_settings, user_errors
from heartml.errors import one_line


def _stop_on_sigterm() -> None:
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C, so the unfinished files are dropped.
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--scored-at {text!r}: give an ISO-8601 time, e.g. 2026-01-31T02:00:00Z")
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def score(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A CSV file, a Parquet file or a directory of Parquet files, in UCI coding "
            "(columns named as the schema's features).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The scored file: .parquet or .csv. Rejects go to STEM.rejects.csv."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="champion, champion-SITE (a site's champion) or NAME/VERSION."
        ),
    ] = "champion",
    site: Annotated[
        str | None,
        typer.Option(
            "--site", help="Score with SITE's champion when it has one, else the champion."
        ),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep",
            help="An input column to carry into the output (an id, say); repeat for more. A "
            "feature is written as validated (float64, null when absent).",
        ),
    ] = None,
    keep_features: Annotated[
        bool,
        typer.Option(
            "--keep-features",
            help="Keep the 13 features too: what `heartml monitor --scored` measures drift on.",
        ),
    ] = False,
    scored_at: Annotated[
        str | None,
        typer.Option(
            "--scored-at",
            help="The run's scored_at (ISO-8601, UTC by default); default now. Fixing it makes "
            "a rerun byte-identical.",
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Add each row's explanation: explanation_base, log_odds and contribution_FIELD "
            "for every field (base + contributions = log_odds), as /predict?explain=true.",
        ),
    ] = False,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="ONNX Runtime threads for the model (one: reading and writing take the other "
            "core).",
        ),
    ] = 1,
    engine_name: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: this machine; spark: Apache Spark, output and rejects written as "
            "directories of part files (needs heartml[spark] and Java 17+).",
        ),
    ] = "local",
    master: Annotated[
        str | None,
        typer.Option(
            "--master",
            help="With --engine spark: the master URL (default local[2]; under spark-submit, "
            "spark-submit's).",
        ),
    ] = None,
) -> None:
    """Score a cohort from files: one risk per patient, the refused rows in a rejects file."""
    import tempfile

    from rich.console import Console

    from heartml.data.schema import FEATURE_NAMES
    from heartml.model.engine import load_engine
    from heartml.model.explain import load_explainer
    from heartml.scoring.local import ENGINE_ROWS, score_files
    from heartml.scoring.model import download_model, resolve_model
    from heartml.scoring.output import RunStamp, now_utc

    stamp_time = _parse_time(scored_at) if scored_at else now_utc()
    kept = tuple(keep or ()) + (FEATURE_NAMES if keep_features else ())
    if engine_name not in ("local", "spark"):
        fail(f"--engine {engine_name!r}: use local or spark")
    if engine_name == "spark":
        from heartml.cli.score_spark import score_on_spark

        _stop_on_sigterm()
        if explain:
            fail("--explain runs with the local engine only")
        score_on_spark(source, out, model, site, kept, stamp_time, master)
        return
    if master is not None:
        fail("--master goes with --engine spark")
    console = Console(stderr=True)
    _stop_on_sigterm()
    with user_errors():
        settings = load_settings()
        choice = resolve_model(settings, model, site)
        with tempfile.TemporaryDirectory(prefix="heartml-score-") as local:
            model_dir = download_model(settings, choice, Path(local))
            engine = load_engine(model_dir, threads)
            try:
                explainer = load_explainer(model_dir, engine) if explain else None
            except Exception as exc:  # numpy, ONNX Runtime and YAML raise their own types
                fail(
                    f"{choice.version.ref}: its explainer files cannot be read "
                    f"({one_line(exc, 160)}): score without --explain"
                )
        if explain and explainer is None:
            fail(f"{choice.version.ref} was registered without explainer files: retrain it")
        version = choice.version
        stamp = RunStamp(version.name, version.version, choice.site_adapted, stamp_time)
        try:
            with _Progress(console) as update:
                result = score_files(
                    source,
                    out,
                    engine,
                    stamp,
                    kept,
                    engine_rows=ENGINE_ROWS.get(version.model_type or ""),
                    progress=update,
                    explainer=explainer,
                )
        except KeyboardInterrupt:
            fail(f"stopped: nothing written to {out}")
    typer.echo(
        f"rows read {result.read:,} = scored {result.scored:,} + rejected {result.rejected:,} "
        f"({result.rows_per_second:,.0f} rows/s, {version.ref} as {choice.chosen_as}"
        f"{', site-adapted' if choice.site_adapted else ''}); wrote {result.output} and "
        f"{result.rejects} ({result.rejects_lines:,} refusals)"
    )


class _Progress:
    """A Rich bar with rows and rows/s on stderr; nothing when stderr is not a terminal."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not sys.stderr.isatty():
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]}"),
            console=self.console,
            transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task("score", total=None, rate="")

        def update(done: int, total: int | None) -> None:
            speed = self.bar.tasks[0].speed
            rate = f"{speed:,.0f} rows/s" if speed else ""
            self.bar.update(task, completed=done, total=total, rate=rate)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
