"""A cohort scored on Apache Spark: the local scorer's batch functions in Spark's Python workers.

The driver resolves the model through the registry (as the local scorer does), checks its ONNX
form and broadcasts the graph's bytes; the executors never talk to the registry and need no
credentials. :func:`score_dataframe` maps each partition's Arrow record batches
(``mapInArrow``) through the same pure functions as ``heartml score`` on one machine:
:func:`~heartml.scoring.columns.check_batch`, ONNX Runtime, then
:func:`~heartml.scoring.output.build_scores`; so both engines give the same columns, the same
probabilities and the same refusals. The workers hand back only what varies from row to row
(the kept columns, the probability, the prediction and the imputed-fields mask): the JVM adds
the run's constant columns and looks the mask's text up, which spares the Arrow exchange
between the JVM and Python, the job's largest cost, some 40 bytes a row. An executor needs
numpy, pyarrow, pydantic, ONNX Runtime and heartml's pure modules: no scikit-learn, no MLflow.

Each Python worker process builds the ONNX Runtime session once and keeps it in a module-level
cache keyed by the graph's digest (Spark reuses its Python workers across tasks), so a batch
costs one ``session.run``, never a model load.

Refused rows do not travel in the scored DataFrame: each partition adds its row count and its
refusals to an accumulator, keyed by the partition's index, when it has been read to the end.
A retried task or a second action replaces its partition's entry with the same one, so the
tally is exact whatever Spark re-runs. Row numbers count from 1 in Spark's partition order,
which is the file's order for one file (CSV or Parquet) and Spark's own order of the files for a
directory.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from heartml.data.schema import FEATURE_NAMES
from heartml.errors import UserError, one_line
from heartml.model.onnx_form import (
    TOLERANCE,
    OnnxEngine,
    Probe,
    find_onnx_files,
    largest_deviation,
)
from heartml.scoring.columns import CSV_NULLS, check_batch, missing_required
from heartml.scoring.output import (
    IMPUTED_MASK,
    RESERVED_PREFIX,
    RunStamp,
    build_scores,
    check_keep,
    output_schema,
    scores_schema,
)

if TYPE_CHECKING:
    from pyspark import Accumulator, Broadcast
    from pyspark.sql import DataFrame, SparkSession

# The column that carries each row's partition index into the workers: the index of the scan's
# partition, which stays right even when the caller coalesces the scored DataFrame.
_PARTITION = RESERVED_PREFIX + "partition"
# Rows per Arrow batch handed to a worker: Spark's default (10,000) makes the per-batch costs
# (a graph run, a JVM-to-Python round trip) show; larger ones fill ONNX Runtime's kernels.
BATCH_ROWS = 65_536
# Spark also bounds the batches it sends to Python by their bytes (64 MB by default), which it
# checks by measuring the Arrow batch under construction after every row: a fifth of the JVM's
# time on a scored cohort. The rows per batch bound it already (the 13 features, an id and the
# partition are some 120 bytes a row: 8 MB a batch; kept text columns add their width), so the
# byte bound is switched off (Int.MaxValue: Spark's "no limit") unless the session's own
# configuration (spark-defaults.conf, --conf) sets one.
ARROW_BYTES_PER_BATCH = "spark.sql.execution.arrow.maxBytesPerBatch"
NO_BYTE_LIMIT = str(2**31 - 1)
DEFAULT_MASTER = "local[2]"
LOOPBACK = "127.0.0.1"

# Per-partition tallies: partition index → (rows read, refusals as (row in the partition,
# field, message)).
Tally = dict[int, tuple[int, tuple[tuple[int, str, str], ...]]]


class SparkScoringError(UserError):
    """The model cannot run on Spark, or the input or output cannot be read or written."""


@dataclass(frozen=True, slots=True)
class SparkModel:
    """What the executors get: the ONNX graph and the stamp every row carries."""

    graph: bytes
    stamp: RunStamp

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.graph).hexdigest()


def spark_model(model_dir: Path, stamp: RunStamp) -> SparkModel:
    """The ONNX form of a downloaded model directory, checked on the driver against its probe.

    Spark runs ONNX Runtime only: a model without a faithful ONNX form is refused here, before
    any executor starts, instead of falling back to scikit-learn as serving does.
    """
    ref = f"{stamp.model_name}/{stamp.model_version}"
    files = find_onnx_files(model_dir)
    if files is None:
        raise SparkScoringError(
            f"{ref} has no ONNX form (registered before heartml converted models): "
            "--engine spark scores with ONNX Runtime only; use the local engine"
        )
    graph = files.graph.read_bytes()
    try:
        deviation = largest_deviation(OnnxEngine(graph), Probe.load(files.probe))
    except Exception as exc:  # ONNX Runtime and numpy raise their own types
        raise SparkScoringError(
            f"{ref}: its ONNX form cannot be run ({one_line(exc, 200)})"
        ) from exc
    if deviation > TOLERANCE:
        raise SparkScoringError(
            f"{ref}: its ONNX form differs from its pipeline by {deviation:.3g} under this "
            "ONNX Runtime: --engine spark scores with ONNX Runtime only; use the local engine"
        )
    return SparkModel(graph, stamp)


# --- in the Python workers ---------------------------------------------------------------------

# One ONNX Runtime session per graph per worker process, built by the first batch that needs it.
_ENGINES: dict[str, OnnxEngine] = {}


def sessions_built() -> int:
    """How many ONNX Runtime sessions this worker process has built (one per model)."""
    return len(_ENGINES)


def _engine(digest: str, graph: Broadcast[bytes]) -> OnnxEngine:
    engine = _ENGINES.get(digest)
    if engine is None:
        # One thread: Spark runs one task per core, each in a Python worker of its own.
        engine = _ENGINES[digest] = OnnxEngine(graph.value, threads=1)
    return engine


class _ScoreBatches:
    """The ``mapInArrow`` function: one partition's batches in, its scored batches out."""

    def __init__(
        self,
        digest: str,
        graph: Broadcast[bytes],
        stamp: RunStamp,
        keep: tuple[str, ...],
        tally: Accumulator[Tally],
    ) -> None:
        self.digest = digest
        self.graph = graph
        self.stamp = stamp
        self.keep = keep
        self.tally = tally

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        engine = _engine(self.digest, self.graph)
        partition = -1
        read = 0
        refusals: list[tuple[int, str, str]] = []
        schemas: dict[pa.Schema, pa.Schema] = {}
        for tagged in batches:
            if not tagged.num_rows:
                continue
            partition = tagged.column(_PARTITION)[0].as_py()
            batch = tagged.drop_columns([_PARTITION])
            checked = check_batch(batch, first_row=read + 1)
            if checked.scored:
                schema = schemas.get(batch.schema)
                if schema is None:
                    # Spark hands strings over as string or large_string: the kept columns
                    # keep the type they arrive with.
                    schema = schemas[batch.schema] = scores_schema(batch.schema, self.keep)
                probabilities = engine.predict_proba(checked.rows)
                yield build_scores(batch, checked, probabilities, schema)
            refusals.extend((r.row, r.field, r.message) for r in checked.rejections)
            read += checked.read
        if partition >= 0:  # an empty partition has nothing to tell
            self.tally.add({partition: (read, tuple(refusals))})


# --- on the driver -----------------------------------------------------------------------------


def _tally_param() -> Any:
    from pyspark.accumulators import AccumulatorParam

    class TallyParam(AccumulatorParam[Tally]):
        def zero(self, value: Tally) -> Tally:
            return {}

        def addInPlace(self, value1: Tally, value2: Tally) -> Tally:  # noqa: N802 (Spark's name)
            value1.update(value2)  # a partition computed again tells the same
            return value1

    return TallyParam()


@dataclass(frozen=True)
class SparkScoring:
    """The scored DataFrame (lazy) and, once an action has computed it, its counts and rejects."""

    scored: DataFrame
    partitions: int
    tally: Accumulator[Tally]

    def _complete(self) -> Tally:
        value: Tally = self.tally.value
        # Empty partitions tell nothing: only more entries than partitions would be wrong.
        if len(value) > self.partitions:
            raise RuntimeError(f"{len(value)} partition tallies for {self.partitions} partitions")
        return value

    def counts(self) -> tuple[int, int, int]:
        """Rows read, scored and rejected by the action that computed ``scored``."""
        value = self._complete()
        read = sum(rows for rows, _ in value.values())
        rejected = sum(len({row for row, _, _ in refusals}) for _, refusals in value.values())
        return read, read - rejected, rejected

    def rejections(self) -> pa.Table:
        """One line per refused field of a row: ``row`` (1-based, in partition order),
        ``field``, ``message``, as the local scorer's rejects file."""
        from heartml.scoring.output import rejects_schema

        value = self._complete()
        rows: list[int] = []
        fields: list[str] = []
        messages: list[str] = []
        offset = 0
        for partition in sorted(value):
            read, refusals = value[partition]
            for row, field, message in refusals:
                rows.append(offset + row)
                fields.append(field)
                messages.append(message)
            offset += read
        return pa.table([rows, fields, messages], schema=rejects_schema())

    def rejects(self, spark: SparkSession) -> DataFrame:
        """:meth:`rejections` as a Spark DataFrame."""
        return spark.createDataFrame(self.rejections())


def score_dataframe(
    df: DataFrame, model: SparkModel, keep: Sequence[str] = (), *, partition_order: bool = True
) -> SparkScoring:
    """Score ``df`` (UCI coding, columns named as the schema's features) with ``model``.

    The scored DataFrame holds, per accepted row, the ``keep`` columns then the local scorer's
    output columns (:func:`~heartml.scoring.output.output_schema`, without dictionaries). It is
    lazy: write it (or run any action that reads it whole) before asking for the counts and
    the rejects. A session :func:`spark_session` did not make scores faster once passed to
    :func:`configure_session`.
    """
    from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    names = df.columns
    if missing := missing_required(names):
        raise SparkScoringError(
            f"no column {', '.join(missing)} (required; the columns are the schema's feature "
            "names, see `heartml data schema`)"
        )
    kept = check_keep(names, keep)
    columns = [n for n in names if n in FEATURE_NAMES or n in kept]
    frame = df.select(*columns, F.spark_partition_id().alias(_PARTITION))
    arrow_in = to_arrow_schema(df.select(*[n for n in names if n in kept]).schema)
    spark = df.sparkSession
    context = spark.sparkContext
    graph = context.broadcast(model.graph)
    tally: Accumulator[Tally] = context.accumulator({}, _tally_param())
    function = _ScoreBatches(model.digest, graph, model.stamp, kept, tally)
    scores = frame.mapInArrow(function, from_arrow_schema(scores_schema(arrow_in, kept)))
    scored = scores.select(*_output_columns(output_schema(arrow_in, kept, dictionary=False), model))
    return SparkScoring(scored, frame.rdd.getNumPartitions(), tally)


def _output_columns(schema: pa.Schema, model: SparkModel) -> list[Any]:
    """The output's columns from the workers' scores: as they are, or computed on the JVM."""
    from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)
    from pyspark.sql.pandas.types import from_arrow_type

    from heartml.scoring.columns import imputed_labels

    stamp = model.stamp
    labels = F.array(*(F.lit(label) for label in imputed_labels()))
    added = {
        # element_at counts from 1; every mask has its label.
        "imputed": F.element_at(labels, F.col(IMPUTED_MASK).cast("int") + 1),
        "model_name": F.lit(stamp.model_name),
        "model_version": F.lit(stamp.model_version),
        "site_adapted": F.lit(stamp.site_adapted),
        "scored_at": F.lit(stamp.scored_at),
    }
    return [
        added[field.name].cast(from_arrow_type(field.type)).alias(field.name)
        if field.name in added
        else F.col(_quoted(field.name))
        for field in schema
    ]


def _quoted(name: str) -> str:
    """A column name as Spark's column syntax reads it literally (dots, spaces, backticks)."""
    return "`" + name.replace("`", "``") + "`"


# --- sessions, files ---------------------------------------------------------------------------


def under_spark_submit() -> bool:
    """True when spark-submit started this process (its JVM is already there, with its conf)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(master: str | None = None, app_name: str = "heartml-score") -> SparkSession:
    """The session to score in: spark-submit's when it started this process, else a new one on
    ``master`` (default ``local[2]``).

    A local master binds the loopback address only and has no UI; its Python workers run this
    interpreter, which has heartml and its dependencies.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if under_spark_submit():
        if master is not None:
            raise SparkScoringError("--master is spark-submit's under spark-submit: leave it out")
        return configure_session(builder.getOrCreate())
    master = master or DEFAULT_MASTER
    builder = (
        builder.master(master)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.config("spark.driver.host", LOOPBACK)
            .config("spark.driver.bindAddress", LOOPBACK)
            .config("spark.pyspark.python", sys.executable)
        )
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j and the JVM launcher raise their own types
        raise SparkScoringError(f"cannot start Spark on {master} ({one_line(exc, 200)})") from exc
    session.sparkContext.setLogLevel("ERROR")
    return configure_session(session)


def configure_session(session: SparkSession) -> SparkSession:
    """What scoring needs of a session, set on it: Parquet timestamps as the local scorer writes
    them (µs, UTC), not Spark's legacy INT96; Python batches bounded by rows alone
    (:data:`ARROW_BYTES_PER_BATCH`) unless the session's configuration bounds their bytes."""
    session.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    if session.conf.get(ARROW_BYTES_PER_BATCH, None) is None:
        session.conf.set(ARROW_BYTES_PER_BATCH, NO_BYTE_LIMIT)
    return session


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("file:")


def read_input(spark: SparkSession, source: str) -> DataFrame:
    """A CSV file, a Parquet file or a directory of Parquet files, read as the local scorer
    reads them: CSV cells as text, the usual spellings of a missing value as null."""
    from pyspark.sql import functions as F  # noqa: N812

    if _is_local(source) and not Path(source).exists():
        raise SparkScoringError(f"{source}: no such file or directory")
    csv = source.lower().rstrip("/").endswith(".csv")
    try:
        if csv:
            # Every column as text (no inference): one bad cell refuses its row, not the file.
            frame = spark.read.options(header=True, inferSchema=False, mode="PERMISSIVE").csv(
                source
            )
            nulls = list(CSV_NULLS)
            return frame.select(
                *[
                    F.when(F.col(n).isin(nulls), F.lit(None)).otherwise(F.col(n)).alias(n)
                    if n in FEATURE_NAMES
                    else F.col(n)
                    for n in frame.columns
                ]
            )
        return spark.read.parquet(source)
    except Exception as exc:  # Spark's AnalysisException, py4j's errors
        kind = "CSV file" if csv else "Parquet file or directory"
        raise SparkScoringError(f"{source}: not a readable {kind} ({one_line(exc, 160)})") from exc


def write_frame(frame: DataFrame, path: str, csv: bool) -> None:
    """Write ``frame`` as a new directory of Parquet (or CSV, with a header) part files."""
    writer = frame.write.mode("errorifexists")
    if csv:
        writer.option("header", True).csv(path)
    else:
        writer.parquet(path)


class AsideDir:
    """A directory Spark writes beside ``target`` and that is renamed into place by
    :meth:`commit` (replacing an older one), or removed by :meth:`discard`: the target is
    complete or absent, never half-written. Any file system Hadoop knows (local, HDFS, S3...)."""

    def __init__(self, spark: SparkSession, target: str) -> None:
        jvm: Any = spark.sparkContext._jvm
        conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.final = jvm.org.apache.hadoop.fs.Path(target)
        self.fs = self.final.getFileSystem(conf)
        name = f"{self.final.getName()}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.aside = jvm.org.apache.hadoop.fs.Path(self.final.getParent(), name)
        self.path: str = self.aside.toString()
        self.target = target

    def commit(self) -> None:
        if self.fs.exists(self.final):
            self.fs.delete(self.final, True)
        if not self.fs.rename(self.aside, self.final):
            raise SparkScoringError(f"{self.target}: could not move the written output into place")

    def discard(self) -> None:
        if self.fs.exists(self.aside):
            self.fs.delete(self.aside, True)


def stop_session(spark: SparkSession, timeout: float = 30) -> None:
    """Stop the session and, when this process launched its JVM, the JVM too: stopping a
    session leaves the JVM (and its Python workers) running until this process exits."""
    from pyspark import SparkContext

    spark.stop()
    if under_spark_submit():
        return  # spark-submit's JVM: it ends it
    gateway: Any = SparkContext._gateway
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    SparkContext._gateway = None
    SparkContext._jvm = None
    gateway.shutdown()
    if process is not None:
        # The JVM ends when its standard input closes (pyspark launches it that way).
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout)
        except Exception:  # subprocess.TimeoutExpired: not waiting any longer
            process.kill()
            process.wait(timeout)
