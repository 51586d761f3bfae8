"""Run the API under uvicorn: one process, or several workers sharing Prometheus files.

Stopping drains first. Kubernetes sends SIGTERM while it takes the pod out of the Service's
endpoints, and kube-proxy and ingress controllers learn of that a few seconds later: until
then they keep sending requests to the pod. So for ``shutdown_delay_s`` after SIGTERM the
server goes on accepting and answering, then stops the way uvicorn does: no new connections,
requests in flight get up to ``GRACEFUL_SHUTDOWN_S`` to finish. SIGINT (Ctrl-C) or a second
SIGTERM skips the rest of the drain. The delay plus that grace must stay below the pod's
``terminationGracePeriodSeconds``, after which the kubelet kills the process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import Multiprocess

from heartml.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# Seconds that requests in flight get to finish once the server stops accepting connections.
GRACEFUL_SHUTDOWN_S = 10


class ServeError(Exception):
    """The server cannot start; the message is one line for the user."""


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, when the address is taken (uvicorn would log and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"{host}:{port} is already in use") from exc
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _multiprocess_metrics() -> None:
    """Give the workers one directory for their metric files (unless the operator did)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="heartml-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


def _announce_drain(delay_s: float) -> None:
    logger.info("SIGTERM: draining for %.1f s before stopping (a second signal stops now)", delay_s)


class CloseWhileDraining:
    """ASGI wrapper: while draining, every response closes its connection.

    A keep-alive client (a proxy's upstream pool, a load balancer) would otherwise go on
    sending on the connection it has, to the pod that is going away; after a response with
    ``Connection: close`` it opens a new one, which the Service routes to a pod that stays.
    """

    def __init__(self, app: ASGIApp, draining: threading.Event) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.draining.is_set():
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain: the first SIGTERM starts it, the deadline ends it."""

    def __init__(self, config: uvicorn.Config, delay_s: float, draining: threading.Event) -> None:
        super().__init__(config)
        self.delay_s = delay_s
        self.draining = draining
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.delay_s > 0 and self.drain_until is None:
            self.drain_until = time.monotonic() + self.delay_s
            self.draining.set()
            _announce_drain(self.delay_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


class DrainingSupervisor(Multiprocess):
    """uvicorn's worker supervisor with the drain: the workers stop when the delay is over.

    Only the supervisor receives the pod's SIGTERM; the workers go on serving until it passes
    the stop on to them.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], delay_s: float):
        super().__init__(config, sockets)
        self.delay_s = delay_s
        self.drain: threading.Timer | None = None

    def handle_term(self) -> None:
        if self.delay_s <= 0 or self.drain is not None:
            super().handle_term()
            return
        _announce_drain(self.delay_s)
        self.drain = threading.Timer(self.delay_s, self.should_exit.set)
        self.drain.daemon = True
        self.drain.start()


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM and the drain after it. Checks what can be checked first."""
    if settings.model_dir is not None:
        from heartml.model.export import ExportError, read_export_info

        try:
            read_export_info(settings.model_dir)
        except ExportError as exc:
            raise ServeError(str(exc)) from exc
    check_port(settings.host, settings.port)

    level = settings.log_level.upper()
    logging.getLogger("heartml").setLevel(level)
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        # One line per request costs more than the prediction; the metrics count requests.
        "access_log": level == "DEBUG",
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # Python's own event loop, not uvloop (uvicorn's default when it is installed): uvloop
        # serves busy connections unevenly. Measured with wrk at c=8 on a handler that spends
        # 1.3 ms of CPU: the same 740 requests/s, but p50 9.4 / p90 18.8 / p99 19.0 ms with
        # uvloop (a tenth of the requests wait a second round) against 10.8 / 10.9 / 11.0 with
        # asyncio; on a 0.15 ms handler p99 2.8 against 2.1 ms, for 5 % fewer requests/s.
        # Its selector rings the shadow process's bell when the loop goes idle
        # (heartml.serve.giveway).
        "loop": "heartml.serve.giveway:new_event_loop",
    }
    if settings.workers == 1:
        from heartml.serve.app import create_app

        draining = threading.Event()
        app = CloseWhileDraining(create_app(settings), draining)
        server = DrainingServer(
            uvicorn.Config(app, **options),  # type: ignore[arg-type]
            settings.shutdown_delay_s,
            draining,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised once uvicorn stopped
            server.run()
        if not server.started:
            raise ServeError("the server did not start (see the log above)")
        return
    # Workers are new processes that build their settings from the environment: pass on
    # what the command line changed.
    if settings.model_dir is not None:
        os.environ["HEARTML_MODEL_DIR"] = str(settings.model_dir.resolve())
    _multiprocess_metrics()
    config = uvicorn.Config(
        "heartml.serve.app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        **options,  # type: ignore[arg-type]
    )
    supervisor = DrainingSupervisor(config, [config.bind_socket()], settings.shutdown_delay_s)
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
