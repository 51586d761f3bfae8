"""deploy/scripts/docker-engine.sh (make docker-up / docker-down) with a dockerd of its own.

Started where no engine answers: no bridge network, data under DOCKER_DIR, PID kept; `up` again
does nothing; `down` stops it by that PID and leaves nothing mounted (the checkout can be
deleted). Runs beside the container tests' engine, in a directory of its own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOCKER_ENGINE

pytestmark = [pytest.mark.slow, pytest.mark.container]


def engine(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DOCKER_ENGINE), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mounts_under(directory: Path) -> list[str]:
    return [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{directory}/")
    ]


@pytest.fixture
def own_dir(docker_host: str, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    if (
        subprocess.run(["docker", "version"], env=env, capture_output=True, check=False).returncode
        == 0
    ):
        pytest.skip("the machine's own Docker engine answers: docker-up would (rightly) do nothing")
    directory = tmp_path / "docker"
    env["DOCKER_DIR"] = str(directory)
    try:
        yield directory, env
    finally:
        engine("down", env)


def test_up_starts_a_bridgeless_dockerd_and_down_stops_it_by_pid(
    own_dir: tuple[Path, dict[str, str]],
) -> None:
    directory, env = own_dir
    started = engine("up", env)
    assert started.returncode == 0, started.stderr
    assert "dockerd started" in started.stdout
    pid = int((directory / "dockerd.pid").read_text())
    host = f"unix://{directory}/docker.sock"

    networks = subprocess.run(
        ["docker", "-H", host, "network", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(networks.stdout.split()) == ["host", "none"], "no bridge network, ever"
    info = subprocess.run(
        ["docker", "-H", host, "info", "--format", "{{.DockerRootDir}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert info.stdout.strip() == str(directory / "data")

    again = engine("up", env)
    assert again.returncode == 0 and "already running" in again.stdout
    assert engine("host", env).stdout.strip() == host

    stopped = engine("down", env)
    assert stopped.returncode == 0 and f"dockerd (pid {pid}) stopped" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert mounts_under(directory) == []
    assert engine("status", env).returncode == 1
