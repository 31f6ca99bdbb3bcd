"""The systemd units as systemd itself judges them (`systemd-analyze verify` and
`security --offline=true`), and scripts/install.sh putting them, the users and the
directories in place under a root directory with the real systemd-sysusers/-tmpfiles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load
from groundcontrol.config import load_config as load_groundcontrol
from tests.support.images import GeneratedLayout
from tests.support.satellite import REPO_ROOT, SatelliteProcess, satellite_command
from tests.support.skopeo import Skopeo
from tests.support.upstream import require_tool

UNITS = ("satellite.service", "groundcontrol.service")
VENV = "/opt/satellite/venv"
MAX_EXPOSURE = 2.0


def _units_with_real_binaries(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's console scripts: verify checks
    that the executable exists."""
    bin_dir = Path(satellite_command()[0]).parent
    assert (bin_dir / "groundcontrol").exists(), "the project's console scripts are not installed"
    out = []
    for unit in UNITS:
        text = (REPO_ROOT / "systemd" / unit).read_text().replace(f"{VENV}/bin", str(bin_dir))
        (tmp_path / unit).write_text(text)
        out.append(tmp_path / unit)
    return out


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    units = _units_with_real_binaries(tmp_path)
    done = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("unit", UNITS)
def test_service_exposure_is_at_most_two(unit: str) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(REPO_ROOT / "systemd" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match[1])
    print(f"systemd-analyze security --offline=true {unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE


def test_satellite_unit_is_notify_with_watchdog_and_no_capabilities() -> None:
    text = (REPO_ROOT / "systemd" / "satellite.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "TimeoutStopSec=30",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ProtectSystem=strict",
        "StateDirectory=satellite",
        "SystemCallFilter=@system-service",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line


def _passwd(root: Path) -> dict[str, tuple[int, int]]:
    entries = {}
    for line in (root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid, *_ = line.split(":")
        entries[name] = (int(uid), int(gid))
    return entries


def test_install_script_puts_units_users_and_directories_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    script = REPO_ROOT / "scripts/install.sh"
    run = ["bash", str(script), "--root", str(root), "--no-venv"]
    subprocess.run(run, check=True, capture_output=True, timeout=120)

    for unit in UNITS:
        installed = (root / "etc/systemd/system" / unit).read_bytes()
        assert installed == (REPO_ROOT / "systemd" / unit).read_bytes()
    # the hands-free USB bundle import comes with it
    for source, target, mode in (
        ("99-satellite-bundle.rules", "etc/udev/rules.d/99-satellite-bundle.rules", 0o644),
        ("satellite-bundle@.service", "etc/systemd/system/satellite-bundle@.service", 0o644),
        ("satellite-usb-import", "opt/satellite/bin/satellite-usb-import", 0o755),
    ):
        assert (root / target).read_bytes() == (REPO_ROOT / "systemd" / source).read_bytes()
        assert (root / target).stat().st_mode & 0o777 == mode
    users = _passwd(root)
    assert {"satellite", "groundcontrol"} <= set(users)
    for directory, user in (
        ("var/lib/satellite", "satellite"),
        ("var/lib/groundcontrol", "groundcontrol"),
    ):
        st = (root / directory).stat()
        assert (st.st_uid, st.st_gid) == users[user]
        assert st.st_mode & 0o777 == 0o750
    config_path = root / "etc/satellite/satellite.toml"
    config = load(config_path, environ={})
    assert config.host_port == ("0.0.0.0", 8585)
    assert config_path.stat().st_gid == users["satellite"][1]
    assert config_path.stat().st_mode & 0o777 == 0o640

    gc_config = root / "etc/groundcontrol/groundcontrol.toml"
    assert load_groundcontrol(gc_config, environ={}).listen == "0.0.0.0:8080"
    assert gc_config.stat().st_gid == users["groundcontrol"][1]

    # a second run (an upgrade) keeps the operator's config and the same users
    config_path.write_text('[server]\nlisten = "0.0.0.0:9000"\n')
    subprocess.run(run, check=True, capture_output=True, timeout=120)
    assert load(config_path, environ={}).listen == "0.0.0.0:9000"
    assert _passwd(root) == users

    uninstall = ["bash", str(script), "--root", str(root), "--uninstall"]
    subprocess.run(uninstall, check=True, capture_output=True, timeout=120)
    assert not (root / "etc/systemd/system/satellite.service").exists()
    assert not (root / "etc/udev/rules.d/99-satellite-bundle.rules").exists()
    assert not (root / "etc/systemd/system/satellite-bundle@.service").exists()
    assert not (root / "opt/satellite/bin/satellite-usb-import").exists()
    assert config_path.exists()  # data and config stay


def test_install_script_refuses_a_venv_under_another_root(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/install.sh"), "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--root needs --no-venv" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_install_script_rewrites_the_venv_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/install.sh"), "--root", str(root), "--no-venv",
         "--venv", "/srv/sat/venv"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    unit = (root / "etc/systemd/system/satellite.service").read_text()
    assert (
        "ExecStart=/srv/sat/venv/bin/satellite run --config /etc/satellite/satellite.toml" in unit
    )


MDWE_WRAPPER = """\
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    raise SystemExit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}): kernel 6.3 or later needed")
os.execv(sys.argv[1], sys.argv[1:])
"""


class MdweSatellite(SatelliteProcess):
    """`satellite run` with no memory ever writable and executable, as the unit's
    MemoryDenyWriteExecute=yes enforces (here by the kernel's PR_SET_MDWE, inherited
    across exec)."""

    def command(self) -> list[str]:
        wrapper = self.root / "mdwe.py"
        wrapper.write_text(MDWE_WRAPPER)
        return [sys.executable, str(wrapper), *super().command()]


def test_satellite_serves_under_memory_deny_write_execute(
    skopeo: Skopeo, image_layout: GeneratedLayout, tmp_path: Path
) -> None:
    with MdweSatellite(tmp_path / "sat") as sat:
        skopeo.copy(image_layout.oci("app:v1"), f"docker://{sat.host}/library/app:v1")
        assert skopeo.inspect(f"docker://{sat.host}/library/app:v1")["Digest"] == (
            image_layout.app.digest
        )
