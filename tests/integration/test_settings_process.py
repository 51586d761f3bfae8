"""Settings as a deployment or a person sets them, seen by real `heartml` processes.

A ConfigMap or compose file leaves an optional setting blank more easily than it leaves it out:
HEARTML_PREDICTION_LOG_DIR="" must mean no prediction log (these are health data), not a log
in the server's working directory. An invalid value is named in the one-line error, as the
user set it: the environment variable or the option.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import (
    HEARTML,
    free_port,
    make_settings,
    one_line_error,
    run_heartml,
    settings_env,
    stop_group,
    wait_for_http,
)
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("log_dir", "logged"), [("", False), ("predictions", True)])
def test_an_empty_prediction_log_dir_writes_no_log(
    log_dir: str, logged: bool, trained_root: Path, mirror: Path, tmp_path: Path
) -> None:
    """The second case, a directory, shows that the server does write a log that this test
    would find."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **settings_env(make_settings(trained_root, mirror)),
        "HEARTML_PREDICTION_LOG_DIR": log_dir,
        "HEARTML_SHADOW": "off",
        "HEARTML_RELOAD_INTERVAL_S": "0",
    }
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [*HEARTML, "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"{url}/health", timeout=90, process=process)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert httpx.post(f"{url}/predict", json=EXAMPLE_PATIENT).status_code == 200
    finally:
        # SIGTERM: the log writer flushes what it holds before the process exits.
        stop_group(process)
    assert "Application shutdown complete" in log.read_text(), log.read_text()[-3000:]
    written = sorted(p.relative_to(cwd) for p in cwd.rglob("predictions-*.jsonl"))
    if logged:
        assert [p.parent for p in written] == [Path(log_dir)], written
    else:
        assert written == [], written


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (
            {"HEARTML_PORT": "abc"},
            ["serve"],
            "error: invalid setting HEARTML_PORT='abc': Input should be a valid integer",
        ),
        ({}, ["serve", "--port", "0"], "error: invalid setting --port='0': Input should be"),
        (
            {"HEARTML_CORS_ORIGINS": "localhost"},
            ["serve"],
            "error: invalid setting HEARTML_CORS_ORIGINS: not valid JSON",
        ),
        (
            {"HEARTML_SHADOW": "maybe"},
            ["serve"],
            "error: invalid setting HEARTML_SHADOW='maybe': HEARTML_SHADOW must be auto, off",
        ),
        ({}, ["promote", "--auto", "--margin", "2"], "error: invalid setting --margin='2.0'"),
        (
            {"HEARTML_DOWNLOAD_TIMEOUT_S": "soon"},
            ["data", "validate"],
            "error: invalid setting HEARTML_DOWNLOAD_TIMEOUT_S='soon'",
        ),
    ],
)
def test_an_invalid_setting_is_named_in_one_line(
    env: dict[str, str], args: list[str], expected: str, settings: Settings
) -> None:
    line = one_line_error(run_heartml(settings, *args, env=env, timeout=60))
    assert line.startswith(expected), line
