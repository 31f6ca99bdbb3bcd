"""image/mkosi: the edge OS image definition, as Debian's mkosi (14) reads it."""

from __future__ import annotations

import subprocess

from tests.support.satellite import REPO_ROOT
from tests.support.upstream import require_tool

MKOSI_DIR = REPO_ROOT / "image" / "mkosi"


def test_mkosi_summary_reads_the_definition() -> None:
    mkosi = require_tool("mkosi", "mkosi")
    done = subprocess.run(
        [mkosi, "summary"], cwd=MKOSI_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout + done.stderr  # mkosi 14 prints it on stderr
    assert "Distribution: debian" in summary
    assert "Release: bookworm" in summary
    assert "Bootable: yes" in summary
    assert f"Build Script: {MKOSI_DIR / 'mkosi.build'}" in summary
    assert "Source File Transfer: copy-git-cached" in summary  # the tracked sources
    for package in ("systemd", "python3", "containerd"):
        assert f" {package}\n" in summary


def test_mkosi_scripts_install_and_enable_the_satellite() -> None:
    build = (MKOSI_DIR / "mkosi.build").read_text()
    for unit_file in (
        "satellite.service",
        "sysusers.d/satellite.conf",
        "tmpfiles.d/satellite.conf",
    ):
        assert f"/root/src/systemd/{unit_file}" in build
        assert (REPO_ROOT / "systemd" / unit_file).is_file()
    assert "systemctl enable satellite.service" in (MKOSI_DIR / "mkosi.postinst").read_text()
    for script in ("mkosi.build", "mkosi.postinst"):
        subprocess.run(["bash", "-n", str(MKOSI_DIR / script)], check=True, timeout=30)
