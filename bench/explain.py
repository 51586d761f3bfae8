"""What an explanation costs: ``/predict?explain=true`` against plain ``/predict``, at c=8.

Every candidate of the family (its latest version as trained, not one adapted to a site) is
served in turn by `heartml serve --model-dir` (one worker, as exported), and wrk drives the
same patients at concurrency 8 to ``/predict`` and ``/predict?explain=true``, alternating,
``--rounds`` times each. Targets: p99
with explain=true at most 1.2x plain ``/predict`` for the linear model (an exact explanation is
a few dozen float operations on its folded terms), at most 20 ms for the others (a Shapley
estimate).

    python bench/explain.py [--duration 5] [--rounds 2]

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db): run `make pipeline` first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from serve import (
    HOST,
    drive,
    free_port,
    lua_script,
    post_json,
    sample_rows,
    start,
    stop,
    wait_for,
)
from targets import Targets

if TYPE_CHECKING:
    from heartml.registry import VersionInfo

CONCURRENCY = 8
LINEAR_RATIO = 1.2
OTHERS_P99_MS = 20.0


def export_version(version: VersionInfo, directory: Path) -> None:
    """The version's model directory and a ``model.json``, as `heartml export` writes them."""
    import mlflow.artifacts

    from heartml.model.export import MODEL_INFO_FILE, ExportInfo
    from heartml.registry import utc_now_iso

    mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(directory))
    info = ExportInfo(
        **version.summary.summary_fields(),
        exported_at=utc_now_iso(timespec="milliseconds"),
    )
    (directory / MODEL_INFO_FILE).write_text(json.dumps(info.as_dict()), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of plain/explain")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (make bench installs it: apt-get install -y wrk)")

    import os

    from heartml.registry import RegistryError, configure_mlflow, read_family
    from heartml.settings import Settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per model
    settings = Settings()
    configure_mlflow(settings)
    try:
        versions = read_family(settings).versions
    except RegistryError as exc:
        sys.exit(f"error: {exc}")
    latest: dict[str, VersionInfo] = {}
    for version in versions:
        if version.adapted_for is not None:
            continue  # the candidates as trained: a site's recalibration is another model
        kind = str(version.tags.get("model_type", version.name))
        if kind not in latest or version.version > latest[kind].version:
            latest[kind] = version
    if not latest:
        sys.exit("error: no registered model; run `make pipeline` first")

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTML_")}
    env.update(HEARTML_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    work = Path(tempfile.mkdtemp(prefix="heartml-bench-explain-"))
    rows = sample_rows(64)
    bodies = [json.dumps(r) for r in rows]
    plain_script = lua_script(work, "plain", "/predict", bodies)
    explain_script = lua_script(work, "explain", "/predict?explain=true", bodies)
    targets = Targets("explain")
    print(f"{os.cpu_count()} CPUs, 1 worker, c={CONCURRENCY}, {args.duration} s per run")
    for kind, version in sorted(latest.items()):
        directory = work / kind
        export_version(version, directory)
        port = free_port()
        url = f"http://{HOST}:{port}"
        command = [sys.executable, "-m", "heartml", "serve", "--model-dir", str(directory)]
        command += ["--host", HOST, "--port", str(port), "--workers", "1"]
        server = start(command, env, work / f"{kind}.log")
        try:
            wait_for(f"{url}/ready", server, 120, work / f"{kind}.log")
            method = post_json(f"{url}/predict?explain=true", rows[0])["explanation"]["method"]
            plain: list[tuple[float, float, float]] = []
            explained: list[tuple[float, float, float]] = []
            for _ in range(args.rounds):
                for script, into in ((plain_script, plain), (explain_script, explained)):
                    rps, p50, p99, errors = drive(
                        f"{url}/predict", CONCURRENCY, args.duration, script, threads=1
                    )
                    if errors:
                        sys.exit(f"error: {errors} failed requests against {kind}")
                    into.append((rps, p50, p99))
        finally:
            stop(server)
        p99_plain = max(r[2] for r in plain)
        p99_explain = max(r[2] for r in explained)
        print(
            f"{kind:20s} {method}\n"
            f"{'':20s} /predict               {min(r[0] for r in plain):8.0f} req/s  "
            f"p50 {max(r[1] for r in plain):6.2f} ms  p99 {p99_plain:6.2f} ms\n"
            f"{'':20s} /predict?explain=true  {min(r[0] for r in explained):8.0f} req/s  "
            f"p50 {max(r[1] for r in explained):6.2f} ms  p99 {p99_explain:6.2f} ms"
        )
        if method.startswith("exact linear"):
            targets.at_most(
                f"{kind} explain p99 / plain p99 at c=8",
                p99_explain / p99_plain,
                LINEAR_RATIO,
                unit="x",
            )
        else:
            targets.at_most(f"{kind} explain p99 at c=8", p99_explain, OTHERS_P99_MS, unit=" ms")
    shutil.rmtree(work, ignore_errors=True)
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
