"""Time `heartml promote --list` against a bare `import mlflow`, in the same environment.

Builds a registry of 5 models x 10 versions (tags, one champion) in a temporary SQLite store,
then runs each command N times (default 7) and prints the medians and their ratio. Also times
the list through a tracking server (`--server`), where the same fast path reads over REST.
Target: the listing on SQLite takes less time than `import mlflow` alone (it never imports it).

    .venv/bin/python bench/cli.py [--runs 7] [--server]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from targets import Targets

ALGORITHMS = ("logistic_regression", "random_forest", "gradient_boosting", "svm", "knn")


def build_registry(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from heartml.registry import promote_version
    from heartml.settings import Settings

    client = MlflowClient(uri, uri)
    for index, algorithm in enumerate(ALGORITHMS):
        name = f"heart-disease-{algorithm}"
        client.create_registered_model(name)
        for version in range(10):
            client.create_model_version(
                name,
                source=f"s3://bench/{algorithm}/{version}",
                tags={
                    "roc_auc": f"{0.85 + index / 100 + version / 1000:.4f}",
                    "model_type": algorithm,
                },
            )
    promote_version(Settings(mlflow_tracking_uri=uri), "heart-disease-svm", 10)


def median_seconds(command: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--server", action="store_true", help="also time against mlflow server")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="heartml-bench-cli-"))
    server = None
    try:
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        build_registry(uri)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        python = sys.executable
        rows = [
            ("python -c 'import mlflow'", [python, "-c", "import mlflow"]),
            ("heartml promote --list (SQLite)", [python, "-m", "heartml", "promote", "--list"]),
            (
                "MlflowClient list, same queries (reference)",
                [
                    python,
                    "-c",
                    "from mlflow.tracking import MlflowClient as C; import os; "
                    "c=C(os.environ['MLFLOW_TRACKING_URI']); "
                    "[c.get_registered_model(m.name) for m in c.search_registered_models()]; "
                    "c.search_model_versions(\"name LIKE 'heart-disease-%'\")",
                ],
            ),
        ]
        results = {label: median_seconds(cmd, env, args.runs) for label, cmd in rows}
        if args.server:
            port = free_port()
            server = subprocess.Popen(
                [str(Path(python).with_name("mlflow")), "server", "--backend-store-uri", uri,
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            server_env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
            results["heartml promote --list (mlflow server)"] = median_seconds(
                [python, "-m", "heartml", "promote", "--list"], server_env, args.runs
            )
        base = results["python -c 'import mlflow'"]
        print(f"registry: {len(ALGORITHMS)} models x 10 versions; median of {args.runs} runs each")
        print(f"{'command':48} {'median s':>9} {'x import mlflow':>16}")
        for label, seconds in results.items():
            print(f"{label:48} {seconds:9.3f} {seconds / base:16.2f}")
        targets = Targets("cli")
        targets.at_most(
            "promote --list on SQLite vs import mlflow",
            results["heartml promote --list (SQLite)"] / base,
            1.0,
            unit="x",
        )
        return targets.finish()
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
