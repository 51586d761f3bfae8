"""Benchmark what live evidence costs the answer: a shadowed challenger, and the prediction log.

Four heartml servers on the same store and champion, in the same run: ``plain``
(HEARTML_SHADOW=off), ``plain-again`` (the same, a second time: the noise floor), ``shadow``
(a non-champion version shadowed) and ``shadow+log`` (the same, plus the prediction log in a
temporary directory). It first sends the same rows to ``plain`` and ``shadow`` and checks that
every answer is byte for byte the same.

Then ``plain`` is measured *at the same time* as each of the others in turn: two wrk runs at
concurrency 8 on one patient per request, started together, each server pinned with its own
wrk to a CPU of its own (swapped every round). A shared machine's slow seconds then fall on
both sides of a comparison alike, instead of on whichever server happened to run then; and
the shadow process is pinned with the server it belongs to (every process of the server's
process group), competing for that CPU as in a pod with a one-CPU limit. Each round gives
one p99 ratio per pair (wrk's p99 of each side); the pooled percentiles over all rounds and
the median requests per second are printed too. With one CPU the two runs of a pair take
turns instead.

Targets (issue 21): over the rounds, the median ratio of the shadowed server's p99 to the
plain server's at most 1.05 and no round above 1.15; no answer differs; no request fails. It
also prints every round's ratio of ``plain-again`` to ``plain`` (the noise floor: a ratio as
far from 1 as that is noise, not cost) and of ``shadow+log``; the shadow's and the log's
throughput (rows scored, records written per second) and whatever they dropped; and what
handing an answer to the shadow process costs the event loop, measured in-process.

    python bench/shadow.py [--duration 2] [--repeat 10] [--shadow NAME/VERSION] [--json FILE]

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db): run `make pipeline` first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (
    HOST,
    Quantiles,
    drive,
    free_port,
    lua_script,
    pooled_percentile,
    sample_rows,
    start,
    stop,
    wait_for,
)
from targets import Targets

CONCURRENCY = 8
MEDIAN_RATIO_TARGET = 1.05
ROUND_RATIO_TARGET = 1.15
FEED_ANSWERS = 20_000


def feed_cost(work: Path) -> float:
    """Microseconds of the event loop per answer handed to a running shadow process (the
    record call and its share of the batched writes), one-row answers, logging as well."""
    import asyncio

    import numpy as np
    from prometheus_client import CollectorRegistry

    from heartml.data.schema import synthetic_rows
    from heartml.serve.feed import ShadowFeed
    from heartml.serve.livemetrics import LiveMetrics

    feed = ShadowFeed(
        LiveMetrics(CollectorRegistry()), work / "feed-log", 1 << 30, 10_000, "warning"
    )
    row = np.array(synthetic_rows(1, seed=1, missing=0.0))
    model = feed.model_id("m", "heart-disease-test", 1, None)
    spent = [0.0]
    flush = feed.flush

    def timed_flush() -> None:  # the timer's flushes run on the loop too: count them
        began = time.perf_counter()
        flush()
        spent[0] += time.perf_counter() - began

    feed.flush = timed_flush  # type: ignore[method-assign]

    async def hand_over() -> None:
        for burst in range(0, FEED_ANSWERS, 100):  # bursts of 100, as a busy loop sees them
            began = time.perf_counter()
            for i in range(burst, burst + 100):
                feed.record(f"r{i}", model, row, [1], [0.75], i, True)
            spent[0] += time.perf_counter() - began
            await asyncio.sleep(0.02)

    feed.start()
    try:
        asyncio.run(hand_over())
    finally:
        feed.close(10)
    if feed.dropped["shadow"]:
        print(f"(feed cost: {feed.dropped['shadow']} of {FEED_ANSWERS} answers dropped)")
    return spent[0] / FEED_ANSWERS * 1e6


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


def processes_of(group: int) -> list[int]:
    """Every process of a process group (a server and whatever it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
            if int(stat.rsplit(")", 1)[1].split()[2]) == group:
                found.append(int(entry.name))
    return found


def pin(group: int, cpu: int) -> None:
    """Run every thread of every process of ``group`` on ``cpu`` only."""
    for pid in processes_of(group):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    os.sched_setaffinity(int(task.name), {cpu})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=int, default=2, help="seconds per wrk run (whole: wrk's unit)"
    )
    parser.add_argument("--repeat", type=int, default=10, help="rounds (every pair once each)")
    parser.add_argument(
        "--shadow",
        metavar="NAME/VERSION",
        help="the version to shadow (default: the first"
        " version of the family that is not the champion)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.duration < 1:
        parser.error("--duration must be at least 1 (second)")

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
    candidates = [v for v in state.versions if v.ref != champion.ref]
    if args.shadow is not None:
        candidates = [v for v in candidates if v.ref == args.shadow]
        if not candidates:
            sys.exit(f"error: {args.shadow} is not a version of the family, or is the champion")
    if not candidates:
        sys.exit("error: the family has one version only: nothing to shadow")
    other = candidates[0]
    cpus = sorted(os.sched_getaffinity(0))
    together = len(cpus) >= 2
    print(
        f"champion {champion.ref}, shadowing {other.ref}; {len(cpus)} CPUs "
        f"({'pairs measured together' if together else 'pairs take turns'}), "
        f"c={CONCURRENCY}, {args.repeat} rounds of {args.duration:g} s"
    )

    work = Path(tempfile.mkdtemp(prefix="heartml-bench-shadow-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTML_")}
    base_env.update(
        MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        HEARTML_RELOAD_INTERVAL_S="0",
        HEARTML_LOG_LEVEL="warning",
    )
    variants = {
        "plain": {"HEARTML_SHADOW": "off"},
        "plain-again": {"HEARTML_SHADOW": "off"},
        "shadow": {"HEARTML_SHADOW": other.ref},
        "shadow+log": {
            "HEARTML_SHADOW": other.ref,
            "HEARTML_PREDICTION_LOG_DIR": str(work / "predictions"),
        },
    }
    others = [name for name in variants if name != "plain"]
    urls: dict[str, str] = {}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    # Per compared server: its runs and plain's runs made at the same time.
    runs: dict[str, dict[str, list[tuple[float, float, float, int]]]] = {}
    latencies: dict[str, dict[str, list[Quantiles]]] = {}
    try:
        for name, extra in variants.items():
            port = free_port()
            urls[name] = f"http://{HOST}:{port}"
            command = [sys.executable, "-m", "heartml", "serve", "--host", HOST]
            log = work / f"{name}.log"
            process = start([*command, "--port", str(port)], {**base_env, **extra}, log)
            servers[name] = process
            wait_for(f"{urls[name]}/ready", process, 120, log)

        rows = sample_rows(500)
        bodies = [json.dumps(row) for row in rows]
        differ = sum(
            post(urls["plain"], b.encode()) != post(urls["shadow"], b.encode()) for b in bodies
        )
        print(f"answers compared: {len(bodies)}, differing: {differ}")

        script = lua_script(work, "predict", "/predict", bodies)
        runs = {n: {n: [], "plain": []} for n in others}
        latencies = {n: {n: [], "plain": []} for n in others}
        before = {n: scrape(u) for n, u in urls.items()}
        busy = dict.fromkeys(variants, 0.0)  # seconds each server was driven

        def measure(name: str, cpu: int | None) -> tuple[float, float, float, int]:
            prefix = () if cpu is None else ("taskset", "-c", str(cpu))
            quantiles = work / f"quantiles-{name}.txt"
            quantiles.unlink(missing_ok=True)  # never read an earlier run's figures
            result = drive(
                f"{urls[name]}/predict", CONCURRENCY, args.duration, script, 1, prefix, quantiles
            )
            if not quantiles.is_file():
                sys.exit(f"error: wrk wrote no latency quantiles for {name}")
            return result

        with ThreadPoolExecutor(2 if together else 1) as pool:
            for round_ in range(args.repeat):
                # Each round starts with another pair and puts plain on the other CPU.
                order = others[round_ % len(others) :] + others[: round_ % len(others)]
                for name in order:
                    pair = ("plain", name)
                    cpu_of = dict(zip(pair, (cpus[round_ % 2], cpus[1 - round_ % 2]), strict=True))
                    if together:
                        for server in pair:
                            pin(servers[server].pid, cpu_of[server])
                    t0 = time.monotonic()
                    futures = {
                        s: pool.submit(measure, s, cpu_of[s] if together else None) for s in pair
                    }
                    for server, future in futures.items():
                        runs[name][server].append(future.result())
                        latencies[name][server].append(
                            Quantiles.read(work / f"quantiles-{server}.txt")
                        )
                    spent = time.monotonic() - t0
                    busy["plain"] += spent if together else spent / 2
                    busy[name] += spent if together else spent / 2
                print(f"round {round_ + 1}/{args.repeat} done")
        time.sleep(1.0)  # let the background threads catch up before counting
        after = {n: scrape(u) for n, u in urls.items()}
    finally:
        for process in servers.values():
            stop(process)

    def delta(name: str, metric: str) -> float:
        return after[name].get(metric, 0.0) - before[name].get(metric, 0.0)

    figures: dict[str, Any] = {"answers_compared": len(bodies), "answers_differing": differ}
    print(
        f"\n{'server':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
        f"{'plain at the same time: req/s, p50, p99':>44}"
    )
    for name in others:
        # Percentiles of all the rounds' requests together: a burst of noise from the machine
        # weighs as much as it lasted, and (measured together) on both sides alike.
        side: dict[str, dict[str, float]] = {}
        for server in (name, "plain"):
            side[server] = {
                "requests_per_s": statistics.median(r[0] for r in runs[name][server]),
                "p50_ms": pooled_percentile(latencies[name][server], 50),
                "p99_ms": pooled_percentile(latencies[name][server], 99),
                "errors": sum(r[3] for r in runs[name][server]),
            }
        mine, base = side[name], side["plain"]
        figures[name] = {**mine, "plain": base, "p99_ratio": mine["p99_ms"] / base["p99_ms"]}
        print(
            f"{name:<12}{mine['requests_per_s']:>10.0f}{mine['p50_ms']:>10.2f}"
            f"{mine['p99_ms']:>10.2f}{mine['errors']:>8.0f}"
            f"{base['requests_per_s']:>24.0f}{base['p50_ms']:>10.2f}{base['p99_ms']:>10.2f}"
        )
    for name in ("shadow", "shadow+log"):
        scored = delta(name, "heartml_shadow_predictions_total")
        dropped = delta(name, 'heartml_background_dropped_total{queue="shadow"}')
        figures[name]["shadow_rows_per_s"] = scored / busy[name]
        figures[name]["shadow_dropped"] = dropped
        print(
            f"{name}: shadow scored {scored:.0f} rows ({scored / busy[name]:.0f}/s), "
            f"dropped {dropped:.0f}"
        )
    written = delta("shadow+log", "heartml_prediction_log_records_total")
    log_dropped = delta("shadow+log", 'heartml_background_dropped_total{queue="predlog"}')
    files = list((work / "predictions").glob("predictions-*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    figures["log"] = {
        "records_per_s": written / busy["shadow+log"],
        "dropped": log_dropped,
        "bytes_per_record": size / max(written, 1),
    }
    print(
        f"prediction log: {written:.0f} records ({written / busy['shadow+log']:.0f}/s), "
        f"dropped {log_dropped:.0f}, {size / max(written, 1):.0f} bytes per record"
    )

    # One ratio per round: each server's p99 over the plain server's, measured at the same time.
    print("\np99 ratio to plain, round by round (measured at the same time):")
    for name in others:
        ratios = [
            pooled_percentile([mine], 99) / pooled_percentile([base], 99)
            for mine, base in zip(latencies[name][name], latencies[name]["plain"], strict=True)
        ]
        figures[name]["round_ratios"] = ratios
        figures[name]["median_ratio"] = statistics.median(ratios)
        shown = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{name:<12} median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x: {shown}"
        )
    cost = feed_cost(work)
    figures["feed_us_per_answer"] = cost
    print(f"handing an answer to the shadow process: {cost:.2f} us of the event loop")
    ratios = figures["shadow"]["round_ratios"]
    targets = Targets("shadow")
    targets.at_most(
        f"median p99 with shadow vs without, {len(ratios)} rounds",
        statistics.median(ratios),
        MEDIAN_RATIO_TARGET,
        unit="x",
    )
    targets.at_most(
        "p99 with shadow vs without, worst round", max(ratios), ROUND_RATIO_TARGET, unit="x"
    )
    targets.at_most(f"answers differing (of {len(bodies)})", differ, 0, spec=".0f")
    # wrk leaves failed requests out of its latencies: a server that fails must not pass.
    errors = sum(figures[n]["errors"] + figures[n]["plain"]["errors"] for n in others)
    targets.at_most("failed requests (non-2xx, socket errors)", errors, 0, spec=".0f")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # the logs of the servers, the prediction log
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
