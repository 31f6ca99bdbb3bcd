"""The admin socket's streamed bundle import: progress lines while it runs, then the
result; an import that fails ends the stream with one error line, not a broken answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from appliance.admin import admin_app
from registry_proxy.progress import Progress


async def _nothing(*_: Any) -> dict[str, Any]:
    return {}


async def _lines(bundle: Any, query: str) -> list[dict[str, Any]]:
    app = admin_app(_nothing, _nothing, _nothing, bundle)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://satellite") as client:
        response = await client.post(f"/bundle{query}", json={"path": "/stick/bundle"})
    assert response.status_code == 200, response.text
    if not query:
        return [response.json()]
    return [json.loads(line) for line in response.text.splitlines()]


async def test_progress_lines_then_the_result() -> None:
    async def bundle(path: Path, progress: Progress | None) -> dict[str, Any]:
        assert path == Path("/stick/bundle") and progress is not None
        progress.expect(300)
        for n in range(3):
            progress.advance(100, f"sha256:{n}")
            await asyncio.sleep(0.15)  # longer than a redraw
        return {"outcome": "applied", "state_version": 2}

    lines = await _lines(bundle, "?progress=1")
    assert lines[-1] == {"result": {"outcome": "applied", "state_version": 2}}
    steps = [line["progress"] for line in lines[:-1]]
    done = [s["done"] for s in steps]
    # a line when the counts changed, never twice the same, the last one complete
    assert done == sorted(set(done)) and done[0] >= 100 and done[-1] == 300
    assert all(s["total"] == 300 for s in steps) and steps[-1]["what"] == "sha256:2"


async def test_without_progress_one_answer() -> None:
    async def bundle(path: Path, progress: Progress | None) -> dict[str, Any]:
        assert progress is None
        return {"outcome": "current"}

    assert await _lines(bundle, "") == [{"outcome": "current"}]


async def test_a_failing_import_ends_with_an_error_line() -> None:
    async def bundle(path: Path, progress: Progress | None) -> dict[str, Any]:
        assert progress is not None
        progress.expect(10)
        raise OSError("the stick was pulled")

    lines = await _lines(bundle, "?progress=1")
    assert lines[-1] == {"result": {"outcome": "error", "message": "OSError: the stick was pulled"}}
