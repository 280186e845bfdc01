"""The load generators' keep-alive HTTP client against a real HTTP server (aiohttp's) on 127.0.0.1.

No test depends on how fast a busy machine runs: concurrency is forced by a barrier in the server, and waits
are for the event itself (a closed connection, an answer sent) with a deadline far beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from recbandits.loadgen.http_client import KeepAliveClient, parse_base_url
from recbandits.loadgen.service_process import free_port_block


@contextlib.asynccontextmanager
async def http_server(keepalive_timeout: float = 75.0):
    """A real aiohttp server; yields (base URL, the peer ports it saw per request, the answers it has sent).

    ``/echo?together=N`` answers once N such requests are in (each must have its own connection);
    ``/echo?sleep=S`` answers after S seconds.
    """
    peers: list[int] = []
    sent: list[bytes] = []
    arrived = asyncio.Condition()

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        together = int(request.query.get("together", 0))
        if together:
            async with arrived:
                arrived.notify_all()
                await asyncio.wait_for(arrived.wait_for(lambda: len(peers) >= together), timeout=30.0)
        delay = float(request.query.get("sleep", 0))
        if delay:
            await asyncio.sleep(delay)
        sent.append(body)
        headers = {"Connection": "close"} if request.query.get("close") else None
        return web.Response(body=b"echo:" + body, status=int(request.query.get("status", 200)), headers=headers)

    async def chunked(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(50):
            await response.write(b"%05d," % index)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    runner = web.AppRunner(app, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    port = free_port_block(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", peers, sent
    finally:
        await runner.cleanup()


async def _until(condition, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def test_sequential_requests_share_one_connection_and_concurrent_ones_get_their_own():
    async def main():
        async with http_server() as (url, peers, _):
            client = KeepAliveClient(url, timeout_s=30.0)
            for index in range(5):
                assert await client.request("POST", "/echo", b'{"i": %d}' % index) == (200, b'echo:{"i": %d}' % index)
            assert len(set(peers)) == 1 and client.open_connections == 1

            peers.clear()
            answers = await asyncio.gather(*(client.request("POST", "/echo?together=4", b"%d" % i) for i in range(4)))
            assert answers == [(200, b"echo:%d" % i) for i in range(4)]  # each answer went to its own request
            assert len(set(peers)) == 4 and client.open_connections == 4  # the idle one reused, three opened
            await client.close()
            assert client.open_connections == 0

    asyncio.run(main())


def test_status_chunked_bodies_and_get_requests_come_back_whole():
    async def main():
        async with http_server() as (url, _, _):
            client = KeepAliveClient(url + "/", timeout_s=30.0)
            assert await client.request("POST", "/echo?status=404", b"x") == (404, b"echo:x")
            status, payload = await client.request("GET", "/chunked")
            assert status == 200 and payload == b"".join(b"%05d," % index for index in range(50))
            assert await client.request("GET", "/missing") == (404, b"404: Not Found")
            await client.close()

    asyncio.run(main())


def test_a_connection_the_server_closes_is_not_reused():
    async def main():
        async with http_server(keepalive_timeout=0.2) as (url, peers, _):
            client = KeepAliveClient(url, timeout_s=30.0)
            assert await client.request("POST", "/echo?close=1", b"a") == (200, b"echo:a")
            assert client.open_connections == 0  # "Connection: close": dropped at once
            assert await client.request("POST", "/echo", b"b") == (200, b"echo:b")
            # The server closes the idle connection after its keep-alive timeout; the client notices on its own.
            await _until(lambda: client.open_connections == 0)
            assert await client.request("POST", "/echo", b"c") == (200, b"echo:c")
            assert len(set(peers)) == 3
            await client.close()

    asyncio.run(main())


def test_a_connection_idle_for_max_idle_s_is_not_reused():
    import time

    async def main():
        async with http_server() as (url, peers, _):
            client = KeepAliveClient(url, timeout_s=30.0, max_idle_s=0.5)
            assert await client.request("POST", "/echo", b"a") == (200, b"echo:a")
            assert await client.request("POST", "/echo", b"b") == (200, b"echo:b")
            assert len(set(peers)) == 1  # reused within max_idle_s
            # A loop blocked past max_idle_s (the server's close would not have been processed yet): a new
            # connection, not the old one.
            time.sleep(0.6)
            assert await client.request("POST", "/echo", b"c") == (200, b"echo:c")
            assert len(set(peers)) == 2 and peers[2] != peers[1]
            await client.close()

    asyncio.run(main())


def test_a_timed_out_answer_never_reaches_the_next_request():
    async def main():
        async with http_server() as (url, peers, sent):
            client = KeepAliveClient(url, timeout_s=2.0)
            with pytest.raises(TimeoutError):
                await client.request("POST", "/echo?sleep=4", b"late")
            assert client.open_connections == 0
            assert await client.request("POST", "/echo", b"next") == (200, b"echo:next")
            await _until(lambda: b"late" in sent)  # the late answer goes out now, on the dropped connection
            await asyncio.sleep(0.1)
            assert await client.request("POST", "/echo", b"again") == (200, b"echo:again")
            assert len(set(peers)) == 2
            await client.close()

    asyncio.run(main())


def test_refused_connections_raise_and_bad_urls_are_named():
    async def main():
        client = KeepAliveClient(f"http://127.0.0.1:{free_port_block(1)}", timeout_s=2.0)
        with pytest.raises(ConnectionRefusedError):
            await client.request("POST", "/v1/rank", b"{}")

    asyncio.run(main())
    assert parse_base_url("http://127.0.0.1:8001") == ("127.0.0.1", 8001, "127.0.0.1:8001")
    assert parse_base_url("http://localhost") == ("localhost", 80, "localhost")
    for bad in ("https://127.0.0.1:8001", "http://127.0.0.1:8001/v1", "127.0.0.1:8001", "http://host:99999"):
        with pytest.raises(ValueError, match="expected http://HOST"):
            parse_base_url(bad)
