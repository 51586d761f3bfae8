#!/usr/bin/env python3
"""Smoke-test a running heartml API: /health, /ready, /model, /predict, /predict/batch, /metrics.

Used by `make smoke` (the local pipeline), `make image-test` (the built container) and
`make verify` (the deployed Service). Standard library only, so it runs anywhere Python does.
Prints one line per check; exits 0 when all pass and 1 on the first failure.

    scripts/smoke-test.py --url http://127.0.0.1:8000 --expect exported-model/model.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# The 13 UCI fields (heartml.data.schema; this script uses the standard library only).
FIELDS: tuple[str, ...] = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach")
FIELDS += ("exang", "oldpeak", "slope", "ca", "thal")
# Cleveland rows 1-3 of processed.cleveland.data (UCI coding, without the target). Row 1: a
# 63-year-old man, typical angina, ST depression 2.3.
CLEVELAND = (
    (63, 1, 1, 145, 233, 1, 2, 150, 0, 2.3, 3, 0, 6),
    (67, 1, 4, 160, 286, 0, 2, 108, 1, 1.5, 2, 3, 3),
    (67, 1, 4, 120, 229, 0, 2, 129, 1, 2.6, 2, 2, 7),
)
PATIENTS: list[dict[str, float | int]] = [dict(zip(FIELDS, row, strict=True)) for row in CLEVELAND]
PATIENT = PATIENTS[0]

# Series the dashboards and alert rules are built on; each must be exported.
REQUIRED_METRICS = ("heartml_model_loaded", "heartml_http_requests_total")


class SmokeError(Exception):
    """A check failed; the message says which and why."""


def fetch(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET, or POST ``body`` as JSON; return the status and body, also for 4xx and 5xx."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_for(url: str, deadline: float) -> None:
    """Poll ``url`` until it answers 200 or the deadline passes."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = fetch(url, timeout=2.0)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200].decode(errors='replace')}"
        time.sleep(0.5)
    raise SmokeError(f"{url} not 200 in time ({last})")


def load_json(status: int, body: bytes, what: str) -> dict[str, Any]:
    if status != 200:
        raise SmokeError(f"{what}: HTTP {status}: {body[:300].decode(errors='replace')}")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise SmokeError(f"{what}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise SmokeError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def expect_equal(what: str, actual: object, expected: str | None) -> None:
    if expected is not None and str(actual) != expected:
        raise SmokeError(f"{what} is {actual!r}, expected {expected!r}")


def run_checks(base: str, name: str | None, version: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wait_for(f"{base}/health", deadline)
    print(f"✅ GET /health → 200 ({base})")
    wait_for(f"{base}/ready", deadline)
    print("✅ GET /ready → 200 (model loaded)")

    model = load_json(*fetch(f"{base}/model"), "GET /model")
    expect_equal("/model name", model.get("name"), name)
    expect_equal("/model version", model.get("version"), version)
    print(
        f"✅ GET /model → {model.get('name')} v{model.get('version')} "
        f"(source {model.get('source')}, roc_auc {model.get('roc_auc')})"
    )

    answer = load_json(*fetch(f"{base}/predict", PATIENT), "POST /predict")
    missing = {"prediction", "probability", "label", "model_name", "model_version"} - answer.keys()
    if missing:
        raise SmokeError(f"POST /predict: missing {sorted(missing)} in {answer}")
    if answer["prediction"] not in (0, 1):
        raise SmokeError(f"POST /predict: prediction {answer['prediction']!r} is not 0 or 1")
    probability = float(answer["probability"])
    if not 0.0 <= probability <= 1.0:
        raise SmokeError(f"POST /predict: probability {probability} outside [0, 1]")
    expect_equal("/predict model_name", answer["model_name"], name)
    expect_equal("/predict model_version", answer["model_version"], version)
    print(
        f"✅ POST /predict → prediction {answer['prediction']} ({answer['label']}), "
        f"p={probability:.3f}, by {answer['model_name']} v{answer['model_version']}"
    )

    batch = load_json(
        *fetch(f"{base}/predict/batch", {"instances": PATIENTS}), "POST /predict/batch"
    )
    rows = batch.get("predictions")
    if not isinstance(rows, list) or len(rows) != len(PATIENTS) or batch.get("count") != len(rows):
        raise SmokeError(f"POST /predict/batch: expected {len(PATIENTS)} predictions, got {batch}")
    expect_equal("/predict/batch model_version", batch.get("model_version"), version)
    # The ONNX graphs compute in float32 where skl2onnx's operators do (the trees): a row
    # scored in a batch may differ from itself scored alone in the 8th decimal (3e-8
    # measured), far inside the 1e-5 the graph is checked to at registration.
    if abs(float(rows[0]["probability"]) - probability) > 1e-6:
        raise SmokeError(
            "POST /predict/batch: row 1 differs from POST /predict for the same patient"
        )
    print(
        f"✅ POST /predict/batch → {len(rows)} predictions "
        f"({', '.join(str(row['prediction']) for row in rows)}), row 1 as /predict"
    )

    status, body = fetch(f"{base}/metrics")
    if status != 200:
        raise SmokeError(f"GET /metrics: HTTP {status}")
    text = body.decode(errors="replace")
    absent = [metric for metric in REQUIRED_METRICS if metric not in text]
    if absent:
        raise SmokeError(f"GET /metrics: {', '.join(absent)} not exported")
    print(f"✅ GET /metrics → 200 ({', '.join(REQUIRED_METRICS)} present)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL")
    parser.add_argument(
        "--expect", type=Path, help="model.json from `heartml export`: name and version to expect"
    )
    parser.add_argument(
        "--expect-name", help="registered model name to expect (overrides --expect)"
    )
    parser.add_argument("--expect-version", help="model version to expect (overrides --expect)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for /health and /ready"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name, version = args.expect_name, args.expect_version
    if args.expect is not None:
        try:
            exported = json.loads(args.expect.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"❌ cannot read {args.expect}: {exc}", file=sys.stderr)
            return 1
        name = name or str(exported["name"])
        version = version or str(exported["version"])
    try:
        run_checks(args.url.rstrip("/"), name, version, args.timeout)
    except (SmokeError, OSError) as exc:
        print(f"❌ smoke test failed: {exc}", file=sys.stderr)
        return 1
    print(f"✅ smoke test passed: {args.url} serves {name or '?'} v{version or '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
