"""Cohort scoring: `heartml score` against the pandas + scikit-learn script, on the same files.

Synthetic cohorts are drawn (with replacement, seeded) from the UCI rows the API accepts, every
downloaded site, and written as Parquet (an ``id`` and the 13 features, float64 with nulls)
under a temporary folder that is removed at the end. For each size (default 10^6 and 10^7):

* ``heartml score IN --out OUT --keep id`` as a process, with the champion;
* what a data scientist would write: ``pd.read_parquet`` → the registered scikit-learn
  pipeline's ``predict_proba`` → ``to_parquet`` of id and probability, as a process;

each timed from reading the input to the output written (the run; the process's start-up —
imports, the registry, the model's download — is printed apart: it does not grow with the
rows), with its peak RSS and CPU time. Then the other candidates' rows per CPU-second at the
first size, and the probabilities of every UCI row through a real `heartml serve`
(``/predict``), through `heartml score`, and (once it exists) through Spark, which must agree
to 1e-6.

Targets (2 cores): at every size, the run ≥ 1,000,000 rows/s and ≥ 5× the pandas script for the
logistic champion; peak RSS ≤ 600 MB and within 15 % between the sizes; every probability within
1e-6; ``heartml score --explain`` of the first size ≥ 300,000 rows/s.

    .venv/bin/python bench/cohort.py [--rows 1000000 --rows 10000000]   (after make pipeline)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets import Targets

HOST = "127.0.0.1"
RSS_BOUND_MB = 600.0
SAME_RSS = 0.15  # "about the same" peak at 10^6 and 10^7 rows
EXPLAIN_ROWS_PER_S = 300_000  # heartml score --explain, the champion (issue 21)

PANDAS_SCRIPT = """
import sys, time
import mlflow.sklearn, pandas as pd
from heartml.data.schema import FEATURE_NAMES
model = mlflow.sklearn.load_model(sys.argv[1])
started = time.perf_counter()
frame = pd.read_parquet(sys.argv[2])
probability = model.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]
pd.DataFrame({"id": frame["id"], "probability": probability}).to_parquet(sys.argv[3])
print(f"run {time.perf_counter() - started:.6f}")
"""


@dataclass(frozen=True)
class Measured:
    """One process: its run (read to written), its whole life, peak RSS and CPU time."""

    rows: int
    run_s: float
    wall_s: float
    peak_mb: float
    cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.run_s

    startup_cpu_s: float = 0.0  # the same command's CPU time on a 10-row file

    @property
    def rows_per_cpu_s(self) -> float:
        """Rows per CPU-second of the run: per core, whatever the neighbours do."""
        return self.rows / max(self.cpu_s - self.startup_cpu_s, 1e-9)

    def line(self, name: str) -> str:
        return (
            f"  {name:<28} {self.rows_per_s:>12,.0f} rows/s (run {self.run_s:6.2f} s, process "
            f"{self.wall_s:6.2f} s), peak RSS {self.peak_mb:6.0f} MB, "
            f"{self.rows_per_cpu_s:>11,.0f} rows per CPU-second"
        )


def measure(
    command: list[str], env: dict[str, str], rows: int, run_s: Any, startup: float = 0.0
) -> Measured:
    """Run ``command``; ``run_s(stdout)`` reads the run's seconds from what it printed.

    Its peak RSS (the largest of it and its children) and CPU time come from wait4, in a
    small launcher that forks it: a process started from this one directly inherits this
    one's peak (Linux carries the parent's high-water mark through vfork and exec), and this
    one has just written a cohort of 10^7 rows (~500 MB).
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as usage_file,
    ):
        started = time.perf_counter()
        launcher = [sys.executable, "-c", LAUNCHER, usage_file.name, *command]
        process = subprocess.run(launcher, env=env, stdout=out, stderr=err, check=False)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            sys.exit(f"error: {' '.join(command[2:5])} failed: {err.read().decode()[-2000:]}")
        seconds = run_s(out.read().decode())
        peak_kb, cpu = (float(v) for v in usage_file.read().split())
    return Measured(rows, seconds, wall, peak_kb / 1024, cpu, startup)


# Forks and waits for the command, then writes its peak RSS (KB) and CPU seconds to argv[1].
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def startup_cpu(command: list[str], env: dict[str, str], run_s: Any) -> float:
    """The CPU time of ``command`` on a 10-row file: its start-up, taken off the runs'."""
    return measure(command, env, 10, run_s).cpu_s


def heartml_run_s(stdout: str) -> float:
    # "rows read 1,000,000 = ... (1,234,567 rows/s, ...": the run's rate, as the summary says.
    match = re.search(r"rows read ([\d,]+) .*?\(([\d,]+) rows/s", stdout)
    if match is None:
        sys.exit(f"error: no summary line in {stdout!r}")
    return int(match[1].replace(",", "")) / int(match[2].replace(",", ""))


def pandas_run_s(stdout: str) -> float:
    return float(stdout.rsplit("run ", maxsplit=1)[-1])


def valid_uci_rows(settings: Any) -> Any:
    """Every UCI row (of the downloaded sites) the API accepts, float64, schema order."""
    import pyarrow as pa

    from heartml.data.download import ALL_SITES, DataError, verified_files
    from heartml.data.schema import FEATURE_NAMES
    from heartml.data.validate import load_dataset
    from heartml.scoring.columns import check_batch

    sites = []
    for site in ALL_SITES:
        try:
            verified_files(settings, (site,))
            sites.append(site)
        except DataError:
            continue
    frame = load_dataset(settings, sites).frame
    rows = frame[list(FEATURE_NAMES)].to_numpy(dtype="float64")
    table = pa.table(
        {f: pa.array(rows[:, i], from_pandas=True) for i, f in enumerate(FEATURE_NAMES)}
    )
    return rows, check_batch(table), sites


def write_cohort(rows: Any, count: int, path: Path, seed: int = 20) -> None:
    """``count`` rows drawn from ``rows`` with replacement, with an id, as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from heartml.data.schema import FEATURE_NAMES

    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), *((name, pa.float64()) for name in FEATURE_NAMES)])
    step = 1_000_000
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, step):
            size = min(step, count - start)
            picked = rows[rng.integers(0, len(rows), size)]
            arrays = [pa.array(np.arange(start, start + size, dtype=np.int64))]
            arrays += [pa.array(picked[:, i], from_pandas=True) for i in range(len(FEATURE_NAMES))]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def predict_all(env: dict[str, str], records: list[dict[str, Any]], work: Path) -> list[float]:
    """P(disease) of each record from a real `heartml serve`'s /predict."""
    port = free_port()
    log = work / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "heartml", "serve", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit(f"error: heartml serve not ready; see {log}")
            time.sleep(0.25)
        answers = []
        for record in records:
            request = urllib.request.Request(
                f"{url}/predict",
                json.dumps(record).encode(),
                {"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append(float(json.load(response)["probability"]))
        return answers
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)


def spark_probabilities(
    source: Path, work: Path, cohort: Path, model_dir: Path, champion: Any, targets: Targets
) -> list[float] | None:
    # ---- SPARK HOOK: bench/cohort_spark.py ------------------------------------------------
    # heartml's Spark scorer against mlflow.pyfunc.spark_udf on ``cohort`` (local[2], target
    # ≥ 3×), and the probabilities of ``source`` (every UCI row) scored on Spark, by id.
    from cohort_spark import spark_half

    return spark_half(source, cohort, model_dir, champion, work, targets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="cohort size (repeat)")
    parser.add_argument("--keep-files", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000, 10_000_000]

    import numpy as np
    import pyarrow.parquet as pq

    from heartml.data.schema import FEATURE_NAMES, FEATURES
    from heartml.registry import read_family
    from heartml.scoring.model import ModelChoice, download_model
    from heartml.settings import Settings

    settings = Settings()
    family = read_family(settings)
    champion = family.champion
    if champion is None:
        sys.exit("error: no champion in the registry: run `make pipeline` first")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    work = Path(tempfile.mkdtemp(prefix="heartml-cohort-"))
    targets = Targets("cohort")
    try:
        all_rows, checked, sites = valid_uci_rows(settings)
        valid = checked.rows
        print(f"cohorts drawn from the {len(valid)} UCI rows the API accepts ({', '.join(sites)})")
        model_dir = download_model(settings, ModelChoice(champion, "champion"), work / "model")
        heartml_cmd = [sys.executable, "-m", "heartml", "score"]
        tiny = work / "tiny.parquet"
        write_cohort(valid, 10, tiny)

        def heartml_args(source: Path, *more: str) -> list[str]:
            return [*heartml_cmd, str(source), "--out", str(work / "scored.parquet"), *more]

        def pandas_args(source: Path) -> list[str]:
            out = str(work / "pandas.parquet")
            return [sys.executable, "-c", PANDAS_SCRIPT, str(model_dir), str(source), out]

        ours_startup = startup_cpu(heartml_args(tiny, "--keep", "id"), env, heartml_run_s)
        theirs_startup = startup_cpu(pandas_args(tiny), env, pandas_run_s)
        results: dict[int, tuple[Measured, Measured]] = {}
        for size in sizes:
            source = work / f"cohort-{size}.parquet"
            write_cohort(valid, size, source)
            print(f"{size:,} rows ({source.stat().st_size / 2**20:.0f} MB), {champion.ref}:")
            ours = measure(
                heartml_args(source, "--keep", "id"), env, size, heartml_run_s, ours_startup
            )
            print(ours.line("heartml score"), flush=True)
            theirs = measure(pandas_args(source), env, size, pandas_run_s, theirs_startup)
            print(theirs.line("pandas + scikit-learn"), flush=True)
            results[size] = (ours, theirs)
            if size != sizes[0]:
                source.unlink()

        first = sizes[0]
        source = work / f"cohort-{first}.parquet"
        explained = measure(
            heartml_args(source, "--keep", "id", "--explain"), env, first, heartml_run_s
        )
        print(explained.line(f"heartml score --explain, {first:,} rows"), flush=True)
        print(f"other candidates at {first:,} rows (rows per CPU-second of the run: per core):")
        for model in family.models:
            version = model.versions[0]
            if version.name == champion.name:
                continue
            chosen = ("--model", version.ref)
            startup = startup_cpu(heartml_args(tiny, *chosen), env, heartml_run_s)
            source = work / f"cohort-{first}.parquet"
            other = measure(heartml_args(source, *chosen), env, first, heartml_run_s, startup)
            print(other.line(version.ref), flush=True)

        # Parity on every UCI row the data holds: the API, heartml score, Spark.
        uci = work / "uci.parquet"
        import pyarrow as pa

        table = {"id": pa.array(np.arange(len(all_rows)))}
        table |= {
            f: pa.array(all_rows[:, i], from_pandas=True) for i, f in enumerate(FEATURE_NAMES)
        }
        pq.write_table(pa.table(table), uci)
        scored_path = work / "uci-scored.parquet"
        subprocess.run(
            [*heartml_cmd, str(uci), "--out", str(scored_path), "--keep", "id"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        scored = pq.read_table(scored_path).to_pydict()
        by_id = dict(zip(scored["id"], scored["probability"], strict=True))
        accepted = [i for i in range(len(all_rows)) if i in by_id]
        records = [
            {
                f.name: (int(v) if f.integer else float(v))
                for f, v in zip(FEATURES, all_rows[i], strict=True)
                if not np.isnan(v)
            }
            for i in accepted
        ]
        served = predict_all(env, records, work)
        mine = [by_id[i] for i in accepted]
        api_gap = float(np.max(np.abs(np.array(served) - np.array(mine))))
        print(
            f"parity on {len(accepted)} UCI rows ({len(all_rows) - len(accepted)} refused by "
            f"both): max |/predict - heartml score| = {api_gap:.2e}"
        )
        spark = spark_probabilities(
            uci, work, work / f"cohort-{first}.parquet", model_dir, champion, targets
        )
        if spark is None:
            print("spark: not measured (the Spark engine is not in this tree): see SPARK HOOK")

        # Every size's rate and ratio: a larger cohort amortises a run's fixed costs (the first
        # batch read and scored before the three threads overlap), so each size says its own.
        for size, (ours, theirs) in results.items():
            targets.at_least(
                f"rows/s at {size:,} rows", ours.rows_per_s, 1_000_000, unit=" rows/s", spec=",.0f"
            )
            targets.at_least(
                f"vs pandas + scikit-learn at {size:,} rows",
                ours.rows_per_s / theirs.rows_per_s, 5.0, unit="x", spec=".1f",
            )  # fmt: skip
        targets.at_least(
            f"heartml score --explain at {first:,} rows",
            explained.rows_per_s, EXPLAIN_ROWS_PER_S, unit=" rows/s", spec=",.0f",
        )  # fmt: skip
        for size, (run, _) in results.items():
            targets.at_most(f"peak RSS at {size:,} rows", run.peak_mb, RSS_BOUND_MB, unit=" MB")
        if len(results) > 1:
            peaks = [run.peak_mb for run, _ in results.values()]
            spread = max(peaks) / min(peaks) - 1
            targets.at_most("peak RSS growth across sizes", spread * 100, SAME_RSS * 100, unit=" %")
        targets.at_most("max |/predict - heartml score|", api_gap, 1e-6, spec=".1e")
        if spark is not None:
            spark_gap = float(np.max(np.abs(np.array(spark)[accepted] - np.array(mine))))
            print(f"max |Spark - heartml score| on the same rows = {spark_gap:.2e}")
            targets.at_most("max |Spark - heartml score|", spark_gap, 1e-6, spec=".1e")
        return targets.finish()
    finally:
        if args.keep_files:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
