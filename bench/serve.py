"""Benchmark heartml's API against `mlflow models serve` for the same champion.

It also loads every model of the family the way serving does and prints, for each, the engine
that serves it and its largest probability difference from the pipeline (target: 1e-5).

``--baseline-src DIR`` runs a second heartml from another source tree (the ``src`` of a
checkout of main, say) in the same run, to compare a change with what it replaces: single-row
req/s at c=8 at least 90 % of the baseline's, batch rows/s not lower.

Both servers run on loopback, with the same number of workers, serving the registry's current
champion; wrk drives them from a separate process with the same rows. For each server it
prints requests/s, p50 and p99 at concurrency 1, 8 and 64 for one patient per request
(heartml ``POST /predict``, MLflow ``POST /invocations``), rows/s for 1000-row batches, and
heartml's ``/predict`` against its own ``GET /health``. It ends with the issue's targets at
concurrency 8: at least 10x MLflow's throughput, p99 at most 10 ms, and ``/predict`` at
least 70 % of ``/health``.

    python bench/serve.py [--duration 5] [--workers 1] [--json results.json] [--baseline-src DIR]

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db): run `make pipeline` first.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from targets import Targets

HOST = "127.0.0.1"  # loopback only
CONCURRENCY = (1, 8, 64)
BATCH_ROWS = 1000


@dataclass(frozen=True)
class Run:
    server: str
    endpoint: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rows_per_request: int = 1

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: server exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"error: {url} not ready within {timeout:.0f} s; see {log}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with all its workers
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def sample_rows(count: int) -> list[dict[str, float]]:
    """Valid patients spread over the schema (no missing values: the API requires all 13)."""
    import numpy as np

    from heartml.data.schema import FEATURES, synthetic_rows

    rows = synthetic_rows(count * 2, seed=7)
    rows = rows[~np.isnan(rows).any(axis=1)][:count]
    return [
        {f.name: (int(v) if f.integer else float(v)) for f, v in zip(FEATURES, row, strict=True)}
        for row in rows
    ]


def lua_script(directory: Path, name: str, path: str, bodies: list[str]) -> Path:
    quoted = ",\n".join("[==[" + body + "]==]" for body in bodies)
    script = directory / f"{name}.lua"
    script.write_text(
        f"local bodies = {{\n{quoted}\n}}\n"
        "local i = 0\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "request = function()\n"
        "  i = (i % #bodies) + 1\n"
        f'  return wrk.format("POST", "{path}", headers, bodies[i])\n'
        "end\n" + _QUANTILES_LUA
    )
    return script


# When WRK_QUANTILES names a file, the run's request count and its latency at QUANTILES evenly
# spaced quantiles go there, so that several runs can be pooled (see pooled_percentile).
# (wrk 4.1's latency object answers percentile() but not the histogram itself.)
QUANTILES = 2000
_QUANTILES_LUA = f"""
done = function(summary, latency, requests)
  local path = os.getenv("WRK_QUANTILES")
  if path == nil then return end
  local out = assert(io.open(path, "w"))
  out:write(summary.requests, "\\n")
  for k = 1, {QUANTILES} do
    out:write(latency:percentile((k - 0.5) * 100 / {QUANTILES}), "\\n")
  end
  out:close()
end
"""


@dataclass(frozen=True)
class Quantiles:
    """One wrk run's request count and latencies (µs) at QUANTILES evenly spaced quantiles."""

    requests: int
    latencies_us: tuple[float, ...]

    @classmethod
    def read(cls, path: Path) -> Quantiles:
        count, *values = path.read_text().split()
        return cls(int(count), tuple(float(v) for v in values))


def pooled_percentile(runs: list[Quantiles], percent: float) -> float:
    """The ``percent`` latency (ms) of all the runs' requests together: each run's quantiles
    stand for equal shares of its requests."""
    import numpy as np

    values = np.concatenate([np.asarray(r.latencies_us) for r in runs])
    weights = np.concatenate(
        [np.full(len(r.latencies_us), r.requests / len(r.latencies_us)) for r in runs]
    )
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, cumulative[-1] * percent / 100))
    return float(values[order][min(index, len(values) - 1)]) / 1000


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def drive(
    url: str,
    concurrency: int,
    duration: float,
    script: Path | None,
    threads: int,
    prefix: tuple[str, ...] = (),
    quantiles: Path | None = None,
) -> tuple[float, float, float, int]:
    """One wrk run: requests/s, p50 ms, p99 ms, failed requests (non-2xx, socket errors).

    ``prefix`` runs wrk under another command (``taskset -c 0``, say); ``quantiles``: where a
    script of :func:`lua_script` writes the run's latency quantiles."""
    command = [
        *prefix,
        "wrk",
        f"-t{min(threads, concurrency)}",
        f"-c{concurrency}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    env = None if quantiles is None else {**os.environ, "WRK_QUANTILES": str(quantiles)}
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, env=env
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # The latency distribution lines ("     99%    1.23ms"), not the thread stats' "99.00%".
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return rps, p50, p99, errors


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post_json(url: str, payload: Any) -> Any:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def candidate_differences(settings: Any, rows: list[dict[str, float]]) -> dict[str, Any]:
    """For every model of the family (latest version): the engine serving would use, and its
    largest probability difference from the pipeline on every training row and ``rows``."""
    import mlflow.artifacts
    import mlflow.sklearn
    import numpy as np
    import pandas as pd

    from heartml.data.schema import FEATURE_NAMES
    from heartml.data.validate import load_dataset
    from heartml.model.engine import load_engine
    from heartml.registry import configure_mlflow, read_family
    from heartml.training.features import split_features_target

    configure_mlflow(settings)
    features, _ = split_features_target(load_dataset(settings).frame)
    sample = np.array([[r[c] for c in FEATURE_NAMES] for r in rows], dtype=np.float64)
    matrix = np.vstack([features.to_numpy(dtype=np.float64), sample])
    latest: dict[str, Any] = {}
    for version in read_family(settings).versions:
        if version.name not in latest or version.version > latest[version.name].version:
            latest[version.name] = version
    found = {}
    for name, version in sorted(latest.items()):
        pipeline = mlflow.sklearn.load_model(version.uri)
        expected = pipeline.predict_proba(pd.DataFrame(matrix, columns=list(FEATURE_NAMES)))
        with tempfile.TemporaryDirectory() as local:
            path = mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=local)
            engine = load_engine(Path(path))
        single = np.vstack([engine.predict_proba(matrix[i : i + 1]) for i in range(len(matrix))])
        gap = max(
            float(np.max(np.abs(engine.predict_proba(matrix) - expected))),
            float(np.max(np.abs(single - expected))),
        )
        found[name] = {"engine": engine.name, "max_diff": gap}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per wrk run (whole: wrk's unit)"
    )
    parser.add_argument("--workers", type=int, default=1, help="workers of each server")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--baseline-src", type=Path, help="also run heartml from this source tree, to compare"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    args = parser.parse_args()
    if args.duration < 1:
        parser.error("--duration must be at least 1 (second)")

    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (make bench installs it: apt-get install -y wrk)")

    from heartml.data.schema import FEATURE_NAMES
    from heartml.registry import RegistryError, read_family
    from heartml.settings import Settings

    settings = Settings()
    try:
        champion = read_family(settings).champion
    except RegistryError as exc:
        sys.exit(f"error: {exc}")
    if champion is None:
        sys.exit("error: no champion in the registry; run `make pipeline` first")
    uri = f"models:/{champion.name}/{champion.version}"
    print(
        f"champion: {uri} ({champion.tags.get('model_type', '?')}), store "
        f"{settings.mlflow_tracking_uri}, {os.cpu_count()} CPUs, {args.workers} worker(s)"
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTML_")}
    env.update(
        MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        HEARTML_RELOAD_INTERVAL_S="30",
        HEARTML_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
        # `mlflow models serve` execs `uvicorn` from PATH: the one next to this Python.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    work = Path(tempfile.mkdtemp(prefix="heartml-bench-"))
    heartml_port, mlflow_port, baseline_port = free_port(), free_port(), free_port()
    heartml_url, mlflow_url = f"http://{HOST}:{heartml_port}", f"http://{HOST}:{mlflow_port}"
    baseline_url = f"http://{HOST}:{baseline_port}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))

    def heartml_command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "heartml",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ]

    servers = []
    try:
        heartml = start(heartml_command(heartml_port), env, work / "heartml.log")
        servers.append(heartml)
        baseline = None
        if args.baseline_src is not None:
            baseline_env = {**env, "PYTHONPATH": str(args.baseline_src.resolve())}
            baseline = start(heartml_command(baseline_port), baseline_env, work / "baseline.log")
            servers.append(baseline)
        mlflow = start(
            [
                mlflow_bin,
                "models",
                "serve",
                "-m",
                uri,
                "--env-manager",
                "local",
                "-h",
                HOST,
                "-p",
                str(mlflow_port),
                "-w",
                str(args.workers),
            ],
            env,
            work / "mlflow.log",
        )
        servers.append(mlflow)
        wait_for(f"{heartml_url}/ready", heartml, 120, work / "heartml.log")
        wait_for(f"{mlflow_url}/ping", mlflow, 180, work / "mlflow.log")
        if baseline is not None:
            wait_for(f"{baseline_url}/ready", baseline, 120, work / "baseline.log")
            print(f"baseline: heartml from {args.baseline_src}")
        print(f"engine: {get_json(f'{heartml_url}/model')['engine']}")

        rows = sample_rows(64)
        columns = list(FEATURE_NAMES)

        def frame(chunk: list[dict[str, float]]) -> dict[str, Any]:
            return {
                "dataframe_split": {
                    "columns": columns,
                    "data": [[r[c] for c in columns] for r in chunk],
                }
            }

        # Same answers from both, or the comparison means nothing.
        ours = post_json(f"{heartml_url}/predict/batch", {"instances": rows})["predictions"]
        theirs = post_json(f"{mlflow_url}/invocations", frame(rows))["predictions"]
        gap = max(abs(a["probability"] - b[1]) for a, b in zip(ours, theirs, strict=True))
        print(f"same rows, largest probability difference heartml vs mlflow: {gap:.2e}")

        batch = [rows[i % len(rows)] for i in range(BATCH_ROWS)]
        scripts = {
            "predict": lua_script(work, "predict", "/predict", [json.dumps(r) for r in rows]),
            "invocations": lua_script(
                work, "invocations", "/invocations", [json.dumps(frame([r])) for r in rows]
            ),
            "batch": lua_script(
                work, "batch", "/predict/batch", [json.dumps({"instances": batch})]
            ),
            "mlflow_batch": lua_script(
                work, "mlflow_batch", "/invocations", [json.dumps(frame(batch))]
            ),
        }
        ours_urls = [("heartml", heartml_url)]
        if baseline is not None:
            ours_urls.append(("baseline", baseline_url))
        for _, url in ours_urls:
            drive(url + "/predict", 8, 2, scripts["predict"], args.threads)  # warm up
        drive(mlflow_url + "/invocations", 8, 2, scripts["invocations"], args.threads)

        runs: list[Run] = []

        def measure(
            server: str, endpoint: str, url: str, c: int, script: str | None, rows_per: int = 1
        ) -> None:
            rps, p50, p99, errors = drive(
                url, c, args.duration, scripts.get(script or ""), args.threads
            )
            run = Run(server, endpoint, c, rps, p50, p99, errors, rows_per)
            runs.append(run)
            print(
                f"  {server:8s} {endpoint:15s} c={c:<3d} {rps:9.0f} req/s  "
                f"{run.rows_per_s:10.0f} rows/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
                + (f"  ERRORS {errors}" if errors else ""),
                flush=True,
            )

        print(f"\nrunning (wrk, {args.duration:g} s each, {args.repeat} round(s))...")
        for _ in range(args.repeat):
            for c in CONCURRENCY:
                for server, url in ours_urls:
                    measure(server, "/predict", url + "/predict", c, "predict")
                measure("heartml", "/health", heartml_url + "/health", c, None)
                measure("mlflow", "/invocations", mlflow_url + "/invocations", c, "invocations")
            for c in (1, 8):
                for server, url in ours_urls:
                    measure(
                        server, "/predict/batch", url + "/predict/batch", c, "batch", BATCH_ROWS
                    )
                measure(
                    "mlflow",
                    "/invocations",
                    mlflow_url + "/invocations",
                    c,
                    "mlflow_batch",
                    BATCH_ROWS,
                )
    finally:
        for process in servers:
            stop(process)

    def find(server: str, endpoint: str, c: int, rows_per: int = 1) -> Run:
        """The median round of one measurement (by requests/s)."""
        same = sorted(
            (
                r
                for r in runs
                if (r.server, r.endpoint, r.concurrency, r.rows_per_request)
                == (server, endpoint, c, rows_per)
            ),
            key=lambda r: r.requests_per_s,
        )
        return same[len(same) // 2]

    print("\nsingle patient per request" + (" (medians)" if args.repeat > 1 else ""))
    print(
        f"{'c':>4} | {'heartml req/s':>13} {'p50':>8} {'p99':>8} | {'mlflow req/s':>12} {'p50':>8} "
        f"{'p99':>8} | {'speed-up':>8} | {'/health req/s':>13} {'predict/health':>14}"
    )
    for c in CONCURRENCY:
        ours, theirs, health = (
            find("heartml", "/predict", c),
            find("mlflow", "/invocations", c),
            find("heartml", "/health", c),
        )
        print(
            f"{c:>4} | {ours.requests_per_s:13.0f} {ours.p50_ms:7.2f}ms {ours.p99_ms:7.2f}ms | "
            f"{theirs.requests_per_s:12.0f} {theirs.p50_ms:7.2f}ms {theirs.p99_ms:7.2f}ms | "
            f"{ours.requests_per_s / theirs.requests_per_s:7.1f}x | {health.requests_per_s:13.0f} "
            f"{ours.requests_per_s / health.requests_per_s:13.0%}"
        )
    print(f"\n{BATCH_ROWS}-row batches")
    for c in (1, 8):
        ours, theirs = (
            find("heartml", "/predict/batch", c, BATCH_ROWS),
            find("mlflow", "/invocations", c, BATCH_ROWS),
        )
        print(
            f"{c:>4} | heartml {ours.rows_per_s:10.0f} rows/s (p99 {ours.p99_ms:.1f} ms) | mlflow "
            f"{theirs.rows_per_s:10.0f} rows/s (p99 {theirs.p99_ms:.1f} ms) | "
            f"{ours.rows_per_s / theirs.rows_per_s:.1f}x"
        )

    ours, theirs, health = (
        find("heartml", "/predict", 8),
        find("mlflow", "/invocations", 8),
        find("heartml", "/health", 8),
    )
    print("\ntargets (2 cores, c=8)")
    targets = Targets("serve")
    targets.at_least(
        "req/s vs mlflow at c=8",
        ours.requests_per_s / theirs.requests_per_s,
        10.0,
        unit="x",
        spec=".1f",
    )
    targets.at_most("p99 at c=8", ours.p99_ms, 10.0, unit=" ms")
    targets.at_least(
        "/predict vs /health req/s at c=8",
        ours.requests_per_s / health.requests_per_s,
        0.70,
        spec=".0%",
    )
    if args.baseline_src is not None:
        targets.at_least(
            "single-row req/s at c=8 vs the baseline",
            ours.requests_per_s / find("baseline", "/predict", 8).requests_per_s,
            0.90,
            spec=".0%",
        )
        for c in (1, 8):
            targets.at_least(
                f"batch rows/s at c={c} vs the baseline",
                find("heartml", "/predict/batch", c, BATCH_ROWS).rows_per_s
                / find("baseline", "/predict/batch", c, BATCH_ROWS).rows_per_s,
                1.0,
                spec=".0%",
            )
    # Every model of the family, loaded as serving loads it.
    for name, found in candidate_differences(settings, rows).items():
        targets.at_most(
            f"{name} ({found['engine']}) largest probability difference from its pipeline",
            found["max_diff"],
            1e-5,
            spec=".1e",
        )
    targets.at_most("failed requests", sum(r.errors for r in runs), 0, spec=".0f")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
