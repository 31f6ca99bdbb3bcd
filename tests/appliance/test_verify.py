"""`satellite verify` beside a running server: it reads, and removes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.cli import main
from registry_proxy.store import ContentStore


def test_verify_leaves_in_progress_uploads_and_fills_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def in_progress() -> tuple[Path, Path]:
        store = ContentStore(data_dir)
        await store.open()
        try:
            upload_id = await store.start_upload("team/app")
        finally:
            await store.close()
        fill = store.layout.uploads / "fill-0123456789abcdef"  # a cache fill under way
        fill.write_bytes(b"half a blob")
        return store.layout.upload_data(upload_id), fill

    upload, fill = asyncio.run(in_progress())
    assert main(["verify", "--data-dir", str(data_dir)]) == 0
    assert fill.read_bytes() == b"half a blob"
    assert upload.exists()
