"""Cohort scoring on Apache Spark (local[2]) over a real trained registry: every UCI row scored
as `heartml score` on one machine and `/predict` score it, the same columns, the same refusals,
a failed task retried to the same output, `--engine spark` end to end, and no JVM left behind.

One Spark session serves the whole module (starting a JVM takes seconds). PySpark and Java are
installed by `make install`: when either is missing the module fails, it does not skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from test_score import as_table, running, uci_rows

from conftest import HEARTML, invoke_heartml, make_settings, one_line_error, settings_env
from heartml.data.schema import FEATURE_NAMES
from heartml.scoring.model import download_model, resolve_model
from heartml.scoring.output import OUTPUT_COLUMNS, RunStamp
from heartml.settings import Settings

pytestmark = pytest.mark.slow

STAMP = "2026-01-31T02:00:00Z"
SCORED_AT = datetime(2026, 1, 31, 2, 0, tzinfo=UTC)
TOLERANCE = 1e-6


def _java_processes(marker: str) -> list[int]:
    """The processes whose environment holds ``marker``: a JVM a test started, if it lives."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and b"java" in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    # Imported here, not skipped on ImportError: a failed install must fail these tests.
    from pyspark import SparkContext

    from heartml.scoring.spark import spark_session, stop_session

    marker = f"heartml-test-{uuid.uuid4().hex}"
    os.environ["TEST_JVM_MARKER"] = marker  # inherited by the JVM this session launches
    # These tests move a few thousand rows: the JVM's optimising compiler and parallel GC
    # would spend a third of the file's CPU on a run this short.
    os.environ["PYSPARK_SUBMIT_ARGS"] = (
        "--driver-java-options '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC' pyspark-shell"
    )
    # local[2,2]: two cores, and a task may fail once (spark.task.maxFailures = 2).
    session = spark_session("local[2,2]")
    jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
    try:
        yield session
    finally:
        stop_session(session)
        os.environ.pop("TEST_JVM_MARKER", None)
        os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
        assert jvm.poll() is not None, "the JVM outlived its session"
        assert _java_processes(marker) == []


@pytest.fixture(scope="module")
def store(trained_root: Path, mirror: Path) -> Settings:
    """The trained store, read only."""
    return make_settings(trained_root, mirror)


@pytest.fixture(scope="module")
def model(store: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from heartml.scoring.spark import spark_model

    choice = resolve_model(store, "champion")
    directory = download_model(store, choice, tmp_path_factory.mktemp("model"))
    version = choice.version
    return spark_model(
        directory, RunStamp(version.name, version.version, choice.site_adapted, SCORED_AT)
    )


@pytest.fixture(scope="module")
def cohort(store: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every UCI row (four sites), and a few broken ones, as a Parquet file with an id."""
    records = uci_rows(store)
    records += [
        {**records[0], "cp": 0},
        {**records[0], "thal": 2, "age": 17},
        {**records[0], "age": 63.5},
        {k: v for k, v in records[0].items() if k != "thalach"},
    ]
    path = tmp_path_factory.mktemp("cohort") / "cohort.parquet"
    pq.write_table(as_table(records), path, row_group_size=100)  # Spark splits it by these
    return path


@pytest.fixture(scope="module")
def local_scored(store: Settings, cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same cohort through `heartml score` on one machine, as a real process."""
    out = tmp_path_factory.mktemp("local") / "scored.parquet"
    result = subprocess.run(
        [*HEARTML, "score", str(cohort), "--out", str(out), "--keep", "id", "--scored-at", STAMP],
        env=settings_env(store),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def _read(path: Path) -> pa.Table:
    """A file, or a directory of part files (Spark's), as one table in id order."""
    if path.is_dir():
        table = pads.dataset(str(path), format="parquet").to_table()
    else:
        table = pq.read_table(path)
    rows = sorted(table.to_pylist(), key=lambda r: int(r["id"][1:]))
    return pa.Table.from_pylist(rows, schema=table.schema)


@contextmanager
def small_parts(spark: Any, batch_rows: int) -> Iterator[None]:
    """Partitions of a few row groups (in the file's order) and small Arrow batches, so that a
    small cohort spans partitions and batches as a large one does."""
    settings = {
        "spark.sql.files.maxPartitionBytes": "8192",
        "spark.sql.files.openCostInBytes": "0",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_rows),
    }
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in settings:
            spark.conf.unset(key)


def _fail_first_attempt(partition: int, marker: Path) -> Any:
    """A mapInArrow function passing batches through, that fails ``partition``'s first attempt
    after its first batch (the task dies half-way through its output), leaving ``marker``."""

    def passthrough(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        assert context is not None
        for number, batch in enumerate(batches):
            if number == 1 and context.partitionId() == partition and context.attemptNumber() == 0:
                marker.touch()
                raise RuntimeError("injected failure of a first attempt")
            yield batch

    return passthrough


def test_every_uci_row_as_local_and_predict(
    spark: Any, model: Any, store: Settings, cohort: Path, local_scored: Path, tmp_path: Path
) -> None:
    from heartml.scoring.spark import AsideDir, score_dataframe, write_frame

    with small_parts(spark, 64):
        frame = spark.read.parquet(str(cohort))
        assert frame.rdd.getNumPartitions() >= 3
        scoring = score_dataframe(frame, model, ["id"])
        target = tmp_path / "scored.parquet"
        aside = AsideDir(spark, str(target))
        write_frame(scoring.scored, aside.path, csv=False)
        aside.commit()
    on_spark, local = _read(target), _read(local_scored)

    # The same columns, of the same types (the local file's text columns are dictionaries).
    assert on_spark.column_names == local.column_names == ["id", *OUTPUT_COLUMNS]
    assert on_spark.schema.field("probability").type == pa.float64()
    assert on_spark.schema.field("prediction").type == pa.int8()
    assert on_spark.schema.field("model_version").type == pa.int32()
    assert on_spark.schema.field("site_adapted").type == pa.bool_()
    assert on_spark.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert on_spark.num_rows == local.num_rows > 800
    assert on_spark.column("id").to_pylist() == local.column("id").to_pylist()
    for name in ("prediction", "imputed", "model_name", "model_version", "site_adapted"):
        assert on_spark.column(name).to_pylist() == local.column(name).to_pylist(), name
    assert set(on_spark.column("scored_at").to_pylist()) == {SCORED_AT}
    spark_p = on_spark.column("probability").to_pylist()
    local_p = local.column("probability").to_pylist()
    assert max(abs(a - b) for a, b in zip(spark_p, local_p, strict=True)) <= TOLERANCE

    # /predict answers the same for every row Spark scored (same id = same input row).
    records = uci_rows(store)
    with running(store) as url, httpx.Client(base_url=url, timeout=30) as client:
        for row_id, probability in zip(on_spark.column("id").to_pylist(), spark_p, strict=True):
            answer = client.post("/predict", json=records[int(row_id[1:]) - 1]).json()
            assert abs(answer["probability"] - probability) <= TOLERANCE, row_id

    # The refusals: the same rows, fields and messages as the local rejects file.
    read, scored, rejected = scoring.counts()
    assert (read, scored, rejected) == (len(records) + 4, on_spark.num_rows, read - scored)
    assert rejected >= 4  # the broken rows, and the UCI rows /predict refuses too
    local_rejects = pacsv.read_csv(local_scored.with_name("scored.rejects.csv"))
    assert scoring.rejections().to_pylist() == local_rejects.to_pylist()


def test_models_load_once_per_worker_without_scikit_learn(
    spark: Any, model: Any, cohort: Path
) -> None:
    from heartml.scoring.spark import score_dataframe

    with small_parts(spark, 50):
        frame = spark.read.parquet(str(cohort))
        assert frame.rdd.getNumPartitions() >= 3
        assert score_dataframe(frame, model, ["id"]).scored.count() > 800

    def inspect(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import sys

        from heartml.scoring import spark as module

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "pid": os.getpid(),
                    "sessions": module.sessions_built(),
                    "sklearn": "sklearn" in sys.modules,
                }
            ]
        )

    probes = (
        spark.range(8, numPartitions=8)
        .mapInArrow(inspect, "pid long, sessions long, sklearn boolean")
        .collect()
    )
    workers = {row.pid: row for row in probes}
    # local[2]: two Python workers at most, reused by every task of every job: each built the
    # session once, for 6 partitions × several batches, and imported no scikit-learn.
    assert 1 <= len(workers) <= 2
    assert all(row.sessions <= 1 for row in workers.values())
    assert any(row.sessions == 1 for row in workers.values())
    assert not any(row.sklearn for row in workers.values())


def test_python_batches_are_bounded_by_rows_unless_configured(spark: Any) -> None:
    from heartml.scoring.spark import (
        ARROW_BYTES_PER_BATCH,
        NO_BYTE_LIMIT,
        configure_session,
    )

    # The per-row byte check is off in heartml's session; the rows per batch bound the batch.
    assert spark.conf.get(ARROW_BYTES_PER_BATCH) == NO_BYTE_LIMIT
    try:
        # A bound the session's own configuration sets is kept.
        spark.conf.set(ARROW_BYTES_PER_BATCH, "16m")
        configure_session(spark)
        assert spark.conf.get(ARROW_BYTES_PER_BATCH) == "16m"
    finally:
        spark.conf.unset(ARROW_BYTES_PER_BATCH)
        configure_session(spark)
    assert spark.conf.get(ARROW_BYTES_PER_BATCH) == NO_BYTE_LIMIT


def test_a_task_failing_once_is_retried_to_the_same_output(
    spark: Any, model: Any, cohort: Path, tmp_path: Path
) -> None:
    from heartml.scoring.spark import score_dataframe, write_frame

    with small_parts(spark, 100):
        frame = spark.read.parquet(str(cohort))
        clean = score_dataframe(frame, model, ["id"])
        write_frame(clean.scored, str(tmp_path / "clean.parquet"), csv=False)
        marker = tmp_path / "failed-once"
        failing = frame.mapInArrow(_fail_first_attempt(1, marker), frame.schema)
        retried = score_dataframe(failing, model, ["id"])
        write_frame(retried.scored, str(tmp_path / "retried.parquet"), csv=False)
    assert marker.exists(), "no task failed: the test proves nothing"
    assert _read(tmp_path / "retried.parquet").equals(_read(tmp_path / "clean.parquet"))
    assert retried.counts() == clean.counts()
    assert retried.rejections().equals(clean.rejections())


def test_engine_spark_from_the_command_line(
    spark: Any, store: Settings, cohort: Path, local_scored: Path, tmp_path: Path
) -> None:
    # In this process, on the module's session (the command stops only a session it started).
    out = tmp_path / "scored.csv"
    args = ["score", str(cohort), "--out", str(out), "--keep", "id", "--scored-at", STAMP]
    result = invoke_heartml(store, *args, "--engine", "spark")
    assert result.returncode == 0, result.stderr
    words = result.stdout.replace(",", "").split()
    read, scored, rejected = int(words[2]), int(words[5]), int(words[8])
    assert read == scored + rejected and rejected >= 4
    assert out.is_dir() and not list(tmp_path.glob("*.partial-*"))
    table = pads.dataset(str(out), format="csv").to_table()
    assert table.column_names == ["id", *OUTPUT_COLUMNS]
    assert table.num_rows == scored == pq.read_metadata(local_scored).num_rows
    local = {r["id"]: r["probability"] for r in pq.read_table(local_scored).to_pylist()}
    assert all(abs(local[r["id"]] - r["probability"]) <= TOLERANCE for r in table.to_pylist())
    rejects = pads.dataset(str(tmp_path / "scored.rejects.csv"), format="csv").to_table()
    local_rejects = pacsv.read_csv(local_scored.with_name("scored.rejects.csv"))
    assert rejects.to_pylist() == local_rejects.to_pylist()

    # A rerun replaces the output, with the same rows.
    again = invoke_heartml(store, *args, "--engine", "spark")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("(")[0] == result.stdout.split("(")[0]
    rescored = pads.dataset(str(out), format="csv").to_table()
    assert rescored.sort_by("id").equals(table.sort_by("id"))

    # A missing required column stops the run, one line, nothing written.
    no_age = tmp_path / "no-age.parquet"
    pq.write_table(pq.read_table(cohort).drop_columns(["age"]), no_age)
    failed = invoke_heartml(
        store, "score", str(no_age), "--out", str(tmp_path / "x.parquet"), "--engine", "spark"
    )
    one_line_error(failed, "no column age")
    assert not (tmp_path / "x.parquet").exists()
    assert not list(tmp_path.glob("*.partial-*"))


def test_engine_spark_reads_csv_as_the_local_engine(
    spark: Any, store: Settings, cohort: Path, local_scored: Path, tmp_path: Path
) -> None:
    # CSV in, read as the local engine reads it: "?" is a missing value.
    csv_in = tmp_path / "cohort.csv"
    pacsv.write_csv(pq.read_table(cohort), csv_in)
    text = re.sub(r"(?<=,)(?=,|$)", "?", csv_in.read_text(), flags=re.MULTILINE)
    assert text.count("?") > 100  # the UCI rows' missing values, spelt as UCI spells them
    csv_in.write_text(text)
    out = tmp_path / "scored.parquet"
    result = invoke_heartml(
        store, "score", str(csv_in), "--out", str(out), "--keep-features", "--engine", "spark"
    )
    assert result.returncode == 0, result.stderr
    table = pads.dataset(str(out), format="parquet").to_table()
    assert table.column_names == [*FEATURE_NAMES, *OUTPUT_COLUMNS]
    local = pq.read_table(local_scored)
    assert table.num_rows == local.num_rows
    assert sorted(table.column("probability").to_pylist()) == pytest.approx(
        sorted(local.column("probability").to_pylist()), abs=TOLERANCE
    )


def test_engine_spark_errors_before_starting_a_jvm(store: Settings, tmp_path: Path) -> None:
    def score(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HEARTML, "score", *args, "--engine", "spark"],
            env=settings_env(store),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    missing = score(str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o.parquet"))
    one_line_error(missing, "nope.parquet: no such file or directory")
    (tmp_path / "in.csv").write_text("age\n63\n")
    one_line_error(score(str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.txt")), ".parquet")
    unknown = score(str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv"), "--model", "x/9")
    one_line_error(unknown, "x")
    assert not list(tmp_path.glob("o.*"))
