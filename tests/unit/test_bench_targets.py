"""The benchmarks' targets: one PASS or MISS line each, and a miss fails the benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

# A benchmark's end, as bench/serve.py and the others write it.
SCRIPT = """
import sys
from targets import Targets

targets = Targets("demo")
targets.at_most("p99 at c=8", 1.52, 10.0, unit=" ms")
targets.at_least("req/s vs mlflow", float(sys.argv[1]), 10.0, unit="x", spec=".1f")
sys.exit(targets.finish())
"""


def run(ratio: str, force: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(BENCH), **({"BENCH_FORCE_MISS": force} if force else {})}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, ratio],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_target_is_printed_and_a_miss_fails() -> None:
    met = run("103.0")
    assert met.returncode == 0, met.stderr
    assert met.stdout.splitlines() == [
        "PASS  demo: p99 at c=8 1.52 ms ≤ 10.00 ms",
        "PASS  demo: req/s vs mlflow 103.0x ≥ 10.0x",
        "demo: 2 of 2 targets met",
    ]
    missed = run("9.5")
    assert missed.returncode == 1
    assert missed.stdout.splitlines()[1:] == [
        "MISS  demo: req/s vs mlflow 9.5x ≥ 10.0x",
        "demo: 1 of 2 targets met",
    ]


def test_a_forced_miss_fails_only_the_benchmark_it_names() -> None:
    forced = run("103.0", force="demo")
    assert forced.returncode == 1
    assert "MISS  demo: a target nothing meets (BENCH_FORCE_MISS=demo)" in forced.stdout
    assert run("103.0", force="all").returncode == 1
    assert run("103.0", force="serve").returncode == 0
