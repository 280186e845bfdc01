"""Limits of the HTTP servers in front of the application: request body size, header and idle timeouts.

Ray Serve's HTTP servers (the proxy and, on the fast path, each replica's own) read a request's whole body into
memory before the application sees it, and uvicorn closes idle keep-alive connections but never a connection
that sends no complete request. Both are set here, in every process that runs one of those servers, through
Ray Serve's hook for server middlewares (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names
``http_middlewares``, ``runner.serve_environment`` sets it with the limits in the environment):

* ``InFlightLimit``: a request arriving while ``max_ongoing_requests + max_queued_requests`` are in flight in this
  server gets 503 with Retry-After before Ray Serve sees it. Ray Serve's own admission control (configured on the
  deployment, the same limits) refuses too, but only after its request handling: on the fast path a refusal there
  costs about a third of a served request of the replica's one event loop, so at 5x overload refusing crowded out
  serving (docs/BENCHMARKS.md, "Overload"). This refusal costs the parse and a counter; Ray Serve's (plain text)
  are answered in the service's format. The limit is a ceiling: under sustained overload it shrinks to what keeps
  served requests within ``latency_target_s`` (``InFlightLimit`` says how).
* ``BodyLimit``: a body over ``max_body_bytes`` gets 413 before it is read: at once from its Content-Length, or
  as soon as a chunked body passes the limit (a chunked body is buffered up to the limit, never further).
* ``install_connection_limits``: a connection whose request headers are not complete ``header_timeout_s`` after
  it opened (or after its previous response) is closed; idle keep-alive connections close after Ray Serve's
  ``keep_alive_timeout_s``; a connection beyond ``max_connections`` open at once gets 503 with Retry-After and is
  closed before anything is parsed (every open connection costs the server's one event loop work, and requests
  on thousands of them would wait seconds for their turn before admission control could even refuse them).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import orjson

MAX_BODY_ENV = "RECBANDITS_MAX_BODY_BYTES"
HEADER_TIMEOUT_ENV = "RECBANDITS_HEADER_TIMEOUT_S"
MAX_CONNECTIONS_ENV = "RECBANDITS_MAX_CONNECTIONS"
RETRY_AFTER_ENV = "RECBANDITS_RETRY_AFTER_S"
MAX_IN_FLIGHT_ENV = "RECBANDITS_MAX_IN_FLIGHT"  # a replica's own server
MAX_IN_FLIGHT_PROXY_ENV = "RECBANDITS_MAX_IN_FLIGHT_PROXY"  # the proxy, in front of every replica
LATENCY_TARGET_ENV = "RECBANDITS_LATENCY_TARGET_S"  # the in-flight limits adapt to it ("0": fixed)


def error_response_bytes(field: str, message: str, code: str) -> bytes:
    """The service's error body (``{message, detail[]}``) for an answer given outside the application."""
    return orjson.dumps({"message": f"{field}: {message}", "detail": [{"loc": [field], "msg": message, "type": code}]})


class InFlightLimit:
    """Pure ASGI middleware: 503 with Retry-After for a request beyond the in-flight limit of this server.

    The limit adapts to the latency target (``latency_target_s``; ``None``: fixed at ``limit``). A server's
    requests in flight share its one event loop, so a served request's latency grows with the number in flight,
    and a fixed ceiling sized to absorb short stalls at the sustainable rate lets latency reach seconds under
    sustained overload. Every ``WINDOW_S`` the median latency of the requests completed in the window is compared
    with half the target (additive increase, multiplicative decrease, as TCP's congestion window): above it in
    two windows in a row that each refused a request (the limit was reached: a stall at a sustainable rate, which
    leaves it unreached, changes nothing), the limit shrinks in proportion (latency grows about linearly with the
    number in flight), by half at most; at or below it, the limit grows by an eighth towards ``limit``. It stays
    between ``floor`` (``min(limit, 8)``) and ``limit``.
    """

    WINDOW_S = 0.1
    MIN_WINDOW_REQUESTS = 8  # fewer completions: the window goes on

    def __init__(self, app, limit: int, retry_after_s: int, latency_target_s: float | None = None):
        self.app = app
        self.ceiling = self.limit = int(limit)
        self.floor = min(self.ceiling, 8)
        self.retry_after_s = retry_after_s
        self.latency_target_s = latency_target_s or None
        self.in_flight = 0
        self._refusals: dict[int, tuple[dict, dict]] = {}
        self._window_start = time.monotonic()
        self._window: list[float] = []
        self._windows_over = 0
        self._refused_in_window = 0

    def refusal(self) -> tuple[dict, dict]:
        """The 503's start and body messages (they name the limit in force)."""
        if self.limit not in self._refusals:
            body = error_response_bytes("service", f"overloaded ({self.limit} requests in flight); retry after "
                                        f"{self.retry_after_s} s", "overloaded")
            self._refusals[self.limit] = (
                {"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(self.retry_after_s).encode())]},
                {"type": "http.response.body", "body": body})
        return self._refusals[self.limit]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self._refused_in_window += 1
            start, body = self.refusal()
            await send(start)
            await send(body)
            return
        self.in_flight += 1  # one event loop per server: no lock needed
        started = time.monotonic()
        try:
            await self.app(scope, receive, self._in_service_format(send))
        finally:
            self.in_flight -= 1
            if self.latency_target_s is not None:
                now = time.monotonic()
                self.completed(now, now - started)

    def completed(self, now: float, latency_s: float) -> None:
        """Count a served request's latency; at the end of a window, adapt the limit."""
        self._window.append(latency_s)
        elapsed = now - self._window_start
        if elapsed < self.WINDOW_S or len(self._window) < self.MIN_WINDOW_REQUESTS:
            return
        median = sorted(self._window)[len(self._window) // 2]
        half_target = self.latency_target_s / 2
        if median > half_target and self._refused_in_window:
            self._windows_over += 1
            if self._windows_over >= 2:
                self.limit = max(self.floor, int(self.limit * max(0.5, half_target / median)))
        elif median <= half_target:
            self._windows_over = 0
            self.limit = min(self.ceiling, self.limit + max(1, self.limit // 8))
        else:
            self._windows_over = 0  # slow, but the limit was not reached: not an overload
        self._window_start, self._window, self._refused_in_window = now, [], 0

    def _in_service_format(self, send):
        """``send`` that answers Ray Serve's own refusal (a plain-text 503: its admission control refused a request
        that passed this limit as another finished) with this limit's JSON refusal; every other message unchanged."""
        replacing = False

        async def send_in_service_format(message) -> None:
            nonlocal replacing
            if message["type"] == "http.response.start" and message["status"] == 503 and not any(
                    name == b"content-type" and value.startswith(b"application/json")
                    for name, value in message.get("headers", ())):
                replacing = True
                return await send(self.refusal()[0])
            if replacing and message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send(self.refusal()[1])
                return
            await send(message)

        return send_in_service_format


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body over ``max_body_bytes``, before the body is read whole."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length, chunked = None, False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None and length > self.max_body_bytes:
            return await self._refuse(send, f"{length} bytes exceed max_body_bytes={self.max_body_bytes}")
        if length is not None or not chunked:
            return await self.app(scope, receive, send)
        # Chunked: no length up front. Buffer up to the limit, then hand the buffered body on.
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return await self._refuse(send, f"the chunked body exceeds max_body_bytes={self.max_body_bytes}")
            messages.append(message)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def buffered() -> dict[str, Any]:
            message = next(replay, None)
            return message if message is not None else await receive()

        return await self.app(scope, buffered, send)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = error_response_bytes("body", message, "too_large")
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def install_connection_limits(header_timeout_s: float, max_connections: int | None = None,
                              retry_after_s: int = 1) -> None:
    """Patch uvicorn's httptools protocol (the one Ray Serve's servers use): close connections whose request headers
    are not complete ``header_timeout_s`` after the connection opened or the previous response was sent (uvicorn
    itself only times out idle keep-alive connections), and refuse connections beyond ``max_connections``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HttpToolsProtocol._recbandits_max_connections = max_connections
    HttpToolsProtocol._recbandits_refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: %d\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s") % (
        retry_after_s, len(refusal := error_response_bytes("connection", f"the server has {max_connections} "
                                                           "connections open; retry later", "too_many_connections")),
        refusal)
    if getattr(HttpToolsProtocol, "_recbandits_header_timeout", None) is not None:
        HttpToolsProtocol._recbandits_header_timeout = header_timeout_s
        return
    connection_made, on_message_begin = HttpToolsProtocol.connection_made, HttpToolsProtocol.on_message_begin
    on_headers_complete, connection_lost = HttpToolsProtocol.on_headers_complete, HttpToolsProtocol.connection_lost
    on_response_complete = HttpToolsProtocol.on_response_complete

    def arm(self) -> None:
        disarm(self)
        self._recbandits_header_timer = self.loop.call_later(
            HttpToolsProtocol._recbandits_header_timeout, _header_timed_out, self)

    def disarm(self) -> None:
        timer = getattr(self, "_recbandits_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._recbandits_header_timer = None

    def _header_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def patched_connection_made(self, transport) -> None:
        connection_made(self, transport)
        limit = HttpToolsProtocol._recbandits_max_connections
        if limit is not None and len(self.connections) > limit:
            transport.write(HttpToolsProtocol._recbandits_refusal)
            transport.close()
            return
        arm(self)

    def patched_on_message_begin(self) -> None:
        on_message_begin(self)
        arm(self)

    def patched_on_headers_complete(self) -> None:
        disarm(self)
        on_headers_complete(self)

    def patched_on_response_complete(self) -> None:
        on_response_complete(self)
        if not self.transport.is_closing() and not self.pipeline:
            disarm(self)  # idle now: uvicorn's keep-alive timeout takes over until the next request begins

    def patched_connection_lost(self, exc) -> None:
        disarm(self)
        connection_lost(self, exc)

    HttpToolsProtocol._recbandits_header_timeout = header_timeout_s
    HttpToolsProtocol.connection_made = patched_connection_made
    HttpToolsProtocol.on_message_begin = patched_on_message_begin
    HttpToolsProtocol.on_headers_complete = patched_on_headers_complete
    HttpToolsProtocol.on_response_complete = patched_on_response_complete
    HttpToolsProtocol.connection_lost = patched_connection_lost


def _in_ray_serve_proxy() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as handle:  # Ray names its actor processes ray::<Class>
            return handle.read().startswith(b"ray::ProxyActor")
    except OSError:
        return False


def http_middlewares() -> list:
    """Ray Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``), run in every process that
    serves HTTP: installs the header timeout and returns the body limit middleware."""
    from starlette.middleware import Middleware

    retry_after = math.ceil(float(os.environ.get(RETRY_AFTER_ENV, "1")))
    header_timeout = os.environ.get(HEADER_TIMEOUT_ENV)
    if header_timeout:
        max_connections = os.environ.get(MAX_CONNECTIONS_ENV)
        install_connection_limits(float(header_timeout), int(max_connections) if max_connections else None,
                                  retry_after)
    middlewares = []
    max_body = os.environ.get(MAX_BODY_ENV)
    if max_body:
        middlewares.append(Middleware(BodyLimit, max_body_bytes=int(max_body)))
    max_in_flight = os.environ.get(MAX_IN_FLIGHT_PROXY_ENV if _in_ray_serve_proxy() else MAX_IN_FLIGHT_ENV)
    if max_in_flight:  # applied last: the outermost, the first to see a request
        middlewares.append(Middleware(InFlightLimit, limit=int(max_in_flight), retry_after_s=retry_after,
                                      latency_target_s=float(os.environ.get(LATENCY_TARGET_ENV, "0"))))
    return middlewares
