"""The drain between SIGTERM and the end of serving, with several workers.

The supervisor is the process that receives the pod's SIGTERM: the workers go on answering for
HEARTML_SHUTDOWN_DELAY_S, then everything exits 0. One process (what the pod runs) is shown
under load, in its container, by tests/integration/test_container_api.py.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from conftest import HeartmlServer, run_heartml
from heartml.data.schema import EXAMPLE_PATIENT
from heartml.serve.server import GRACEFUL_SHUTDOWN_S
from heartml.settings import Settings

pytestmark = pytest.mark.slow

DELAY_S = 3.0


@pytest.fixture(scope="module")
def exported(trained_root: Path, tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    from conftest import make_settings

    directory = tmp_path_factory.mktemp("drain") / "exported-model"
    done = run_heartml(make_settings(trained_root, mirror), "export", str(directory))
    assert done.returncode == 0, done.stderr
    return directory


def test_sigterm_to_the_supervisor_drains_then_exits_0(
    exported: Path, trained_settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    env = {"HEARTML_SHUTDOWN_DELAY_S": str(DELAY_S)}
    args = ("--workers", "2", "--model-dir", str(exported))
    with HeartmlServer(trained_settings, log, *args, env=env) as server:
        url, process = server.url, server.process
        server.wait_ready(90)
        with httpx.Client(base_url=url, timeout=10) as client:
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Well inside the drain, every request is answered.
            answered = 0
            while time.monotonic() - signalled < DELAY_S - 1:
                response = client.post("/predict", json=EXAMPLE_PATIENT)
                assert response.status_code == 200, response.text
                answered += 1
            assert answered > 0 and process.poll() is None

        returncode = process.wait(timeout=DELAY_S + GRACEFUL_SHUTDOWN_S + 30)
        assert returncode == 0, log.read_text()[-3000:]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
        text = log.read_text()
        assert f"SIGTERM: draining for {DELAY_S:.1f} s" in text
        assert "Traceback" not in text
