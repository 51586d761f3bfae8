"""Every target a benchmark checks, one line each in one format, and the exit status they give.

    targets = Targets("serve")
    targets.at_most("p99 at c=8", p99_ms, 10.0, unit=" ms")
    targets.at_least("req/s vs mlflow at c=8", ratio, 10.0, unit="x", spec=".1f")
    return targets.finish()

Each check prints ``PASS  serve: p99 at c=8 1.52 ms ≤ 10.00 ms`` or ``MISS  …`` at the start of
a line, where `make bench` finds them for its summary; ``finish`` returns 1 if any missed.

BENCH_FORCE_MISS set to a benchmark's name (or ``all``) adds a target nothing meets: the way to
see that a miss fails the run and that `make bench` still runs the benchmarks after it.
"""

from __future__ import annotations

import os

FORCE_MISS = "BENCH_FORCE_MISS"


class Targets:
    """The targets of one benchmark, printed as they are checked."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.passed = 0
        self.missed = 0

    def check(self, label: str, met: bool, shown: str) -> bool:
        """Record and print one target; ``shown`` gives the figure and the bound."""
        if met:
            self.passed += 1
        else:
            self.missed += 1
        print(f"{'PASS' if met else 'MISS'}  {self.bench}: {label} {shown}".rstrip(), flush=True)
        return met

    def at_most(
        self, label: str, value: float, bound: float, *, unit: str = "", spec: str = ".2f"
    ) -> bool:
        shown = f"{value:{spec}}{unit} ≤ {bound:{spec}}{unit}"
        return self.check(label, value <= bound, shown)

    def at_least(
        self, label: str, value: float, bound: float, *, unit: str = "", spec: str = ".2f"
    ) -> bool:
        shown = f"{value:{spec}}{unit} ≥ {bound:{spec}}{unit}"
        return self.check(label, value >= bound, shown)

    def finish(self) -> int:
        """The exit status: 1 if any target missed. Prints the count."""
        if os.environ.get(FORCE_MISS, "") in (self.bench, "all"):
            self.check(f"a target nothing meets ({FORCE_MISS}={os.environ[FORCE_MISS]})", False, "")
        total = self.passed + self.missed
        print(f"{self.bench}: {self.passed} of {total} targets met", flush=True)
        return 1 if self.missed else 0
