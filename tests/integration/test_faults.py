"""Faults between the CLI and a real tracking server: nothing is lost, nothing is left half-done.

A small HTTP proxy on loopback stands between `heartml` and a real `mlflow server`. It forwards
every request until its budget runs out, then drops the connection and stops listening, as a
server that dies mid-promotion would. "The server returns" is the proxy listening again on the
same port. The command runs in this process (Typer's runner), the proxy in a thread of it.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    MlflowServer,
    assert_one_champion,
    free_port,
    invoke_heartml,
    make_settings,
    predictions_run,
)
from heartml.registry import promote_version, read_family
from heartml.settings import Settings

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class DyingProxy:
    """Forwards up to ``budget`` HTTP requests to ``upstream``, then goes dark."""

    def __init__(self, upstream_port: int, port: int, budget: int | None) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.budget = budget
        self.forwarded = 0
        self.paths: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                with proxy.lock:
                    allowed = proxy.budget is None or proxy.forwarded < proxy.budget
                    if allowed:
                        proxy.forwarded += 1
                        proxy.paths.append(f"{self.command} {self.path}")
                if not allowed:
                    # The server died: no answer, connection gone, nobody listening.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    threading.Thread(target=proxy.close, daemon=True).start()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True
                upstream.close()

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward  # noqa: N815

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening: later connections are refused, as by a dead server (idempotent)."""
        self.server.shutdown()
        self.server.server_close()


def family_settings(tmp_path: Path, uri: str, prefix: str) -> Settings:
    return make_settings(
        tmp_path, tmp_path, mlflow_tracking_uri=uri, model_prefix=prefix, registry_retries=0
    )


def build_family(uri: str, prefix: str) -> None:
    client = MlflowClient(uri, uri)
    for algorithm, score in (("svm", 0.91), ("knn", 0.93)):
        client.create_registered_model(prefix + algorithm)
        client.create_model_version(
            prefix + algorithm,
            source=f"s3://heartml-test-fixtures/{algorithm}",
            run_id=predictions_run(client),
            tags={"roc_auc": f"{score:.4f}", "best_model": str(algorithm == "knn").lower()},
        )


@pytest.mark.slow
# A full `promote --auto` makes about 50 requests here: the family (2), both versions' stored
# predictions (11), the challenger's card (5), the gate's tags and the claim (2 per tag), the
# alias and stage (6), the reconcile (8). Cut at points across the whole path.
@pytest.mark.parametrize("cut_after", [5, 12, 17, 24, 38, 44, 48])
def test_server_dying_mid_promotion_then_rerun_completes_it(
    mlflow_server: MlflowServer, tmp_path: Path, cut_after: int
) -> None:
    server = mlflow_server
    prefix = f"hdcut{cut_after}x-"
    build_family(server.uri, prefix)
    # The svm version is champion before the promotion that will be interrupted.
    direct = family_settings(tmp_path, server.uri, prefix)
    promote_version(direct, prefix + "svm", 1)

    port = free_port()
    proxy = DyingProxy(server.port, port, budget=cut_after)
    through_proxy = family_settings(tmp_path, proxy.uri, prefix)
    first = invoke_heartml(through_proxy, "promote", "--auto")
    proxy.close()
    assert proxy.forwarded == cut_after, "the server should have died mid-promotion"
    if first.returncode != 0:
        assert first.returncode == 1, first.stderr
        lines = [line for line in first.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: "), first.stderr
        assert "unreachable" in lines[-1] or "registry error" in lines[-1]
        assert "Traceback" not in first.stderr
    # Whatever was written, at most one version holds the alias, and there is a champion to
    # serve: the old one or the new one, never none.
    interrupted = read_family(direct)
    assert len(interrupted.alias_holders) <= 1
    assert interrupted.champion is not None
    assert interrupted.champion.ref in (f"{prefix}svm/1", f"{prefix}knn/1")

    back = DyingProxy(server.port, port, budget=None)  # the server returns, same address
    try:
        again = invoke_heartml(through_proxy, "promote", "--auto")
        assert again.returncode == 0, again.stderr
        assert assert_one_champion(direct) == f"{prefix}knn/1"
        assert read_family(direct).find(prefix + "svm", 1).stage == "Archived"
    finally:
        back.close()
