"""Every shell example in README.md and docs/*.md runs as written.

Each ```sh (or ```bash, ```shell) block runs with `bash -e -o pipefail` in a fresh working
directory, with this virtualenv's bin on PATH, in a session of its own. It must exit 0; the
servers it left running in the background must answer HTTP on every port they listen on;
then the whole process group is stopped (SIGTERM, bounded wait, SIGKILL).

A block that cannot run here (a benchmark, a command binding 0.0.0.0 or writing under
/var/lib, a synopsis) is opted out by an HTML comment on the line right before it:

    <!-- docs-test: skip: why it cannot run here -->

Anything else starting with `<!-- docs-test:` is an error, so a typo cannot opt a block out.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell"}
FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip:\s*(\S.*?)\s*$")
BLOCK_TIMEOUT = 300.0
STOP_GRACE = 15.0


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason given by a skip marker

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    """The shell blocks of a Markdown file, each with the skip marker right before it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path}:{start + 1}: unterminated code block"
        if fence.group(1) in SHELLS:
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(before.strip())
            skip = None
            if marker is not None:
                reason = SKIP.match(marker.group(1))
                assert reason, f"{path}:{start}: unknown docs-test marker {before.strip()!r}"
                skip = reason.group(1)
            code = "\n".join(lines[start + 1 : end]) + "\n"
            blocks.append(Block(path, start + 1, code, skip))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in shell_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.skip is None]


def test_markers_are_well_formed_and_attached() -> None:
    """Every docs-test marker is a skip with a reason, right before a shell block."""
    attached = {(b.path, b.line) for b in ALL_BLOCKS if b.skip is not None}
    for path in DOCS:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "docs-test:" not in line:
                continue
            marker = MARKER.match(line.strip())
            assert marker and SKIP.match(marker.group(1)), f"{path}:{number}: bad marker {line!r}"
            following = next(
                (n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None
            )
            assert (path, following) in attached, f"{path}:{number}: marker not before a block"
    assert RUNNABLE, "no runnable shell block found"


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields after "(comm)": state ppid pgrp ...; zombies hold no sockets
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state held by any of `pids` (from /proc, no tools needed)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _stop_group(pgid: int) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_members(pgid):
            return
    raise AssertionError(f"process group {pgid} outlived SIGKILL: {_group_members(pgid)}")


def block_env(home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GROUNDCONTROL_", "SATELLITE_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    return env


# the quick starts listen on the fixed ports their readers type: one worker runs them all
@pytest.mark.xdist_group("docs-fixed-ports")
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_shell_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    # blocks are written for a clone's root, where the setup left .venv and scripts/
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent, True)
    (work / "scripts").symlink_to(REPO_ROOT / "scripts", True)
    script = tmp_path / "block.sh"
    script.write_text(block.code)
    output = tmp_path / "output.log"
    with output.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", str(script)],
            cwd=work,
            env=block_env(home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: background servers included
        )
    pgid = proc.pid
    try:
        try:
            code = proc.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        text = output.read_text(errors="replace")[-4000:]
        assert code == 0, f"{block.name} exited with {code}:\n{block.code}\n--- output ---\n{text}"
        ports = _listening_ports(_group_members(pgid))
        with httpx.Client(timeout=10, trust_env=False) as client:
            for port in sorted(ports):
                try:
                    response = client.get(f"http://127.0.0.1:{port}/")
                except httpx.HTTPError as exc:
                    raise AssertionError(
                        f"{block.name}: a server it started on port {port} does not answer: {exc}"
                    ) from None
                assert response.status_code < 500, (block.name, port, response.text[:500])
    finally:
        _stop_group(pgid)
