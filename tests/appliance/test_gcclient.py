"""The satellite's Ground Control client: byte caps while reading, error shapes, and one
fresh attempt when a kept-alive connection turns out closed by the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from appliance.gcclient import GroundControlClient, GroundControlError, GroundControlUnreachable
from tests.support.net import LOOPBACK

Handler = Callable[[bytes], bytes]


def answer(status: int, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
    return head.encode() + b"Content-Type: application/json\r\n\r\n" + body


async def serve(handler: Handler, close_after_answer: bool) -> AsyncIterator[str]:
    """A tiny HTTP/1.1 server. With ``close_after_answer`` each connection answers one
    request, then reads the next one and closes without answering: what a client meets
    when it reuses a connection at the instant the server times it out."""

    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                reply = handler(head)
                if not reply:
                    break  # no answer at all: the connection just closes
                writer.write(reply)
                await writer.drain()
                if close_after_answer:
                    await reader.readuntil(b"\r\n\r\n")
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(on_connect, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_a_closed_keep_alive_connection_is_retried_once() -> None:
    body = json.dumps({"versions": [1, 2], "latest": 2}).encode()
    async for url in serve(lambda head: answer(200, body), close_after_answer=True):
        async with GroundControlClient(url, "gcs_x") as client:
            for _ in range(3):  # every call after the first meets a dying connection
                assert await client.root_versions() == [1, 2]


async def test_registration_is_never_sent_twice() -> None:
    sent: list[bytes] = []

    def handler(head: bytes) -> bytes:
        sent.append(head)
        return b""  # the connection closes without an answer

    async for url in serve(handler, close_after_answer=True):
        async with GroundControlClient(url) as client:
            with pytest.raises(GroundControlUnreachable):
                await client.register("gcj_x.y", "AAAA")
    assert len(sent) == 1


async def test_answers_over_the_cap_and_error_bodies() -> None:
    big = b"[" + b"1," * 600_000 + b"1]"
    error = json.dumps({"error": {"code": "satellite_revoked", "message": "no"}}).encode()

    def handler(head: bytes) -> bytes:
        if b"/roots " in head:
            return answer(200, big)
        return answer(403, error)

    async for url in serve(handler, close_after_answer=False):
        async with GroundControlClient(url, "gcs_x") as client:
            with pytest.raises(GroundControlError, match="over"):
                await client.root_versions()
            with pytest.raises(GroundControlError) as refused:
                await client.state("s", 1)
            assert refused.value.status == 403 and refused.value.code == "satellite_revoked"
            assert not isinstance(refused.value, GroundControlUnreachable)
