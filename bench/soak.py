"""Soak: `heartml serve` under steady load while the champion changes every 30 s.

Trains a real family on a temporary SQLite store (data from HEARTML_DATA_SOURCE or UCI), starts
`heartml serve` as its own process, and drives it at concurrency 32 for 5 minutes (defaults)
while a promotion runs every 30 s, each followed by `POST /admin/reload` as a deploy hook would.
It then prints:

- requests, failed requests (any non-200 or transport error), throughput, p50/p99 latency;
- resident memory of the server after warm-up and at the end, and the growth;
- how many responses carried a model version that was *not* champion when they were answered.
  A promotion is a window (from the first registry write to the end of the reload that follows
  it) in which either the old or the new champion is correct; outside such windows the answer
  must come from the champion of the moment. The server answers somewhere between a request's
  send and its receipt, so a response is correct if its version was champion at any moment of
  that span (a request in flight during a swap finishes on the old model, by design).

    .venv/bin/python bench/soak.py [--duration 300] [--concurrency 32] [--every 30]

Its targets, each printed as PASS or MISS (exit status 1 if any missed): no failed request,
memory growth after warm-up at most 10 %, no response from a version that was not champion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from targets import Targets

REPO = Path(__file__).resolve().parents[1]
TOKEN = "soak-admin-token"


@dataclass
class Timeline:
    """When each champion took over: (window start, window end, champion ref)."""

    changes: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acceptable(self, sent_at: float, answered_at: float) -> set[str]:
        """Versions that were champion at some moment while this request was being answered.

        Champion i is correct from the start of its promotion window until the end of the
        next one; the server answered somewhere between the request's send and its receipt.
        """
        with self.lock:
            changes = list(self.changes)
        allowed = set()
        for index, (start, _, ref) in enumerate(changes):
            until = changes[index + 1][1] if index + 1 < len(changes) else float("inf")
            if start <= answered_at and until >= sent_at:
                allowed.add(ref)
        return allowed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pending.extend(int(c) for c in children)
    return total


def reload(api: str) -> None:
    request = urllib.request.Request(
        f"{api}/admin/reload", method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def promoter(
    settings: object, api: str, timeline: Timeline, every: float, stop: threading.Event
) -> None:
    from heartml.registry import promote_version, read_family

    family = read_family(settings)  # type: ignore[arg-type]
    candidates = [m.versions[0] for m in family.models]
    turn = 0
    while not stop.wait(every):
        target = candidates[turn % len(candidates)]
        turn += 1
        started = time.monotonic()
        with timeline.lock:
            # From the first registry write until the reload is done, the old and the new
            # champion are both correct answers.
            timeline.changes.append((started, float("inf"), target.ref))
        promote_version(settings, target.name, target.version, reason="soak")  # type: ignore[arg-type]
        reload(api)
        ended = time.monotonic()
        with timeline.lock:
            timeline.changes[-1] = (started, ended, target.ref)
        print(
            f"  {time.strftime('%H:%M:%S')} promoted {target.ref} ({ended - started:.2f} s)",
            flush=True,
        )


async def drive(
    api: str, concurrency: int, duration: float, timeline: Timeline
) -> dict[str, object]:
    import httpx

    latencies: list[float] = []
    failures = 0
    wrong: list[str] = []
    from heartml.data.schema import EXAMPLE_PATIENT

    body = json.dumps(EXAMPLE_PATIENT)
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/predict", content=body, headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError:
                    failures += 1
                    continue
                answered = time.monotonic()
                if response.status_code != 200:
                    failures += 1
                    continue
                latencies.append(answered - sent)
                data = response.json()
                ref = f"{data['model_name']}/{data['model_version']}"
                if ref not in timeline.acceptable(sent, answered):
                    wrong.append(f"{ref} at +{answered:.1f}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "requests": len(latencies) + failures,
        "failed": failures,
        "wrong_version": wrong,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between promotions")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from heartml.data.download import download_data
    from heartml.registry import promote_version, read_family
    from heartml.settings import Settings
    from heartml.training.train import train_candidates

    workdir = Path(tempfile.mkdtemp(prefix="heartml-soak-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(
            mlflow_tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            artifact_dir=workdir / "mlartifacts",
            data_dir=workdir / "data",
            experiment_config=REPO / "configs" / "experiment.yaml",
        )
        print("training a family of models…", flush=True)
        download_data(settings)
        train_candidates(settings, promote=False)
        first = read_family(settings).models[0].versions[0]
        promote_version(settings, first.name, first.version, reason="soak start")

        port = free_port()
        api = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "HEARTML_ADMIN_TOKEN": TOKEN,
            "HEARTML_RELOAD_INTERVAL_S": "0",  # promotions reach it through /admin/reload
            "HEARTML_LOG_LEVEL": "warning",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heartml",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{api}/ready", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        timeline = Timeline(changes=[(0.0, 0.0, first.ref)])

        memory: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(2.0):
                memory.append((time.monotonic(), rss_kib(server.pid)))

        threading.Thread(target=sample, daemon=True).start()
        promotions = threading.Thread(
            target=promoter, args=(settings, api, timeline, args.every, stop), daemon=True
        )
        promotions.start()
        started = time.monotonic()
        print(
            f"soak: {args.duration:.0f} s at concurrency {args.concurrency}, "
            f"a promotion every {args.every:.0f} s",
            flush=True,
        )
        result = asyncio.run(drive(api, args.concurrency, args.duration, timeline))
        stop.set()
        promotions.join(timeout=120)
        elapsed = time.monotonic() - started

        after_warmup = [kib for t, kib in memory if t - started >= args.warmup]
        warm = after_warmup[0] if after_warmup else memory[0][1]
        final = memory[-1][1]
        growth = 100.0 * (final - warm) / warm
        wrong = result["wrong_version"]
        assert isinstance(wrong, list)
        print()
        requests = result["requests"]
        assert isinstance(requests, int)
        print(f"requests          {requests} in {elapsed:.0f} s ({requests / elapsed:.0f} req/s)")
        print(f"failed requests   {result['failed']}")
        print(f"latency           p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
        print(f"promotions        {len(timeline.changes) - 1}")
        print(
            f"resident memory   {warm / 1024:.1f} MiB after {args.warmup:.0f} s warm-up, "
            f"{final / 1024:.1f} MiB at the end: {growth:+.1f} %"
        )
        print(f"wrong version     {len(wrong)} responses from a version that was not champion")
        for line in wrong[:5]:
            print(f"                  {line}")
        print()
        failed = result["failed"]
        assert isinstance(failed, int)
        targets = Targets("soak")
        targets.at_most("failed requests", failed, 0, spec=".0f")
        targets.at_most("memory growth after warm-up", growth, 10.0, unit=" %", spec=".1f")
        targets.at_most("responses from a version not champion", len(wrong), 0, spec=".0f")
        return targets.finish()
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
