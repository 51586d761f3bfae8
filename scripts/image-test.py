#!/usr/bin/env python3
"""`make image-test`: the built API image, run the way the rendered prod pod spec runs it.

1. The image: a non-root USER, a HEALTHCHECK, labels naming the exported model and commit.
2. What it adds to its base: no UCI data file or data cache, no MLflow store, no .git, no
   tests, no virtualenv but the app's, none of the distributions serving does not use.
3. Started with the ConfigMap's environment, the Deployment's securityContext, tmpfs /tmp,
   limits and grace period (scripts/containers.py), on the host network at 127.0.0.1 and a
   free port; Docker's own HEALTHCHECK must say healthy.
4. scripts/smoke-test.py against it: /health, /ready, /model (the exported version), /predict,
   /predict/batch, /metrics.
5. Every process in the container runs as the pod's runAsUser.

The container is always removed; its log goes to --log. Exit 0 when everything passed, 1 with
one line on the first failure.

    scripts/image-test.py --image IMAGE --rendered .run/k8s/prod.yaml \\
        --expect exported-model/model.json [--base python:3.11-slim] [--log .run/image-test.log]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import containers
from containers import ContainerError

SMOKE = Path(__file__).with_name("smoke-test.py")


def check_image(image: str, expected: dict[str, Any]) -> None:
    config = json.loads(containers.docker("image", "inspect", "-f", "{{json .Config}}", image))
    user = str(config.get("User") or "")
    if user.split(":", maxsplit=1)[0] in {"", "root", "0"}:
        raise ContainerError(f"{image} runs as {user or 'root'}; it must run as a non-root user")
    if not (config.get("Healthcheck") or {}).get("Test"):
        raise ContainerError(f"{image} has no HEALTHCHECK")
    labels = config.get("Labels") or {}
    for key in ("name", "version", "run_id"):
        label = f"io.heartml.model.{key.replace('_', '-')}"
        if labels.get(label) != str(expected[key]):
            raise ContainerError(f"label {label} is {labels.get(label)!r}, not {expected[key]!r}")
    print(
        f"✅ image: user {user}, HEALTHCHECK, labels {expected['name']} v{expected['version']}, "
        f"commit {labels.get('io.heartml.git-commit', '?')}"
    )


def check_contents(image: str, base: str) -> None:
    base_paths = {item.path for item in containers.image_files(base)}
    added = [item for item in containers.image_files(image) if item.path not in base_paths]
    problems = containers.content_problems(added)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ContainerError(f"the image holds {'; '.join(problems[:3])}{more}")
    print(
        f"✅ contents: {len(added)} paths over {base}: no data, store, .git, tests or other "
        f"virtualenv; none of {', '.join(sorted(containers.NOT_FOR_SERVING))}"
    )


def check_running(args: argparse.Namespace, pod: containers.PodRun, expected_uid: str) -> None:
    name = f"heartml-image-test-{os.getpid()}"
    with containers.running_api(args.image, pod, name=name, log=args.log) as container:
        print(f"container {name} on {container.url}: {'; '.join(pod.summary)}")
        ready = containers.wait_ready(container)
        print(f"✅ ready {ready:.1f} s after docker run")
        healthy = containers.wait_healthy(name)
        print(f"✅ Docker HEALTHCHECK: healthy {healthy:.1f} s later")
        smoke = subprocess.run(
            [sys.executable, str(SMOKE), "--url", container.url, "--expect", str(args.expect)],
            check=False,
        )
        if smoke.returncode != 0:
            raise ContainerError("the smoke test failed (above)")
        uids = {uid for uid, _, _ in containers.processes(name)}
        if uids != {int(expected_uid)}:
            raise ContainerError(f"processes run as UIDs {sorted(uids)}, not {expected_uid}")
        print(f"✅ every process runs as UID {expected_uid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--rendered", type=Path, required=True, help="rendered prod overlay")
    parser.add_argument("--expect", type=Path, required=True, help="the export's model.json")
    parser.add_argument("--base", default="python:3.11-slim", help="the image's base")
    parser.add_argument("--log", type=Path, help="where the container's log is kept")
    args = parser.parse_args(argv)
    try:
        expected = json.loads(args.expect.read_text())
        pod = containers.pod_run(containers.load_rendered(args.rendered))
        if not pod.user:
            raise ContainerError("the pod spec sets no runAsUser")
        check_image(args.image, expected)
        check_contents(args.image, args.base)
        check_running(args, pod, pod.user.split(":")[0])
    except (ContainerError, OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"❌ image-test: {exc}", file=sys.stderr)
        return 1
    print(f"✅ image-test passed: {args.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
