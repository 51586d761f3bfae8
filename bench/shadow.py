"""Benchmark what live evidence costs the answer: a shadowed challenger, and the prediction log.

One heartml server (``HEARTML_SHADOW=auto``) on a copy of the store, switched between shadowing
and not by moving the copy's ``best_model`` tag (the champion: nothing to shadow; another
version: shadow it) and ``POST /admin/reload``: the same process, the same heap, the same
connections, with and without a shadow. Measured as a pod with a one-CPU limit is used: the
server and its shadow process alone on one CPU, wrk (c=8, one patient per request) on the
other (with one CPU, both share it). It first sends the same rows with the shadow off and on
and checks that every answer is byte for byte the same.

Each round is ``--cycles`` cycles of two 1-s wrk runs, shadow off then on, each run right
after a switch (so that what a reload leaves behind, its collection and cold caches, falls on
both sides alike). A side's p99 in a round is the median of its runs' p99s, and the round's
ratio is "on" over "off": the machine's slow seconds (here a second's requests can all be
slow together, when the host is busy) count as one run of ``--cycles``, not as the tail of
the round, and two servers' standing differences (their hash seeds, their heaps: up to 1.6x
at p99 between two identical servers here) are not in the ratio. Every other "off" run over
the rest, all off, is printed as the noise floor; so are the ratios of the p99s of the runs'
requests pooled, which a single slow second can decide.

Targets (issue 21): over the rounds, the median ratio at most 1.05 and no round above 1.15;
no answer differs; no request fails. It also prints the shadow's throughput (rows scored per
second with the shadow on) and what it dropped; then a second server with the prediction log
as well, run against the first (both shadowing) for the log's throughput, drops and bytes per
record; and what handing an answer to the shadow process costs the event loop, in-process.

    python bench/shadow.py [--repeat 10] [--cycles 8] [--shadow NAME/VERSION] [--json FILE]

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db; SQLite only: its copy is what
the bench changes): run `make pipeline` first.
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


def feed_cost(work: Path) -> tuple[float, float]:
    """Microseconds of the event loop per answer handed to a running shadow process, one-row
    answers, logging as well: on the request path (the record call) and in the loop's idle
    moments (packing and writing them)."""
    import asyncio

    import numpy as np
    from prometheus_client import CollectorRegistry

    from heartml.data.schema import synthetic_rows
    from heartml.serve.feed import ShadowFeed
    from heartml.serve.giveway import new_event_loop
    from heartml.serve.livemetrics import LiveMetrics

    feed = ShadowFeed(
        LiveMetrics(CollectorRegistry()), work / "feed-log", 1 << 30, 10_000, "warning"
    )
    row = np.array(synthetic_rows(1, seed=1, missing=0.0))
    model = feed.model_id("m", "heart-disease-test", 1, None)
    spent = {"request": 0.0, "idle": 0.0}
    write_some = feed.write_some

    def timed_write(*, keep_when_full: bool = False) -> bool:  # the loop's idle work
        began = time.perf_counter()
        written = write_some(keep_when_full=keep_when_full)
        spent["idle"] += time.perf_counter() - began
        return written

    feed.write_some = timed_write  # type: ignore[method-assign]

    async def hand_over() -> None:
        for burst in range(0, FEED_ANSWERS, 100):  # bursts of 100, as a busy loop sees them
            began = time.perf_counter()
            for i in range(burst, burst + 100):
                feed.record(f"r{i}", model, row, [1], [0.75], i, True)
            spent["request"] += time.perf_counter() - began
            await asyncio.sleep(0.02)

    feed.start()
    loop = new_event_loop()
    try:
        loop.run_until_complete(hand_over())
    finally:
        loop.close()
        feed.close(10)
    if feed.dropped["shadow"]:
        print(f"(feed cost: {feed.dropped['shadow']} of {FEED_ANSWERS} answers dropped)")
    return spent["request"] / FEED_ANSWERS * 1e6, spent["idle"] / FEED_ANSWERS * 1e6


def scrape(url: str) -> dict[str, float]:
    text = fetch(f"{url}/metrics").decode()
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


ADMIN_TOKEN = "bench-shadow"
SLICE_S = 1  # seconds per wrk run (wrk's unit is whole seconds)
# The shadow process sends its totals at most once a second (shadow_process.REPORT_S).
TOTALS_S = 1.5


def copy_store(uri: str, work: Path) -> str:
    """A consistent copy of the SQLite store under ``work`` (its artifacts stay where they are,
    by absolute path): the bench moves tags there, never in the user's store."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        sys.exit(f"error: the shadow bench copies a SQLite store; {uri} is not one")
    source = sqlite3.connect(uri.removeprefix("sqlite:///"))
    target = sqlite3.connect(work / "mlflow.db")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return f"sqlite:///{work / 'mlflow.db'}"


class Toggle:
    """Switch the servers of the copied store between shadowing ``other`` and nothing."""

    def __init__(self, uri: str, versions: list[Any], champion: Any, other: Any) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.versions, self.champion, self.other = versions, champion, other

    def set(self, on: bool, urls: list[str], groups: list[int], cpu: int | None) -> None:
        best = self.other if on else self.champion
        for version in self.versions:
            flag = "true" if version.ref == best.ref else "false"
            self.client.set_model_version_tag(version.name, version.version, "best_model", flag)
        for url in urls:
            request = urllib.request.Request(
                f"{url}/admin/reload", b"", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
            shadow = json.loads(fetch(f"{url}/model"))["shadow"]
            chosen = shadow.get("challenger")
            if (chosen is not None) != on:
                sys.exit(
                    f"error: {url} did not switch its shadow {'on' if on else 'off'}: {shadow}"
                )
        if cpu is not None:
            for group in groups:  # the shadow process too, once started
                pin(group, cpu)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="rounds")
    parser.add_argument("--cycles", type=int, default=8, help="off, on runs of 1 s per round")
    parser.add_argument(
        "--shadow",
        metavar="NAME/VERSION",
        help="the version to shadow (default: the first"
        " version of the family that is not the champion)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.repeat < 1 or args.cycles < 2:
        parser.error("--repeat must be at least 1 and --cycles at least 2")

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
    split = len(cpus) >= 2
    server_cpu = cpus[0] if split else None
    wrk_prefix = ("taskset", "-c", str(cpus[1])) if split else ()
    print(
        f"champion {champion.ref}, shadowing {other.ref} on and off in one server; "
        f"{len(cpus)} CPUs ({'server on one, wrk on another' if split else 'shared'}), "
        f"c={CONCURRENCY}, {args.repeat} rounds of {args.cycles} x (off, on) x {SLICE_S} s"
    )

    work = Path(tempfile.mkdtemp(prefix="heartml-bench-shadow-"))
    uri = copy_store(settings.mlflow_tracking_uri, work)
    toggle = Toggle(uri, list(state.versions), champion, other)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTML_")}
    base_env.update(
        MLFLOW_TRACKING_URI=uri,
        HEARTML_RELOAD_INTERVAL_S="0",
        HEARTML_LOG_LEVEL="warning",
        HEARTML_SHADOW="auto",
        HEARTML_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    variants = {
        "toggled": {},
        "shadow+log": {"HEARTML_PREDICTION_LOG_DIR": str(work / "predictions")},
    }
    urls: dict[str, str] = {}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    states = ("off", "on")
    rounds: list[dict[str, list[Quantiles]]] = []
    rates: dict[str, list[float]] = {"off": [], "on": []}
    errors = 0
    try:
        toggle.set(False, [], [], None)
        for name, extra in variants.items():
            port = free_port()
            urls[name] = f"http://{HOST}:{port}"
            command = [sys.executable, "-m", "heartml", "serve", "--host", HOST]
            log = work / f"{name}.log"
            process = start([*command, "--port", str(port)], {**base_env, **extra}, log)
            servers[name] = process
            wait_for(f"{urls[name]}/ready", process, 120, log)
        url = urls["toggled"]
        group = [servers["toggled"].pid]

        rows = sample_rows(500)
        bodies = [json.dumps(row) for row in rows]
        without = [post(url, b.encode()) for b in bodies]
        toggle.set(True, [url], group, server_cpu)
        differ = sum(
            post(url, b.encode()) != answer for b, answer in zip(bodies, without, strict=True)
        )
        print(f"answers compared (shadow off, then on): {len(bodies)}, differing: {differ}")

        script = lua_script(work, "predict", "/predict", bodies)
        quantiles = work / "quantiles.txt"

        def measure(target: str) -> Quantiles:
            nonlocal errors
            quantiles.unlink(missing_ok=True)  # never read an earlier run's figures
            result = drive(
                f"{target}/predict", CONCURRENCY, SLICE_S, script, 1, wrk_prefix, quantiles
            )
            if not quantiles.is_file():
                sys.exit("error: wrk wrote no latency quantiles")
            errors += result[3]
            return Quantiles.read(quantiles)

        measure(url)  # warm: the shadow process and the challenger's first calls
        time.sleep(TOTALS_S)  # the warm run's rows counted before the first figure
        shadowed_before = scrape(url)
        on_seconds = 0.0
        for round_ in range(args.repeat):
            got: dict[str, list[Quantiles]] = {"off": [], "on": []}
            for _ in range(args.cycles):
                for slot in states:
                    # Every run follows a switch (and its reload), so that what a reload
                    # leaves behind falls on both sides alike.
                    shadowing = slot == "on"
                    toggle.set(shadowing, [url], group, server_cpu)
                    began = time.monotonic()
                    got[slot].append(measure(url))
                    spent = time.monotonic() - began
                    rates[slot].append(got[slot][-1].requests / spent)
                    if slot == "on":
                        on_seconds += spent
            rounds.append(got)
            print(f"round {round_ + 1}/{args.repeat} done")
        time.sleep(TOTALS_S)  # let the shadow process's totals come in before counting
        shadowed_after = scrape(url)

        # The log's figures: a second server, with the log too, both shadowing, in turns.
        toggle.set(True, list(urls.values()), [p.pid for p in servers.values()], server_cpu)
        logged_before = scrape(urls["shadow+log"])
        log_runs: dict[str, list[Quantiles]] = {"shadow": [], "shadow+log": []}
        logged_seconds = 0.0
        for _ in range(max(2, args.cycles)):
            log_runs["shadow"].append(measure(url))
            began = time.monotonic()
            log_runs["shadow+log"].append(measure(urls["shadow+log"]))
            logged_seconds += time.monotonic() - began
        time.sleep(TOTALS_S)
        logged_after = scrape(urls["shadow+log"])
    finally:
        for process in servers.values():
            stop(process)

    def delta(before: dict[str, float], after: dict[str, float], metric: str) -> float:
        return after.get(metric, 0.0) - before.get(metric, 0.0)

    figures: dict[str, Any] = {"answers_compared": len(bodies), "answers_differing": differ}
    pooled = {
        "off": [q for got in rounds for q in got["off"]],
        "on": [q for got in rounds for q in got["on"]],
    }
    print(f"\n{'shadow':<8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   (every round's runs pooled)")
    for kind in states:
        figures[kind] = {
            "requests_per_s": statistics.median(rates[kind]),
            "p50_ms": pooled_percentile(pooled[kind], 50),
            "p99_ms": pooled_percentile(pooled[kind], 99),
        }
        row = figures[kind]
        print(
            f"{kind:<8}{row['requests_per_s']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
        )
    scored = delta(shadowed_before, shadowed_after, "heartml_shadow_predictions_total")
    dropped = delta(
        shadowed_before, shadowed_after, 'heartml_background_dropped_total{queue="shadow"}'
    )
    figures["shadow_rows_per_s"] = scored / on_seconds
    figures["shadow_dropped"] = dropped
    print(
        f"shadow: scored {scored:.0f} rows ({scored / on_seconds:.0f}/s with it on), "
        f"dropped {dropped:.0f}"
    )
    written = delta(logged_before, logged_after, "heartml_prediction_log_records_total")
    log_dropped = delta(
        logged_before, logged_after, 'heartml_background_dropped_total{queue="predlog"}'
    )
    files = list((work / "predictions").glob("predictions-*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    log_ratio = pooled_percentile(log_runs["shadow+log"], 99) / pooled_percentile(
        log_runs["shadow"], 99
    )
    figures["log"] = {
        "records_per_s": written / logged_seconds,
        "dropped": log_dropped,
        "bytes_per_record": size / max(written, 1),
        "p99_vs_shadow_alone": log_ratio,
    }
    print(
        f"prediction log: {written:.0f} records ({written / logged_seconds:.0f}/s), "
        f"dropped {log_dropped:.0f}, {size / max(written, 1):.0f} bytes per record; p99 of "
        f"shadow+log over shadow alone {log_ratio:.2f}x (two servers: their standing "
        "difference is in it)"
    )

    def run_p99(runs: list[Quantiles]) -> float:
        """The p99 of a side of a round: the median of its runs' p99s."""
        return statistics.median(pooled_percentile([run], 99) for run in runs)

    ratios = [run_p99(got["on"]) / run_p99(got["off"]) for got in rounds]
    floor = [  # the round's off runs, every other one against the rest
        run_p99(got["off"][1::2]) / run_p99(got["off"][0::2]) for got in rounds
    ]
    pooled_ratios = [
        pooled_percentile(got["on"], 99) / pooled_percentile(got["off"], 99) for got in rounds
    ]
    pooled_floor = [
        pooled_percentile(got["off"][1::2], 99) / pooled_percentile(got["off"][0::2], 99)
        for got in rounds
    ]
    figures["round_ratios"], figures["noise_floor"] = ratios, floor
    figures["pooled_round_ratios"], figures["pooled_noise_floor"] = pooled_ratios, pooled_floor
    print("\np99 ratio, round by round (one server, its runs interleaved):")
    for name, values in (
        ("on / off", ratios),
        ("off / off", floor),
        ("pooled on / off", pooled_ratios),
        ("pooled off / off", pooled_floor),
    ):
        shown = " ".join(f"{r:.2f}" for r in values)
        print(f"{name:<17}median {statistics.median(values):.2f}x, max {max(values):.2f}x: {shown}")
    on_request, when_idle = feed_cost(work)
    figures["feed_us_per_answer"] = {"request_path": on_request, "idle": when_idle}
    print(
        f"handing an answer to the shadow process: {on_request:.2f} us of the event loop on "
        f"the request path, {when_idle:.2f} us in its idle moments"
    )
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
    targets.at_most("failed requests (non-2xx, socket errors)", errors, 0, spec=".0f")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # the copied store, the logs, the prediction log
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
