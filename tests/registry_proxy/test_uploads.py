"""Upload chunks that are cut off: what reached the disk and the offset agree."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry_proxy import store as store_module
from registry_proxy.store import WRITE_BUFFER, ContentStore


async def test_a_cancelled_chunk_finishes_its_write_before_the_file_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "data")
    await store.open()
    try:
        upload = await store.start_upload("r")
        writing = threading.Event()
        real = store_module.write_all

        def slow(fd: int, data: bytes) -> None:
            writing.set()
            time.sleep(0.3)  # the request is cancelled while this write is under way
            real(fd, data)

        monkeypatch.setattr(store_module, "write_all", slow)

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * WRITE_BUFFER
            await asyncio.sleep(30)  # a client that stalls, then goes away

        task = asyncio.create_task(store.append_upload("r", upload, body()))
        assert await asyncio.to_thread(writing.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.setattr(store_module, "write_all", real)
        assert store.layout.upload_data(upload).stat().st_size == WRITE_BUFFER
        assert await store.upload_offset("r", upload) == WRITE_BUFFER
    finally:
        await store.close()
