"""A lean asyncio HTTP/1.1 client for the load generators: keep-alive connections, one request at a time on each.

Why not aiohttp: on one machine the load generator shares the CPUs with the service it measures, and aiohttp's
client spends several times this module's CPU per request (URL and header objects, timeout handles, stream
readers). The HTTP parsing is httptools' (llhttp, the parser
uvicorn uses); this module only keeps the connections.

    client = KeepAliveClient("http://127.0.0.1:8001", timeout_s=30.0)
    status, payload = await client.request("POST", "/v1/rank", body)
    await client.close()

A request that fails (connection refused or reset, timeout, malformed answer) raises one of ``REQUEST_ERRORS``
(``OSError``, ``TimeoutError`` among them, or ``httptools.HttpParserError``) and its connection is dropped: a
connection whose answer never came is not reused, so no answer can be read by the wrong request.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httptools

# What a failed request raises: refused or reset connections and timeouts (OSError), malformed answers.
REQUEST_ERRORS = (OSError, httptools.HttpParserError)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and waits for the whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._answer: asyncio.Future | None = None
        self.reusable = True

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(exc or ConnectionResetError("the server closed the connection before answering"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        self.reusable = self.reusable and self._parser.should_keep_alive()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), body))
        else:  # an answer nobody asked for: the connection's state is unknown from here on
            self.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._answer
        finally:
            self._answer = None

    def _fail(self, exc: BaseException) -> None:
        self.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def parse_base_url(base_url: str) -> tuple[str, int, str]:
    """(host, port, netloc) of ``http://HOST[:PORT]``; ValueError naming the URL otherwise."""
    parts = urlsplit(base_url)
    try:
        port = parts.port or 80
    except ValueError:  # a port that is not a number or out of range
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"url {base_url!r}: expected http://HOST[:PORT] (no path; https is not supported)")
    return parts.hostname, port, parts.netloc


class KeepAliveClient:
    """Requests to one ``http://host:port`` over a pool of keep-alive connections (opened as needed, at most
    ``max_connections``; an idle one is reused before a new one is opened).

    A connection idle for ``max_idle_s`` is closed instead of reused: it must go before the server's keep-alive
    timeout (the service's is 5 s) closes it, since a close that the event loop has not processed yet would
    look reusable and the request sent on it would be reset."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, max_connections: int = 1024,
                 max_idle_s: float = 4.0) -> None:
        self.host, self.port, netloc = parse_base_url(base_url)
        self._host_header = f"Host: {netloc}\r\n".encode()
        self.timeout_s = timeout_s
        self.max_idle_s = max_idle_s
        self._idle: list[tuple[float, _Connection]] = []  # (idle since, connection), the latest last
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[_Connection] = set()

    async def request(self, method: str, path: str, body: bytes = b"", headers: bytes = b"") -> tuple[int, bytes]:
        """(status, payload) of one request; ``body`` is sent as JSON; ``headers``: more header lines (CRLF each)."""
        head = b"%s %s HTTP/1.1\r\n%s%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            method.encode(), path.encode(), self._host_header, headers, len(body))
        async with self._slots:
            connection = await self._connection()
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await connection.exchange(head + body)
            except BaseException:
                self._drop(connection)  # its answer may still arrive: never hand it to another request
                raise
            if connection.reusable:
                self._idle.append((time.monotonic(), connection))
            else:
                self._drop(connection)
            return answer

    async def _connection(self) -> _Connection:
        while self._idle:
            idle_since, connection = self._idle.pop()
            if connection.reusable and time.monotonic() - idle_since < self.max_idle_s:
                return connection
            self._drop(connection)  # the server closed it while idle, or may be closing it
        async with asyncio.timeout(self.timeout_s):
            _, connection = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        self._open.add(connection)
        return connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    @property
    def open_connections(self) -> int:
        return sum(connection.reusable for connection in self._open)

    async def close(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
