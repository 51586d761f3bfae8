"""The API image's figures: size, size above its base, `docker run` → ready (and the CPU time
that took), memory after 1,000 requests, what `docker stop` does under load, and what its
site-packages holds.

The container is started as the rendered prod pod spec says (scripts/containers.py): the
ConfigMap's environment (HEARTML_SHUTDOWN_DELAY_S included), the securityContext, tmpfs /tmp,
the memory and CPU limits and the termination grace period. The issue's targets, on 2 cores:
at most 500 MB above the base (400 MB once the ONNX engine lets scikit-learn and MLflow go),
ready within 5 s of `docker run`, and no request sent before `docker stop` began is lost.

    make image-report [IMAGE_REPORT_ARGS="--runs 3 --json figures.json"]
    python bench/image.py --image IMAGE --rendered .run/k8s/prod.yaml [--base python:3.11-slim]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

# scripts/ holds the container helpers that make image-test uses as well.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import containers
from containers import ContainerError
from targets import Targets

from heartml.data.schema import EXAMPLE_PATIENT

MB = 1_000_000
REQUESTS = 1000
TARGET_ABOVE_BASE_MB = 400
TARGET_READY_S = 5.0


def image_size(image: str) -> int:
    return int(containers.docker("image", "inspect", "-f", "{{.Size}}", image))


def requests_then_memory(container: containers.Container) -> tuple[int, int]:
    """1,000 POST /predict on one keep-alive connection; then the container's memory (docker
    stats) and the server process's resident set, in bytes."""
    host, port = container.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps(EXAMPLE_PATIENT).encode()
    try:
        for _ in range(REQUESTS):
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise ContainerError(f"POST /predict answered {response.status}")
    finally:
        connection.close()
    server_rss = max(rss for _, rss, command in containers.processes(container.name)) * 1024
    return containers.memory_usage_bytes(container.name), server_rss


def measure(args: argparse.Namespace) -> dict[str, Any]:
    pod = containers.pod_run(containers.load_rendered(args.rendered))
    size, base_size = image_size(args.image), image_size(args.base)
    stand_in = containers.docker(
        "image", "inspect", "-f", '{{index .Config.Labels "io.heartml.stand-in"}}', args.base
    ).strip()
    figures: dict[str, Any] = {
        "image": args.image,
        "image_mb": size / MB,
        "base": args.base,
        "base_stand_in": stand_in or None,
        "base_mb": base_size / MB,
        "above_base_mb": (size - base_size) / MB,
        "ready_s": [],
        "ready_cpu_s": [],
    }
    name = f"heartml-image-report-{os.getpid()}"
    for run in range(args.runs):
        last = run == args.runs - 1
        with containers.running_api(args.image, pod, name=name) as container:
            figures["ready_s"].append(containers.wait_ready(container, poll_s=0.02))
            cpu = containers.cpu_seconds(container.name)
            if cpu is not None:
                figures["ready_cpu_s"].append(cpu)
            if not last:
                continue
            memory, rss = requests_then_memory(container)
            figures["memory_after_requests_mb"] = memory / MB
            figures["server_rss_mb"] = rss / MB
            stop = containers.stop_under_load(container, "/predict", EXAMPLE_PATIENT)
            figures["stop"] = {
                "shutdown_delay_s": float(pod.env.get("HEARTML_SHUTDOWN_DELAY_S", 0)),
                "grace_s": pod.stop_timeout_s,
                "sent_before": stop.sent_before,
                "answered_before": stop.answered_before,
                "lost_before": stop.lost_before,
                "sent_after": stop.sent_after,
                "answered_after": stop.answered_after,
                "stop_s": stop.stop_s,
                "exit_code": stop.exit_code,
                "first_failures": stop.first_failures,
            }
    sizes = containers.site_packages_sizes(containers.image_files(args.image))
    figures["site_packages_mb"] = {name: size / MB for name, size in sizes.items()}
    return figures


def report(figures: dict[str, Any]) -> None:
    ready = figures["ready_s"]
    stop = figures["stop"]
    stand_in = "   (a stand-in built from Debian)" if figures["base_stand_in"] else ""
    print(f"heartml API image {figures['image']}")
    print(f"  image size                    {figures['image_mb']:8.0f} MB")
    print(f"  base {figures['base']:<24} {figures['base_mb']:8.0f} MB{stand_in}")
    print(
        f"  above the base                {figures['above_base_mb']:8.0f} MB"
        f"   (target ≤ {TARGET_ABOVE_BASE_MB} MB)"
    )
    spread = f", runs {', '.join(f'{r:.1f}' for r in ready)}" if len(ready) > 1 else ""
    print(
        f"  docker run → ready            {statistics.median(ready):8.1f} s"
        f"    (median{spread}; target ≤ {TARGET_READY_S:.0f} s)"
    )
    if figures["ready_cpu_s"]:
        print(
            f"  CPU used until ready          {statistics.median(figures['ready_cpu_s']):8.1f} s"
            f"    (the container's cgroup: what other load on the machine does not change)"
        )
    print(
        f"  memory after {REQUESTS:,} requests    {figures['memory_after_requests_mb']:8.0f} MB"
        f"   (docker stats; server RSS {figures['server_rss_mb']:.0f} MB)"
    )
    print(
        f"  docker stop under load        {stop['lost_before']:8d} lost of {stop['sent_before']} "
        f"sent before the stop; {stop['answered_after']} of {stop['sent_after']} sent during it "
        f"answered; exit {stop['exit_code']} after {stop['stop_s']:.1f} s "
        f"(drain {stop['shutdown_delay_s']:g} s, grace {stop['grace_s']} s)"
    )
    packages = figures["site_packages_mb"]
    print(f"  site-packages                 {sum(packages.values()):8.0f} MB")
    shown = list(packages.items())[:14]
    for name, size in shown:
        print(f"      {name:<25} {size:8.1f} MB")
    rest = sum(size for _, size in list(packages.items())[len(shown) :])
    print(f"      {f'{len(packages) - len(shown)} others':<25} {rest:8.1f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--rendered", type=Path, required=True, help="rendered overlay")
    parser.add_argument("--base", default="python:3.11-slim")
    parser.add_argument("--runs", type=int, default=3, help="containers started to time ready")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        figures = measure(args)
    except (ContainerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    targets = Targets("image")
    targets.at_most(
        "above the base", figures["above_base_mb"], TARGET_ABOVE_BASE_MB, unit=" MB", spec=".0f"
    )
    targets.at_most(
        "docker run → ready (median)",
        statistics.median(figures["ready_s"]),
        TARGET_READY_S,
        unit=" s",
        spec=".1f",
    )
    targets.at_most(
        "requests lost of those sent before docker stop",
        figures["stop"]["lost_before"],
        0,
        spec=".0f",
    )
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
