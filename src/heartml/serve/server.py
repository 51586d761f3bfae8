"""Run the API under uvicorn: one process, or several workers sharing Prometheus files."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import socket
import tempfile

from heartml.settings import Settings

logger = logging.getLogger(__name__)


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


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. Checks what can be checked before binding."""
    import uvicorn

    if settings.model_dir is not None:
        from heartml.export import ExportError, read_export_info

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
        "timeout_graceful_shutdown": 10,
    }
    if settings.workers == 1:
        from heartml.serve.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    # Workers are new processes that build their settings from the environment: pass on
    # what the command line changed.
    if settings.model_dir is not None:
        os.environ["HEARTML_MODEL_DIR"] = str(settings.model_dir.resolve())
    _multiprocess_metrics()
    uvicorn.run(
        "heartml.serve.app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        **options,  # type: ignore[arg-type]
    )
