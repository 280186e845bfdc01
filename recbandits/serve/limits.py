"""Limits of the HTTP servers in front of the application: request body size, header and idle timeouts.

Ray Serve's HTTP servers (the proxy and, on the fast path, each replica's own) read a request's whole body into
memory before the application sees it, and uvicorn closes idle keep-alive connections but never a connection
that sends no complete request. Both are set here, in every process that runs one of those servers, through
Ray Serve's hook for server middlewares (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names
``http_middlewares``, ``runner.serve_environment`` sets it with the limits in the environment):

* ``BodyLimit``: a body over ``max_body_bytes`` gets 413 before it is read: at once from its Content-Length, or
  as soon as a chunked body passes the limit (a chunked body is buffered up to the limit, never further).
* ``install_header_timeout``: a connection whose request headers are not complete ``header_timeout_s`` after it
  opened (or after its previous response) is closed; idle keep-alive connections close after Ray Serve's
  ``keep_alive_timeout_s``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

MAX_BODY_ENV = "RECBANDITS_MAX_BODY_BYTES"
HEADER_TIMEOUT_ENV = "RECBANDITS_HEADER_TIMEOUT_S"


def error_response_bytes(message: str, code: str) -> bytes:
    """The service's error body (``{message, detail[]}``) for an answer given outside the application."""
    return orjson.dumps({"message": f"body: {message}", "detail": [{"loc": ["body"], "msg": message, "type": code}]})


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
        body = error_response_bytes(message, "too_large")
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def install_header_timeout(seconds: float) -> None:
    """Close uvicorn connections whose request headers are not complete ``seconds`` after the connection opened or
    the previous response was sent (uvicorn itself only times out idle keep-alive connections)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if getattr(HttpToolsProtocol, "_recbandits_header_timeout", None) is not None:
        HttpToolsProtocol._recbandits_header_timeout = seconds
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

    HttpToolsProtocol._recbandits_header_timeout = seconds
    HttpToolsProtocol.connection_made = patched_connection_made
    HttpToolsProtocol.on_message_begin = patched_on_message_begin
    HttpToolsProtocol.on_headers_complete = patched_on_headers_complete
    HttpToolsProtocol.on_response_complete = patched_on_response_complete
    HttpToolsProtocol.connection_lost = patched_connection_lost


def http_middlewares() -> list:
    """Ray Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``), run in every process that
    serves HTTP: installs the header timeout and returns the body limit middleware."""
    from starlette.middleware import Middleware

    header_timeout = os.environ.get(HEADER_TIMEOUT_ENV)
    if header_timeout:
        install_header_timeout(float(header_timeout))
    max_body = os.environ.get(MAX_BODY_ENV)
    return [Middleware(BodyLimit, max_body_bytes=int(max_body))] if max_body else []
