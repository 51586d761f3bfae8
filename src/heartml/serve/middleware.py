"""Pure ASGI middleware (no per-request task or copy, unlike BaseHTTPMiddleware)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from heartml.serve.errors import BodyTooLargeError
from heartml.serve.metrics import KNOWN_ENDPOINTS
from heartml.serve.predlog import request_id

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from heartml.serve.metrics import ServeMetrics


class MetricsMiddleware:
    """Count every HTTP request by endpoint, method and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in KNOWN_ENDPOINTS else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (endpoint, scope["method"], status)
            counter = self._counters.get(key)
            if counter is None:
                method = scope["method"] if endpoint != "other" else "other"
                counter = self.metrics.requests.labels(endpoint, method, str(status))
                self._counters[key] = counter
            counter.inc()
            timer = self._timers.get(endpoint)
            if timer is None:
                timer = self._timers[endpoint] = self.metrics.latency.labels(endpoint)
            timer.observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    # Answered before the app runs, and the connection closed: the body that
                    # was announced is not read.
                    refusal = BodyTooLargeError.over_bytes(self.max_bytes, connection="close")
                    await refusal.response()(scope, receive, send)
                    return
                break

        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read: the app's handler answers it.
                    raise BodyTooLargeError.over_bytes(self.max_bytes)
            return message

        await self.app(scope, limited, send)


REQUEST_ID_KEY = "heartml.request_id"


class RequestIdMiddleware:
    """Give every request an id: the client's ``X-Request-ID`` when sane, else a new one.

    The id is in ``scope[REQUEST_ID_KEY]`` for the routes (the prediction log records it) and
    in the response's ``X-Request-ID`` header, so a client can quote it (labels for the
    monitor report, a support ticket).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
                break
        rid = request_id(given)
        scope[REQUEST_ID_KEY] = rid
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
