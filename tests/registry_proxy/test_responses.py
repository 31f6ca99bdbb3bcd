from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from registry_proxy import responses
from registry_proxy.errors import RegistryError
from registry_proxy.responses import parse_range, read_cached
from tests.registry_proxy.conftest import push_blob


def test_read_cached_returns_page_cache_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(300_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, len(data), 0)  # now certainly cached
        assert read_cached(fd, 100_000, 50_000) == data[50_000:150_000]
        assert read_cached(fd, 100_000, 250_000) == data[250_000:]  # short at the end
        assert read_cached(fd, 10, len(data)) is None  # past the end: the slow path decides
    finally:
        os.close(fd)


@pytest.mark.parametrize("nowait", [True, False])
async def test_blob_served_with_and_without_nowait_reads(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    if not nowait:
        monkeypatch.setattr(responses, "_NOWAIT", None)  # as on a filesystem without it
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = await push_blob(client, "r", data)
    r = await client.get(f"/v2/r/blobs/{digest}")
    assert r.content == data
    r = await client.get(f"/v2/r/blobs/{digest}", headers={"range": "bytes=1048570-2097160"})
    assert r.content == data[1048570:2097161]


def test_chunks_shrink_with_many_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses, "_active_streams", 1)
    assert responses.chunk_size() == responses.CHUNK
    monkeypatch.setattr(responses, "_active_streams", 50)
    assert responses.MIN_CHUNK <= responses.chunk_size() < responses.CHUNK
    monkeypatch.setattr(responses, "_active_streams", 10_000)
    assert responses.chunk_size() == responses.MIN_CHUNK


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 5)
    assert parse_range("bytes=8-", 10) == (8, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=5-100", 10) == (5, 10)
    assert parse_range("items=1-2", 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: the whole blob
    for bad in ("bytes=10-", "bytes=-0", "bytes=4-2", "bytes=-", "bytes=x-1", "bytes=\u0663-"):
        with pytest.raises(RegistryError) as exc:
            parse_range(bad, 10)
        assert exc.value.status == 416
