"""`heartml score --engine spark`: the same files read, scored and written through Apache Spark.

The driver (this process) resolves and downloads the model through the registry, exactly as the
local engine does, and ships its ONNX graph to the executors; then Spark reads the input, scores
it in its Python workers (:mod:`heartml.scoring.spark`) and writes the output and the rejects
as directories of part files, each beside its target first and renamed into place once both are
complete. The JVM this command started is stopped before it returns, whatever happens.
"""

from __future__ import annotations

import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import typer

from heartml.cli.common import fail, load_settings, user_errors
from heartml.errors import one_line

# A URI that went through pathlib (Typer's Path arguments): "s3a://b/k" became "s3a:/b/k".
_FLATTENED_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def as_uri(path: Path) -> str:
    """The path Spark is given: a local path as is, a URI (s3a://, hdfs://, gs://...) restored."""
    return _FLATTENED_URI.sub(r"\g<scheme>://", str(path))


def _is_local(uri: str) -> bool:
    return "://" not in uri


def score_on_spark(
    source: Path,
    out: Path,
    spec: str,
    site: str | None,
    keep: tuple[str, ...],
    scored_at: datetime,
    master: str | None,
) -> None:
    """Score ``source`` into ``out`` and its rejects on Spark (see the module)."""
    from heartml.scoring.local import rejects_path
    from heartml.scoring.model import download_model, resolve_model
    from heartml.scoring.output import RunStamp

    source_uri, out_uri = as_uri(source), as_uri(out)
    rejects_uri = as_uri(rejects_path(out))
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        fail(f"--out {out_uri}: give a .parquet or .csv name (Spark writes a directory by it)")
    if _is_local(out_uri) and not out.parent.is_dir():
        fail(f"--out {out_uri}: no directory {out.parent}")
    if _is_local(source_uri) and not source.exists():
        fail(f"{source_uri}: no such file or directory")
    with user_errors():
        try:
            from heartml.scoring import spark as engine
        except ImportError as exc:
            fail(f"--engine spark needs PySpark: pip install 'heartml[spark]' ({one_line(exc)})")
        settings = load_settings()
        choice = resolve_model(settings, spec, site)
        version = choice.version
        stamp = RunStamp(version.name, version.version, choice.site_adapted, scored_at)
        with tempfile.TemporaryDirectory(prefix="heartml-score-") as local:
            model = engine.spark_model(download_model(settings, choice, Path(local)), stamp)
        from pyspark.sql import SparkSession

        existing = SparkSession.getActiveSession()  # a caller's session is the caller's to stop
        spark = engine.spark_session(master)
        started = time.perf_counter()
        try:
            frame = engine.read_input(spark, source_uri)
            scoring = engine.score_dataframe(frame, model, keep)
            output = engine.AsideDir(spark, out_uri)
            rejects = engine.AsideDir(spark, rejects_uri)
            try:
                try:
                    engine.write_frame(scoring.scored, output.path, suffix == ".csv")
                except Exception as exc:  # the job's failure, as Spark reports it
                    raise engine.SparkScoringError(
                        f"{source_uri}: the Spark job failed ({one_line(exc, 240)})"
                    ) from exc
                read, scored, rejected = scoring.counts()
                table = scoring.rejections()
                # The refusals are few and already on the driver: one part file.
                engine.write_frame(scoring.rejects(spark).coalesce(1), rejects.path, csv=True)
                output.commit()
                rejects.commit()
            finally:
                output.discard()
                rejects.discard()
        finally:
            if existing is None:
                engine.stop_session(spark)
    seconds = time.perf_counter() - started
    rate = read / seconds if seconds > 0 else 0.0
    typer.echo(
        f"rows read {read:,} = scored {scored:,} + rejected {rejected:,} "
        f"({rate:,.0f} rows/s on Spark, {version.ref} as {choice.chosen_as}"
        f"{', site-adapted' if choice.site_adapted else ''}); wrote {out_uri} and "
        f"{rejects_uri} ({table.num_rows:,} refusals)"
    )
