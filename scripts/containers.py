"""Run and inspect heartml's images with Docker, the way the rendered pod spec says.

`make image-test`, `make image-report` (bench/image.py) and the container tests start the API
image with what `kubectl kustomize` renders for an overlay: the ConfigMap's environment, the
Deployment's securityContext, emptyDir volumes, resource limits and termination grace period.
Nothing of that is repeated here, so a change of the manifests changes what is tested.

What a pod has and `docker run` on these machines has not, and what stands in for it:

* the pod network: there is no Docker bridge here, so the container shares the host's network,
  and the API binds 127.0.0.1 on a free port (HEARTML_HOST and HEARTML_PORT are overridden);
* probes: the image's own HEALTHCHECK (on /health) and the caller polling /ready;
* emptyDir volumes: tmpfs mounts with the same size limit;
* Secrets: only what the caller passes; optional ones are left out.

    python scripts/containers.py .run/k8s/prod.yaml    # the `docker run` options of the API pod
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

API_DEPLOYMENT = "heartml-api"
API_CONTAINER = "api"
SITE_PACKAGES = "opt/venv/lib/python3.11/site-packages"


class ContainerError(Exception):
    """Docker or the container failed; the message is one line."""


def docker(*args: str, timeout: float = 120) -> str:
    """Run a docker command; its stdout, or ContainerError with docker's last error line."""
    try:
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"docker {args[0]} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        raise ContainerError(f"docker {args[0]}: {lines[-1]}")
    return done.stdout


def free_port() -> int:
    """A free TCP port on 127.0.0.1, below the kernel's ephemeral range.

    The container binds it later; below the range no outgoing connection opened meanwhile can
    take it.
    """
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    below = range(max(1024, low - 12000), low)
    candidates = random.sample(below, 100) if len(below) >= 1000 else [0]
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ContainerError("no free port on 127.0.0.1")


# --- the pod spec ------------------------------------------------------------------------------


def load_rendered(path: Path) -> list[dict[str, Any]]:
    """The objects of a rendered overlay (`kubectl kustomize … > path`)."""
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except (OSError, yaml.YAMLError) as exc:
        raise ContainerError(f"cannot read the rendered manifests {path}: {exc}") from exc


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    raise ContainerError(f"no {kind}/{name} in the rendered manifests")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("1Gi", "512M", "1048576") in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|)", str(quantity))
    if not match:
        raise ContainerError(f"unsupported memory quantity {quantity!r}")
    number, unit = float(match.group(1)), match.group(2)
    base = 1024 if unit.endswith("i") else 1000
    power = " KMGT".index(unit[:1]) if unit else 0
    return int(number * base**power)


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(frozen=True)
class PodRun:
    """What a pod spec asks of one container, as `docker run` options."""

    env: dict[str, str]
    user: str | None
    read_only: bool
    tmpfs: tuple[str, ...]
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    no_new_privileges: bool
    seccomp_unconfined: bool
    memory_bytes: int | None
    cpus: float | None
    stop_timeout_s: int
    summary: list[str] = field(default_factory=list, compare=False)

    def docker_run(
        self, image: str, name: str, env: Mapping[str, str | None] | None = None
    ) -> list[str]:
        """`docker run -d` arguments; ``env`` overrides the pod's (None removes a variable).

        Values are passed to docker in its environment (``-e NAME``), never on its command
        line, so that a secret does not show in a process list.
        """
        merged = {**self.env, **(env or {})}
        args = ["run", "-d", "--name", name, "--network", "host"]
        args += ["--stop-timeout", str(self.stop_timeout_s)]
        if self.user:
            args += ["--user", self.user]
        if self.read_only:
            args.append("--read-only")
        for mount in self.tmpfs:
            args += ["--tmpfs", mount]
        for capability in self.cap_drop:
            args += ["--cap-drop", capability]
        for capability in self.cap_add:
            args += ["--cap-add", capability]
        if self.no_new_privileges:
            args += ["--security-opt", "no-new-privileges:true"]
        if self.seccomp_unconfined:
            args += ["--security-opt", "seccomp=unconfined"]
        if self.memory_bytes:
            args += ["--memory", f"{self.memory_bytes}b"]
        if self.cpus:
            args += ["--cpus", f"{self.cpus:g}"]
        for key, value in sorted(merged.items()):
            if value is not None:
                args += ["-e", key]
        return [*args, image]

    def docker_env(self, env: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """The variables :meth:`docker_run` names, for the docker client's environment."""
        merged = {**self.env, **(env or {})}
        return {key: value for key, value in merged.items() if value is not None}


def _env_of(
    container: dict[str, Any], docs: list[dict[str, Any]], secrets: Mapping[str, str]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
        else:
            raise ContainerError(f"envFrom {sorted(source)} is not supported")
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            env[name] = str(variable["value"])
            continue
        ref = variable.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[name] = str(find(docs, "ConfigMap", key["name"])["data"][key["key"]])
        elif "secretKeyRef" in ref:
            if name in secrets:
                env[name] = secrets[name]
            elif not ref["secretKeyRef"].get("optional", False):
                raise ContainerError(f"the pod needs secret variable {name}: pass it")
        else:
            raise ContainerError(f"env {name}: {sorted(ref)} is not supported")
    return env


def pod_run(
    docs: list[dict[str, Any]],
    deployment: str = API_DEPLOYMENT,
    container: str = API_CONTAINER,
    secrets: Mapping[str, str] | None = None,
) -> PodRun:
    """The `docker run` equivalent of one container of a rendered Deployment."""
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    spec = next((c for c in pod["containers"] if c["name"] == container), None)
    if spec is None:
        raise ContainerError(f"Deployment/{deployment} has no container {container}")
    security = {**pod.get("securityContext", {}), **spec.get("securityContext", {})}
    if security.get("privileged"):
        raise ContainerError(f"{deployment}/{container} asks to be privileged; refused")
    user = security.get("runAsUser")
    group = security.get("runAsGroup")
    user_option = None if user is None else f"{user}:{group}" if group is not None else str(user)

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    tmpfs = []
    for mount in spec.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ContainerError(f"{container} mounts {mount['name']}: no volume {mount['name']}")
        if "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise ContainerError(f"volume {mount['name']} ({kinds}) cannot be run here")
        options = "rw,nosuid,nodev"
        size = (volume["emptyDir"] or {}).get("sizeLimit")
        if size:
            options += f",size={quantity_bytes(size)}"
        tmpfs.append(f"{mount['mountPath']}:{options}")

    capabilities = security.get("capabilities", {})
    seccomp = security.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp not in {"RuntimeDefault", "Unconfined"}:
        raise ContainerError(f"seccomp profile {seccomp} is not supported")
    limits = spec.get("resources", {}).get("limits", {})
    env = _env_of(spec, docs, secrets or {})
    run = PodRun(
        env=env,
        user=user_option,
        read_only=bool(security.get("readOnlyRootFilesystem")),
        tmpfs=tuple(tmpfs),
        cap_drop=tuple(capabilities.get("drop", [])),
        cap_add=tuple(capabilities.get("add", [])),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        seccomp_unconfined=seccomp == "Unconfined",
        memory_bytes=quantity_bytes(limits["memory"]) if "memory" in limits else None,
        cpus=cpu_cores(limits["cpu"]) if "cpu" in limits else None,
        stop_timeout_s=int(pod.get("terminationGracePeriodSeconds", 30)),
    )
    run.summary.extend(
        [
            f"user {user_option or 'of the image'}",
            "read-only root" if run.read_only else "writable root",
            *(f"tmpfs {mount.split(':')[0]}" for mount in tmpfs),
            f"capabilities dropped: {','.join(run.cap_drop) or 'none'}",
            "no-new-privileges" if run.no_new_privileges else "privilege escalation allowed",
            f"seccomp {seccomp}",
            f"limits {limits.get('memory', '-')} memory, {limits.get('cpu', '-')} CPU",
            f"stop timeout {run.stop_timeout_s} s",
            f"{len(env)} env variables",
        ]
    )
    return run


# --- a running API container -------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    name: str
    url: str
    started: float  # time.monotonic() just before `docker run`


def http(url: str, body: object = None, timeout: float = 5.0) -> tuple[int, dict[str, Any] | str]:
    """GET, or POST ``body`` as JSON: the status and the decoded body (JSON when it is)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return status, text
    return status, parsed if isinstance(parsed, dict) else text


def state(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(docker("inspect", "-f", "{{json .State}}", name))
    return value


def wait_ready(container: Container, timeout: float = 120, poll_s: float = 0.05) -> float:
    """Poll /ready until 200; the seconds since `docker run`. Fails if the container exits.

    The container's state is asked of Docker once a second only: a docker client per poll
    would take CPU from the server being timed.
    """
    deadline = time.monotonic() + timeout
    next_state_check = time.monotonic() + 1.0
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = http(f"{container.url}/ready", timeout=2)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return time.monotonic() - container.started
            last = f"HTTP {status}: {body}"
            if isinstance(body, dict) and body.get("reason"):
                last = f"HTTP {status}: {body['reason']}"
        if time.monotonic() >= next_state_check:
            if not state(container.name).get("Running"):
                raise ContainerError(f"{container.name} exited before it was ready ({last})")
            next_state_check = time.monotonic() + 1.0
        time.sleep(poll_s)
    raise ContainerError(f"{container.url}/ready not 200 within {timeout:.0f} s ({last})")


def wait_healthy(name: str, timeout: float = 120) -> float:
    """Wait for Docker's HEALTHCHECK to say healthy; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        current = state(name)
        health = (current.get("Health") or {}).get("Status", "none")
        if health == "healthy":
            return time.monotonic() - started
        if health in {"unhealthy", "none"} or not current.get("Running"):
            raise ContainerError(f"{name}: Docker health is {health!r}")
        time.sleep(0.5)
    raise ContainerError(f"{name}: not healthy within {timeout:.0f} s")


def remove(name: str, log: Path | None = None) -> None:
    """Keep the container's log (when asked) and remove it, whatever state it is in."""
    if log is not None:
        done = subprocess.run(
            ["docker", "logs", name], capture_output=True, text=True, timeout=60, check=False
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120, check=False)


@contextmanager
def running_api(
    image: str,
    pod: PodRun,
    *,
    name: str,
    env: Mapping[str, str | None] | None = None,
    log: Path | None = None,
) -> Iterator[Container]:
    """The API image started as ``pod`` says, on 127.0.0.1 and a free port; always removed."""
    port = free_port()
    overrides = {"HEARTML_HOST": "127.0.0.1", "HEARTML_PORT": str(port), **(env or {})}
    started = time.monotonic()
    try:
        subprocess.run(
            ["docker", *pod.docker_run(image, name, overrides)],
            env={**_client_env(), **pod.docker_env(overrides)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        remove(name)
        lines = exc.stderr.strip().splitlines() or [f"exit {exc.returncode}"]
        raise ContainerError(f"docker run {image}: {lines[-1]}") from exc
    try:
        yield Container(name, f"http://127.0.0.1:{port}", started)
    finally:
        remove(name, log)


def _client_env() -> dict[str, str]:
    """What the docker client needs from ours (DOCKER_HOST, PATH, HOME), and nothing else, so
    that no variable of the caller's leaks into the container through ``-e NAME``."""
    import os

    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH")
    return {key: os.environ[key] for key in keep if key in os.environ}


def processes(name: str) -> list[tuple[int, int, str]]:
    """(uid, rss in KiB, command) of every process in the container."""
    rows = []
    for line in docker("top", name, "-eo", "pid,uid,rss,args").splitlines()[1:]:
        _, uid, rss, command = line.split(None, 3)
        rows.append((int(uid), int(rss), command))
    return rows


def cpu_seconds(name: str) -> float | None:
    """CPU time the container has used so far, from its cgroup (v1 or v2); None where the
    cgroup is not on this machine (a remote engine). Unlike wall time, other load on the
    machine does not change it."""
    container_id = docker("inspect", "-f", "{{.Id}}", name).strip()
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    for v2 in (
        Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
    ):
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    return None


def memory_usage_bytes(name: str) -> int:
    """The container's memory as `docker stats` reports it (page cache not counted)."""
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name).split("/")[0]
    match = re.fullmatch(r"([\d.]+)\s*([KMGT]?i?B)", usage.strip())
    if not match:
        raise ContainerError(f"cannot read docker stats memory {usage!r}")
    unit = match.group(2).removesuffix("B")
    return quantity_bytes(f"{match.group(1)}{unit}") if unit else int(float(match.group(1)))


@dataclass(frozen=True)
class StopUnderLoad:
    """What `docker stop` did to requests: those sent before it began, and those sent while the
    container was stopping (the window in which a Kubernetes Service still routes to a pod)."""

    sent_before: int
    answered_before: int
    sent_after: int
    answered_after: int
    stop_s: float  # how long `docker stop` took
    exit_code: int
    first_failures: list[str]

    @property
    def lost_before(self) -> int:
        return self.sent_before - self.answered_before


def stop_under_load(
    container: Container, path: str, body: object, clients: int = 8, warmup_s: float = 2.0
) -> StopUnderLoad:
    """POST ``body`` to ``path`` from ``clients`` keep-alive connections, `docker stop` the
    container under that load, and count what was answered until it is gone."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    address = urlsplit(container.url)
    host, port = address.hostname or "127.0.0.1", address.port
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    done = threading.Event()
    records: list[tuple[float, bool, str]] = []  # (sent at, answered 200, failure)
    lock = threading.Lock()

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while not done.is_set():
            connection = connection or http.client.HTTPConnection(host, port, timeout=30)
            sent = time.monotonic()
            try:
                connection.request("POST", path, payload, headers)
                response = connection.getresponse()
                response.read()
                outcome = (sent, response.status == 200, f"HTTP {response.status}")
                keep = response.getheader("connection", "").lower() != "close"
            except (OSError, http.client.HTTPException) as exc:
                outcome = (sent, False, f"{type(exc).__name__}: {exc}")
                keep = False
                time.sleep(0.02)  # the server is gone or going: do not spin
            if not keep:
                connection.close()
                connection = None
            with lock:
                records.append(outcome)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(warmup_s)
        stop_began = time.monotonic()
        docker("stop", container.name, timeout=300)
        stop_s = time.monotonic() - stop_began
        time.sleep(0.5)  # requests sent just before the end get their refusal
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    before = [r for r in records if r[0] < stop_began]
    after = [r for r in records if r[0] >= stop_began]
    return StopUnderLoad(
        sent_before=len(before),
        answered_before=sum(ok for _, ok, _ in before),
        sent_after=len(after),
        answered_after=sum(ok for _, ok, _ in after),
        stop_s=stop_s,
        exit_code=int(state(container.name).get("ExitCode", -1)),
        first_failures=[failure for _, ok, failure in before if not ok][:3],
    )


# --- what an image holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to /, without a leading slash
    size: int
    is_dir: bool


def image_files(image: str) -> list[ImageFile]:
    """Every file and directory of the image's filesystem (a created, never started copy)."""
    name = f"heartml-files-{random.randrange(1 << 32):08x}"
    docker("create", "--name", name, "--network", "none", image, timeout=60)
    try:
        with subprocess.Popen(["docker", "export", name], stdout=subprocess.PIPE) as export:
            assert export.stdout is not None
            with tarfile.open(fileobj=export.stdout, mode="r|") as archive:
                files = [
                    ImageFile(
                        member.name.removeprefix("./").strip("/"), member.size, member.isdir()
                    )
                    for member in archive
                ]
        if export.returncode != 0:
            raise ContainerError(f"docker export {image} failed (exit {export.returncode})")
        return files
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)


# Distributions the serving image must not carry (pyproject.toml: they come with the train and
# dev extras, or with the full MLflow): fitting and converting models (ONNX Runtime serves
# them), plotting, the MLflow server, UI and SQL stack, columnar formats, database drivers and
# the development tools.
NOT_FOR_SERVING = frozenset(
    {
        "scikit-learn",
        "scipy",
        "pandas",
        "skops",
        "skl2onnx",
        "onnx",
        "mlflow",  # the full distribution; mlflow-skinny is the client serving uses
        "matplotlib",
        "pyarrow",
        "sqlalchemy",
        "alembic",
        "flask",
        "gunicorn",
        "graphene",
        "psycopg",
        "psycopg-binary",
        "psycopg2-binary",
        "pytest",
        "hypothesis",
        "schemathesis",
        "ruff",
        "mypy",
    }
)
STORES = re.compile(r"(^|/)(mlflow\.db[^/]*|[^/]+\.sqlite3?|mlruns|mlartifacts)(/|$)")
DATA = re.compile(r"(^|/)(processed\.[a-z]+\.data|heart-disease\.names|data/raw)(/|$)")


def distributions(files: list[ImageFile]) -> set[str]:
    """Normalised names of the distributions installed in the app's site-packages."""
    names = set()
    for item in files:
        match = re.fullmatch(re.escape(SITE_PACKAGES) + r"/([^/-]+)-[^/]+\.dist-info", item.path)
        if match and item.is_dir:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def content_problems(added: list[ImageFile]) -> list[str]:
    """What must not be in the image, among the paths it adds to its base: a UCI data file or
    the data cache, an MLflow store, a git repository, tests, a virtualenv other than the app's
    (/opt/venv), or a distribution serving does not use."""
    problems = []
    for item in added:
        parts = item.path.split("/")
        if DATA.search(item.path):
            problems.append(f"data file {item.path}")
        elif STORES.search(item.path):
            problems.append(f"MLflow store {item.path}")
        elif ".git" in parts:
            problems.append(f"git repository {item.path}")
        elif "tests" in parts:
            problems.append(f"tests {item.path}")
        elif parts[-1] == "pyvenv.cfg" and item.path != "opt/venv/pyvenv.cfg":
            problems.append(f"virtualenv {item.path.removesuffix('/pyvenv.cfg')}")
    problems += [f"distribution {name}" for name in sorted(distributions(added) & NOT_FOR_SERVING)]
    return problems


def site_packages_sizes(files: list[ImageFile]) -> dict[str, int]:
    """Bytes per top-level entry of the app's site-packages; ``X.libs`` counted with ``X``,
    and every ``*.dist-info`` under "(metadata)"."""
    sizes: dict[str, int] = {}
    prefix = SITE_PACKAGES + "/"
    for item in files:
        if item.is_dir or not item.path.startswith(prefix):
            continue
        top = item.path[len(prefix) :].split("/", 1)[0]
        if top.endswith(".dist-info"):
            top = "(metadata)"
        top = top.removesuffix(".libs").removesuffix(".py")
        sizes[top] = sizes.get(top, 0) + item.size
    return dict(sorted(sizes.items(), key=lambda pair: -pair[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the `docker run` options of a pod spec.")
    parser.add_argument("rendered", type=Path, help="rendered overlay (make k8s-render)")
    parser.add_argument("--deployment", default=API_DEPLOYMENT)
    parser.add_argument("--container", default=API_CONTAINER)
    args = parser.parse_args(argv)
    try:
        pod = pod_run(load_rendered(args.rendered), args.deployment, args.container)
    except ContainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(" ".join(["docker", *pod.docker_run("IMAGE", "NAME")]))
    print("with, in the docker client's environment:")
    for key, value in sorted(pod.env.items()):
        print(f"  {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
