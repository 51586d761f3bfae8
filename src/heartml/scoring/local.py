"""A cohort scored on one machine: files in, Arrow batches through the ONNX engine, files out.

The input (a CSV file, a Parquet file or a directory of Parquet files) is streamed as record
batches (``pyarrow.parquet``, ``pyarrow.dataset`` for CSV), so memory holds a few batches
whatever the input's size. Each
batch is checked (:mod:`heartml.scoring.columns`), scored by the model's engine on the whole
batch at once, and written (:mod:`heartml.scoring.output`) by a Parquet (or CSV) writer.
Three threads take turns on each batch: one reads, decodes and checks it, the caller's scores
it, one encodes and writes it, so the three stages of consecutive batches overlap (pyarrow,
numpy's array operations and ONNX Runtime release the GIL).

Nothing appears half-written: the output and the rejects file are written into unnamed files
in the target's directory (``O_TMPFILE``) and linked into place only when the last batch is
written, so a run killed at any point, even by SIGKILL, leaves no file behind; on a file system
without unnamed files they are ``NAME.partial-PID`` files, removed when the run fails or is
stopped. A rerun on the same input writes the same bytes (with the same ``scored_at``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from heartml.data.schema import FEATURE_NAMES
from heartml.errors import UserError, one_line
from heartml.scoring.columns import CSV_NULLS, CheckedBatch, check_batch, missing_required
from heartml.scoring.output import (
    FEW_VALUED_COLUMNS,
    RunStamp,
    build_output,
    build_rejects,
    check_keep,
    explanation_schema,
    output_schema,
    rejects_schema,
    with_explanation,
)

if TYPE_CHECKING:
    import pyarrow.dataset as ds

    from heartml.model.engine import Engine
    from heartml.model.explain import Explainer

# Rows per batch, measured (1e6 rows, logistic regression, rows per CPU-second): 65,536 rows
# 1.33 M, 131,072 1.13 M, 262,144 1.06 M, and the peak RSS grows with it (438, 530, 662 MB):
# per-batch costs are gone at 65,536, and larger batches only leave the caches.
BATCH_ROWS = 65_536
# Parquet compression of the output, measured: zstd costs the same CPU as snappy (1.14 M vs
# 1.16 M rows per CPU-second) for a file 40 % smaller (4.9 vs 8.1 MB per million rows); no
# compression saves little CPU for 12.3 MB.
COMPRESSION = "zstd"
REJECTS_SUFFIX = ".rejects.csv"
_T = TypeVar("_T")
# Rows per run of the model's graph, by model type, where a batch at once would not fit: the
# ONNX form of k-nearest neighbours holds several (rows × training rows) float64 matrices of
# distances, and versions converted before heartml computed them by one matrix product hold
# each row's difference to every training row (× 13 columns: 4 GB for 131,072 rows).
ENGINE_ROWS: dict[str, int] = {"knn": 2048}


class ScoringError(UserError):
    """The input cannot be read or scored, or the output cannot be written; one line."""


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """What a run did: rows read = scored + rejected, and where it wrote them."""

    read: int
    scored: int
    rejected: int
    rejects_lines: int
    output: Path
    rejects: Path
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def rejects_path(output: Path) -> Path:
    """Where the rejects of ``output`` go: beside it, ``STEM.rejects.csv``."""
    return output.with_name(output.stem + REJECTS_SUFFIX)


def open_input(source: Path) -> ds.Dataset:
    """The input as a dataset: a CSV file, a Parquet file or a directory of Parquet files."""
    import pyarrow.dataset as ds

    if not source.exists():
        raise ScoringError(f"{source}: no such file or directory")
    try:
        if source.is_dir():
            files = sorted(
                str(p)
                for p in source.rglob("*")
                if p.is_file()
                and p.suffix in (".parquet", ".pq")
                and not p.name.startswith((".", "_"))
            )
            if not files:
                raise ScoringError(f"{source}: no Parquet file (*.parquet) in the directory")
            return ds.dataset(files, format="parquet")
        suffix = source.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return ds.dataset(str(source), format="parquet")
        if suffix == ".csv":
            return ds.dataset(str(source), format=_csv_format())
    except pa.ArrowException as exc:
        raise ScoringError(
            f"{source}: not a readable {_kind(source)} ({one_line(exc, 160)})"
        ) from exc
    raise ScoringError(f"{source}: give a .csv or .parquet file, or a directory of Parquet files")


def _kind(source: Path) -> str:
    return "CSV file" if source.suffix.lower() == ".csv" else "Parquet file"


def _csv_format() -> ds.CsvFileFormat:
    import pyarrow.dataset as ds
    from pyarrow import csv

    # Features are read as text and read as numbers by the checks, so one bad cell refuses
    # its row instead of stopping the reader at the block that holds it.
    convert = csv.ConvertOptions(
        null_values=list(CSV_NULLS),
        strings_can_be_null=True,
        column_types=dict.fromkeys(FEATURE_NAMES, pa.string()),
    )
    return ds.CsvFileFormat(
        convert_options=convert, read_options=csv.ReadOptions(block_size=32 << 20)
    )


def _batches(
    dataset: ds.Dataset, columns: list[str], rows: int, keep: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    if _is_parquet(dataset):
        yield from _parquet_batches(dataset.files, columns, rows, keep)
        return
    # A CSV file: one batch read ahead (pyarrow's default of 16 would hold hundreds of MB).
    scanner = dataset.scanner(
        columns=columns, batch_size=rows, batch_readahead=1, fragment_readahead=1
    )
    yield from scanner.to_batches()


def _parquet_batches(
    files: list[str], columns: list[str], rows: int, keep: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """The files' batches, one file, one row group and one batch at a time.

    ``ParquetFile.iter_batches`` decodes a batch's worth of each column chunk at a time,
    where the dataset scanner's read-ahead of whole row groups held 270 and 500 MB at 10^6
    and 10^7 rows (files of 1,000,000-row groups). Called once for the whole file it keeps
    every row group's column chunks it has read until the file is closed (Arrow held 101 MB
    after 10^7 rows, 11 MB after 10^6): one call per row group lets each go, so the reading
    stays at ~11 MB whatever the file's length, at the same speed.
    """
    import pyarrow.parquet as pq

    for path in files:
        reader = pq.ParquetFile(path, buffer_size=1 << 20)
        names = reader.schema_arrow.names
        absent = missing_required(names) + [n for n in keep if n not in names]
        if absent:
            raise ScoringError(f"{path}: no column {', '.join(absent)}")
        here = [n for n in columns if n in names]
        yield from _rebatched(
            (
                batch
                for group in range(reader.num_row_groups)
                for batch in reader.iter_batches(
                    batch_size=rows, row_groups=[group], columns=here, use_threads=True
                )
            ),
            rows,
        )


def _rebatched(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in order, with no batch under half of ``rows`` but where a long run of
    them cannot be helped (a file's last). A file's row groups end its batches, and a file of
    small row groups would otherwise be scored, and written, in small pieces; batches of at
    least half pass through uncopied (a large group's last batch too)."""
    import pyarrow as pa

    half = max(1, rows // 2)
    pending: list[pa.RecordBatch] = []
    count = 0

    def joined() -> pa.RecordBatch:
        if len(pending) == 1:
            return pending[0]
        return pa.Table.from_batches(pending).combine_chunks().to_batches()[0]

    for batch in batches:
        if batch.num_rows >= half:
            if count:
                yield joined()
            pending, count = [], 0
            yield batch
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= half:
            yield joined()
            pending, count = [], 0
    if count:
        yield joined()


def _checked(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, CheckedBatch]]:
    """Each batch with its checks, its rows numbered from the first of the input."""
    read = 0
    for batch in batches:
        checked = check_batch(batch, first_row=read + 1)
        read += checked.read
        yield batch, checked


def _is_parquet(dataset: ds.Dataset) -> bool:
    import pyarrow.dataset as pads

    return isinstance(dataset, pads.FileSystemDataset) and isinstance(
        dataset.format, pads.ParquetFileFormat
    )


def _prefetched(batches: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``batches``, read ahead in a thread: decoding and checking the next overlaps scoring
    this one."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        slots.put(batch, timeout=0.1)
                        break
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed over to the consumer, which raises it
            slots.put(exc)

    reader = threading.Thread(target=read, name="heartml-score-read", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(5)


def _link_following(source: str, target: Path) -> None:
    """``linkat(AT_SYMLINK_FOLLOW)``: give the unnamed file behind ``/proc/self/fd/N`` a name.

    ``os.link`` calls ``link()``, which would link the /proc symlink itself (EXDEV).
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), at_symlink_follow):
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(target))


class AsideFile:
    """A file written out of sight and put in place at once by :meth:`commit`."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.partial: Path | None = None
        directory = target.parent
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
            self.path = f"/proc/self/fd/{self.fd}"
        except (OSError, AttributeError):
            self.partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            self.fd = os.open(self.partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
            self.path = str(self.partial)

    def commit(self) -> None:
        """Put the written file in place of the target (replacing any older one)."""
        if self.partial is None:
            staged = self.target.with_name(f".{self.target.name}.{os.getpid()}.link")
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            _link_following(self.path, staged)
            staged.replace(self.target)
        else:
            self.partial.replace(self.target)
            self.partial = None

    def close(self) -> None:
        """Close; an uncommitted file vanishes (unnamed) or is removed (partial)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.partial is not None:
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns a Parquet dictionary is worth building for: the output's few-valued ones,
    and kept columns the input itself dictionary-encodes. A column of nearly distinct values
    (probabilities, patient ids) would have one built and given up in every row group:
    measured on 10^6 scored rows, writing the probabilities and ids without took 20 % less
    CPU and gave a file 20 % smaller."""
    return [
        field.name
        for field in schema
        if field.name in FEW_VALUED_COLUMNS
        or field.name == "prediction"  # 0 or 1
        or pa.types.is_dictionary(field.type)
    ]


class _Writer:
    """Batches into a Parquet or CSV file (by the target's extension), encoded and written in
    a thread of its own: pyarrow releases the GIL, so writing one batch overlaps scoring the
    next."""

    def __init__(self, aside: AsideFile, schema: pa.Schema, csv: bool, depth: int = 2) -> None:
        self.sink = pa.OSFile(aside.path, "wb")
        if csv:
            from pyarrow import csv as pacsv

            self.writer: Any = pacsv.CSVWriter(self.sink, schema)
        else:
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(
                self.sink,
                schema,
                compression=COMPRESSION,
                use_dictionary=dictionary_columns(schema),
            )
        self.slots: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="heartml-score-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.slots.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_batch(batch)
                except BaseException as exc:  # raised in the scoring thread at its next write
                    self.error = exc

    def write(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.error
        if batch.num_rows:
            self.slots.put(batch)

    def close(self) -> None:
        """Write what is queued, then the file's footer; raises what the writing raised."""
        self.slots.put(None)
        self.thread.join()
        try:
            if self.error is not None:
                raise self.error
            self.writer.close()
        finally:
            self.sink.close()


def _output_format(output: Path) -> bool:
    """True for CSV, False for Parquet; anything else refused."""
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ScoringError(f"--out {output}: give a .parquet or .csv file name")
    if output.is_dir():
        raise ScoringError(f"--out {output} is a directory: give a file name")
    if not output.parent.is_dir():
        raise ScoringError(f"--out {output}: no directory {output.parent}")
    return suffix == ".csv"


def score_files(
    source: Path,
    output: Path,
    engine: Engine,
    stamp: RunStamp,
    keep: tuple[str, ...] = (),
    *,
    batch_rows: int = BATCH_ROWS,
    engine_rows: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    explainer: Explainer | None = None,
) -> ScoreResult:
    """Score every row of ``source`` into ``output`` and its rejects file (see the module);
    with ``explainer``, each row's explanation too (:func:`explanation_schema`'s columns)."""
    started = time.perf_counter()
    csv_out = _output_format(output)
    dataset = open_input(source)
    names = dataset.schema.names
    if missing := missing_required(names):
        raise ScoringError(
            f"{source}: no column {', '.join(missing)} (required; the columns are the schema's "
            "feature names, see `heartml data schema`)"
        )
    keep = check_keep(names, keep)
    columns = [n for n in names if n in FEATURE_NAMES or n in keep]
    kept_schema = pa.schema([dataset.schema.field(n) for n in names if n in keep])
    scored_schema = output_schema(kept_schema, keep, dictionary=not csv_out)
    schema = scored_schema if explainer is None else explanation_schema(scored_schema)
    # Only a progress bar needs the total (reading every footer: 10-20 ms on 10^6 rows).
    total = _count_rows(dataset, source) if progress is not None else None

    read = scored = rejected = lines = 0
    out_file, rejects_file = AsideFile(output), AsideFile(rejects_path(output))
    try:
        writer = _Writer(out_file, schema, csv_out)
        rejects = _Writer(rejects_file, rejects_schema(), csv=True)
        try:
            for batch, checked in _prefetched(
                _checked(_batches(dataset, columns, batch_rows, keep))
            ):
                if checked.scored:
                    probabilities = _predict(engine, checked.rows, engine_rows)
                    out = build_output(batch, checked, probabilities, stamp, scored_schema)
                    if explainer is not None:
                        why = explainer.explain(checked.rows)
                        out = with_explanation(
                            out, why.base, why.log_odds, why.contributions, schema
                        )
                    writer.write(out)
                if checked.rejections:
                    rejects.write(build_rejects(checked))
                read += checked.read
                scored += checked.scored
                rejected += checked.rejected
                lines += len(checked.rejections)
                if progress is not None:
                    progress(read, total)
        except pa.ArrowException as exc:
            raise ScoringError(
                f"{source}: cannot read row {read + 1} on ({one_line(exc, 160)})"
            ) from exc
        finally:
            writer.close()
            rejects.close()
        out_file.commit()
        rejects_file.commit()
    finally:
        out_file.close()
        rejects_file.close()
    return ScoreResult(
        read,
        scored,
        rejected,
        lines,
        output,
        rejects_path(output),
        time.perf_counter() - started,
    )


def _predict(engine: Engine, rows: Any, chunk: int | None) -> Any:
    if chunk is None or len(rows) <= chunk:
        return engine.predict_proba(rows)
    import numpy as np

    return np.concatenate(
        [engine.predict_proba(rows[start : start + chunk]) for start in range(0, len(rows), chunk)]
    )


def _count_rows(dataset: ds.Dataset, source: Path) -> int | None:
    """Parquet files say how many rows they hold (footers only); a CSV file would be read."""
    import pyarrow.dataset as pads

    if (
        not isinstance(dataset, pads.FileSystemDataset)
        or dataset.format.default_extname != "parquet"
    ):
        return None
    try:
        return int(dataset.count_rows())
    except pa.ArrowException as exc:
        raise ScoringError(f"{source}: not a readable Parquet file ({one_line(exc, 160)})") from exc
