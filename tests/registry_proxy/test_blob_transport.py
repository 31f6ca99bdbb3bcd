"""BlobTransport: blob GETs over lean HTTP/1.1 connections, against real servers.

- Debian's docker-registry holding a 6 MiB blob (pieces, a slow reader, keep-alive);
- hypercorn apps: a chunked body, TLS with a throwaway CA;
- a scripted raw TCP server for what no well-behaved server does on purpose: closing a
  kept connection, cutting a body, stalling, sending more than Content-Length.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from registry_proxy.blob_transport import BLOB_BODY, CHUNK, RESERVE, BlobTransport
from registry_proxy.digest import Digest
from registry_proxy.upstream import UpstreamClient, UpstreamUnavailable
from tests.support.net import LOOPBACK
from tests.support.tls import make_tls
from tests.support.tokenserver import serve_app
from tests.support.upstream import UpstreamRegistry

BLOB = {BLOB_BODY: True}


@asynccontextmanager
async def blob_client(
    base_url: str, *, ca_file: Path | None = None, read: float = 5.0
) -> AsyncIterator[tuple[httpx.AsyncClient, BlobTransport]]:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    transport = BlobTransport(httpx.AsyncHTTPTransport(verify=context), context)
    timeout = httpx.Timeout(5.0, read=read)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout) as c:
        yield c, transport


async def get_body(client: httpx.AsyncClient, path: str, **kwargs: object) -> tuple[int, bytes]:
    async with client.stream("GET", path, extensions=BLOB, **kwargs) as response:  # type: ignore[arg-type]
        # bytes(): a 2xx body's piece is a view of the connection's buffer, valid until
        # the next one is asked for
        return response.status_code, b"".join([bytes(p) async for p in response.aiter_raw()])


# --------------------------------------------------------------------------- docker-registry


@pytest.fixture
async def registry_blob(upstream_registry: UpstreamRegistry) -> tuple[str, bytes]:
    """A 6 MiB blob pushed monolithically to a fresh docker-registry: (path, bytes)."""
    data = os.urandom(6 * 1024 * 1024 + 123)
    digest = Digest.of(data)
    async with httpx.AsyncClient(base_url=upstream_registry.url) as c:
        started = await c.post("/v2/team/big/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["location"])
        done = await c.put(location.copy_add_param("digest", str(digest)), content=data)
        assert done.status_code == 201, done.text
    return f"/v2/team/big/blobs/{digest}", data


async def test_blob_bodies_come_in_large_pieces_over_one_kept_connection(
    upstream_registry: UpstreamRegistry, registry_blob: tuple[str, bytes]
) -> None:
    path, data = registry_blob
    async with blob_client(upstream_registry.url) as (client, transport):
        for _ in range(3):
            async with client.stream("GET", path, extensions=BLOB) as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(data))
                pieces = [bytes(piece) async for piece in response.aiter_raw()]
            assert b"".join(pieces) == data
            # about a MiB a piece, not httpcore's 64 KiB reads
            assert CHUNK <= max(len(p) for p in pieces) <= CHUNK + RESERVE
        assert transport.connections_opened == 1  # kept and reused
        # a request without the extension is the inner transport's
        assert (await client.get("/v2/")).status_code == 200
        assert transport.connections_opened == 1


async def test_a_blobs_pieces_are_views_of_one_buffer_and_its_chunks_copies(
    upstream_registry: UpstreamRegistry, registry_blob: tuple[str, bytes]
) -> None:
    """The cache fill hashes and writes each piece in place (UpstreamBlob.pieces): httpx
    must hand BlobTransport's views on untouched, or the fill pays a copy of every byte
    again; chunks() gives bytes that stay valid, for callers that keep them."""
    path, data = registry_blob
    digest = Digest.parse(path.rpartition("/")[2])
    client = UpstreamClient("up", upstream_registry.url)
    try:
        async with client.open_blob("team/big", digest) as blob:
            hasher = hashlib.sha256()
            buffers, copied = set(), 0
            async for piece in blob.pieces():
                if isinstance(piece, memoryview):
                    buffers.add(id(piece.obj))
                else:  # only what came in with the response's head, in its first read
                    copied += len(piece)
                hasher.update(piece)
            assert hasher.hexdigest() == digest.encoded
            assert len(buffers) == 1  # one buffer per transfer, reused
            assert copied <= CHUNK + RESERVE < len(data)
        async with client.open_blob("team/big", digest) as blob:
            kept = [chunk async for chunk in blob.chunks()]
        assert all(type(chunk) is bytes for chunk in kept)
        assert b"".join(kept) == data
    finally:
        await client.aclose()


async def test_a_slow_reader_pauses_the_connection_and_loses_nothing(
    upstream_registry: UpstreamRegistry, registry_blob: tuple[str, bytes]
) -> None:
    path, data = registry_blob
    async with blob_client(upstream_registry.url) as (client, _):
        digest = hashlib.sha256()
        async with client.stream("GET", path, extensions=BLOB) as response:
            async for piece in response.aiter_raw():
                digest.update(piece)
                await asyncio.sleep(0.02)  # the server keeps sending meanwhile
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_range_and_not_found_answers(
    upstream_registry: UpstreamRegistry, registry_blob: tuple[str, bytes]
) -> None:
    path, data = registry_blob
    async with blob_client(upstream_registry.url) as (client, transport):
        status, body = await get_body(client, path, headers={"Range": "bytes=5000000-"})
        assert (status, body) == (206, data[5_000_000:])
        status, body = await get_body(client, path[:-8] + "00000000")
        assert status == 404
        assert b"BLOB_UNKNOWN" in body
        status, body = await get_body(client, path)
        assert (status, body) == (200, data)
        assert transport.connections_opened == 1


# --------------------------------------------------------------------------- hypercorn


async def test_a_chunked_body_is_decoded_and_its_connection_not_kept() -> None:
    parts = [os.urandom(n) for n in (1, 70_000, 3, 200_000)]

    async def chunked(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        return StreamingResponse(body())  # no Content-Length: chunked

    async with (
        serve_app(Starlette(routes=[Route("/{path:path}", chunked)])) as url,
        blob_client(url) as (client, transport),
    ):
        for _ in range(2):
            async with client.stream("GET", "/v2/a/blobs/x", extensions=BLOB) as response:
                assert response.headers["transfer-encoding"] == "chunked"
                assert b"".join([p async for p in response.aiter_raw()]) == b"".join(parts)
        assert transport.connections_opened == 2


async def test_tls_with_the_configured_ca_and_without_it(tmp_path: Path) -> None:
    ca_file, tls = make_tls(tmp_path)
    data = os.urandom(3 * 1024 * 1024)

    async def blob(request: Request) -> Response:
        return Response(data)

    app = Starlette(routes=[Route("/{path:path}", blob)])
    async with serve_app(app, tls=tls) as url:
        async with blob_client(url, ca_file=ca_file) as (client, transport):
            assert await get_body(client, "/v2/a/blobs/x") == (200, data)
            assert await get_body(client, "/v2/a/blobs/x") == (200, data)
            assert transport.connections_opened == 1
        async with (
            UpstreamClient("tls", url, ca_file=ca_file) as upstream,
            upstream.open_blob("a", Digest.of(data)) as opened,
        ):
            assert b"".join([p async for p in opened.chunks()]) == data
        async with UpstreamClient("tls", url, retries=0) as upstream:  # system CAs only
            with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                async with upstream.open_blob("a", Digest.of(data)):
                    pass


# --------------------------------------------------------------------------- scripted server

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw TCP server: `script(reader, writer, n)` answers the n-th connection (from 0)
    after its request head was read; yields (base URL, requests per connection)."""
    requests: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(requests)
        requests.append(0)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                requests[n] += 1
                await script(reader, writer, n)
                if writer.is_closing():
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK}:{port}", requests
    finally:
        server.close()
        await server.wait_closed()


def head(length: int, *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {length}", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_a_kept_connection_the_server_closed_is_replaced_once() -> None:
    body = b"blob bytes"

    async def answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        writer.write(head(len(body)) + body)  # no "Connection: close", and yet it closes
        await writer.drain()
        writer.close()

    async with (
        scripted_server(answer_then_close) as (url, requests),
        blob_client(url) as (client, transport),
    ):
        assert await get_body(client, "/b") == (200, body)
        await asyncio.sleep(0.05)  # the close has arrived by now, or arrives mid-request
        assert await get_body(client, "/b") == (200, body)
        assert requests == [1, 1]
        assert transport.connections_opened == 2


async def test_connection_close_is_honoured() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(2, "Connection: close") + b"ok")
        await writer.drain()

    async with scripted_server(answer) as (url, requests), blob_client(url) as (client, _):
        for _ in range(3):
            assert await get_body(client, "/b") == (200, b"ok")
        assert requests == [1, 1, 1]


async def test_a_cut_body_is_a_protocol_error_and_a_stall_a_read_timeout() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(1_000_000) + b"x" * 300_000)
        await writer.drain()
        if n == 0:
            writer.close()  # cut mid-body
        else:
            await asyncio.sleep(10)  # stall mid-body

    async with scripted_server(cut) as (url, _), blob_client(url, read=0.5) as (client, _):
        received = 0
        with pytest.raises(httpx.RemoteProtocolError, match="received 300000 bytes"):
            async with client.stream("GET", "/b", extensions=BLOB) as response:
                async for piece in response.aiter_raw():
                    received += len(piece)
        assert received == 300_000
        received = 0
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("GET", "/b", extensions=BLOB) as response:
                async for piece in response.aiter_raw():
                    received += len(piece)  # what arrived is handed out before the timeout
        assert received == 300_000


async def test_bytes_beyond_the_content_length_are_dropped_with_the_connection() -> None:
    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(5) + b"12345" + b"GARBAGE")
        await writer.drain()

    async with scripted_server(overlong) as (url, requests), blob_client(url) as (client, t):
        assert await get_body(client, "/b") == (200, b"12345")
        assert await get_body(client, "/b") == (200, b"12345")
        assert requests == [1, 1]
        assert t.connections_opened == 2


async def test_refused_and_closed_before_an_answer() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    async with scripted_server(hang_up) as (url, _), blob_client(url) as (client, _):
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await get_body(client, "/b")
    async with blob_client(url) as (client, _):  # the server is gone: nothing listens
        with pytest.raises(httpx.ConnectError) as caught:
            await get_body(client, "/b")
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
