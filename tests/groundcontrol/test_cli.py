"""The operator CLI's output and flags, against real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from groundcontrol.cli import main
from tests.groundcontrol.conftest import CentralRegistry
from tests.groundcontrol.test_serve import gc
from tests.support.groundcontrol import GroundControlProcess, groundcontrol_env

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_admin_token_list_is_a_table_with_iso_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "gc")]
    for name in ("ops", "ci bot"):
        assert main(["admin", "token", "create", name, *data]) == 0
    capsys.readouterr()
    assert main(["admin", "token", "list", *data, "--json"]) == 0
    tokens = sorted(json.loads(capsys.readouterr().out)["tokens"], key=lambda t: t["name"] != "ops")
    assert [t["name"] for t in tokens] == ["ops", "ci bot"]
    assert all(ISO.match(t["created_at"]) for t in tokens)
    assert main(["admin", "token", "revoke", tokens[0]["id"], *data]) == 0
    assert capsys.readouterr().out == f"revoked token {tokens[0]['id']}\n"

    assert main(["admin", "token", "list", *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "CREATED", "LAST", "USED", "REVOKED"]
    ops = next(line for line in lines if " ops " in line).split()
    assert ops[0] == tokens[0]["id"]
    assert ISO.match(ops[2]) and ops[3] == "—" and ISO.match(ops[4])
    bot = next(line for line in lines if "ci bot" in line).split()
    assert bot[0] == tokens[1]["id"] and ISO.match(bot[3]) and bot[4:] == ["—", "—"]
    assert "{" not in "".join(lines)  # not JSON


def run_gc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "groundcontrol", *args],
        env=groundcontrol_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_update_replaces_groups_and_labels_and_errors_name_the_image(
    tmp_path: Path, central_registry: CentralRegistry
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gc.toml"
    config.write_text(f'[registry]\nurl = "{central_registry.url}"\n')
    server = GroundControlProcess(
        tmp_path, "--config", str(config), "--data-dir", str(data)
    ).launch()
    try:
        server.wait()
        token = gc("admin", "token", "create", "ops", "--data-dir", str(data)).strip()
        remote = ["--url", server.url, "--token", token]
        for name in ("a", "b", "c"):
            gc("group", "create", name, "--image", "library/app:v1", *remote)
        gc("satellite", "create", "s", "--group", "a", "--group", "b", "--label", "x=1", *remote)

        shown = json.loads(
            gc("satellite", "update", "s", "--group", "c", "--label", "y=2", *remote)
        )
        assert shown["groups"] == ["c"] and shown["labels"] == {"y": "2"}
        shown = json.loads(
            gc("satellite", "update", "s", "--config-set", "state_interval=30", *remote)
        )
        assert shown["groups"] == ["c"] and shown["labels"] == {"y": "2"}  # untouched
        shown = json.loads(gc("satellite", "update", "s", "--group", "", "--label", "", *remote))
        assert shown["groups"] == [] and shown["labels"] == {}

        failed = run_gc("group", "create", "bad", "--image", "library/nope:1", *remote)
        assert failed.returncode == 1
        assert failed.stderr == "error: image_not_found: library/nope:1 not found in the registry\n"

        listing = gc("satellite", "list", "--status", "pending", *remote)
        assert listing.splitlines()[1].split()[:2] == ["s", "pending"]
        assert len(gc("satellite", "list", "--status", "online", *remote).splitlines()) == 1
    finally:
        assert server.stop() == 0
