"""Benchmark what live evidence costs the answer: a shadowed challenger, and the prediction log.

Three heartml servers on the same store and champion, in the same run: ``plain``
(HEARTML_SHADOW=off), ``shadow`` (a non-champion version shadowed) and ``shadow+log`` (the
same, plus the prediction log in a temporary directory). wrk drives each in turn at
concurrency 8 on one patient per request, for ``--repeat`` interleaved rounds; the figures are
the median over rounds. It first sends the same rows to ``plain`` and ``shadow`` and checks that
every answer is byte for byte the same.

Targets (issue 13): p99 with a shadow at most 1.10x the p99 without; no answer differs. It also
prints the shadow's and the log's throughput (rows scored, records written per second) and
whatever they dropped.

    python bench/shadow.py [--duration 5] [--repeat 3] [--json results.json]

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db): run `make pipeline` first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import HOST, drive, free_port, lua_script, sample_rows, start, stop, wait_for

CONCURRENCY = 8
P99_RATIO_TARGET = 1.10


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(
        f"{url}/predict", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
        return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from heartml.registry import RegistryError, read_family
    from heartml.settings import Settings

    settings = Settings()
    try:
        state = read_family(settings)
    except RegistryError as exc:
        sys.exit(f"error: {exc}")
    champion = state.champion
    if champion is None:
        sys.exit("error: no champion in the registry; run `make pipeline` first")
    other = next((v for v in state.versions if v.ref != champion.ref), None)
    if other is None:
        sys.exit("error: the family has one version only: nothing to shadow")
    print(f"champion {champion.ref}, shadowing {other.ref}; {os.cpu_count()} CPUs, c={CONCURRENCY}")

    work = Path(tempfile.mkdtemp(prefix="heartml-bench-shadow-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTML_")}
    base_env.update(
        MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        HEARTML_RELOAD_INTERVAL_S="0",
        HEARTML_LOG_LEVEL="warning",
    )
    variants = {
        "plain": {"HEARTML_SHADOW": "off"},
        "shadow": {"HEARTML_SHADOW": other.ref},
        "shadow+log": {
            "HEARTML_SHADOW": other.ref,
            "HEARTML_PREDICTION_LOG_DIR": str(work / "predictions"),
        },
    }
    urls: dict[str, str] = {}
    servers = []
    try:
        for name, extra in variants.items():
            port = free_port()
            urls[name] = f"http://{HOST}:{port}"
            command = [sys.executable, "-m", "heartml", "serve", "--host", HOST]
            log = work / f"{name}.log"
            process = start([*command, "--port", str(port)], {**base_env, **extra}, log)
            servers.append(process)
            wait_for(f"{urls[name]}/ready", process, 120, log)

        rows = sample_rows(500)
        bodies = [json.dumps(row) for row in rows]
        differ = sum(
            post(urls["plain"], b.encode()) != post(urls["shadow"], b.encode()) for b in bodies
        )
        print(f"answers compared: {len(bodies)}, differing: {differ}")

        script = lua_script(work, "predict", "/predict", bodies)
        runs: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in variants}
        before = {n: scrape(u) for n, u in urls.items()}
        started = dict.fromkeys(variants, 0.0)
        for round_ in range(args.repeat):
            for name in variants:
                t0 = time.monotonic()
                runs[name].append(
                    drive(f"{urls[name]}/predict", CONCURRENCY, args.duration, script, 2)
                )
                started[name] += time.monotonic() - t0
            print(f"round {round_ + 1}/{args.repeat} done")
        time.sleep(1.0)  # let the background threads catch up before counting
        after = {n: scrape(u) for n, u in urls.items()}
    finally:
        for process in servers:
            stop(process)

    def median(name: str, index: int) -> float:
        return statistics.median(r[index] for r in runs[name])

    def delta(name: str, metric: str) -> float:
        return after[name].get(metric, 0.0) - before[name].get(metric, 0.0)

    figures: dict[str, Any] = {"answers_compared": len(bodies), "answers_differing": differ}
    print(f"\n{'server':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name in variants:
        rps, p50, p99 = median(name, 0), median(name, 1), median(name, 2)
        errors = sum(r[3] for r in runs[name])
        figures[name] = {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
        print(f"{name:<12}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}{errors:>8}")
    for name in ("shadow", "shadow+log"):
        scored = delta(name, "heartml_shadow_predictions_total")
        dropped = delta(name, 'heartml_background_dropped_total{queue="shadow"}')
        figures[name]["shadow_rows_per_s"] = scored / started[name]
        figures[name]["shadow_dropped"] = dropped
        print(
            f"{name}: shadow scored {scored:.0f} rows ({scored / started[name]:.0f}/s), "
            f"dropped {dropped:.0f}"
        )
    written = delta("shadow+log", "heartml_prediction_log_records_total")
    log_dropped = delta("shadow+log", 'heartml_background_dropped_total{queue="predlog"}')
    files = list((work / "predictions").glob("predictions-*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    figures["log"] = {
        "records_per_s": written / started["shadow+log"],
        "dropped": log_dropped,
        "bytes_per_record": size / max(written, 1),
    }
    print(
        f"prediction log: {written:.0f} records ({written / started['shadow+log']:.0f}/s), "
        f"dropped {log_dropped:.0f}, {size / max(written, 1):.0f} bytes per record"
    )

    ratio = figures["shadow"]["p99_ms"] / figures["plain"]["p99_ms"]
    ratio_log = figures["shadow+log"]["p99_ms"] / figures["plain"]["p99_ms"]
    figures["p99_ratio_shadow"], figures["p99_ratio_shadow_log"] = ratio, ratio_log
    ok_ratio = ratio <= P99_RATIO_TARGET
    print(
        f"\ntarget p99 with shadow <= {P99_RATIO_TARGET:.2f}x without: {ratio:.2f}x "
        f"{'✅' if ok_ratio else '❌'} (with the log as well: {ratio_log:.2f}x)"
    )
    print(f"target no answer differs: {differ} differ {'✅' if differ == 0 else '❌'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok_ratio and differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
