#!/usr/bin/env bash
# Installs Satellite as a service on a Debian host (as root): a virtualenv with the
# project, the systemd units, the users and directories, a default config.
#
#   bash scripts/install.sh                 # install or upgrade, then (re)start satellite
#   bash scripts/install.sh --groundcontrol # also enable and start groundcontrol.service
#   bash scripts/install.sh --root DIR --no-venv   # under DIR, no systemctl (images, tests)
#   bash scripts/install.sh --no-venv       # units, users, directories and config only
#   bash scripts/install.sh --uninstall     # stop, disable, remove units and venv; keeps data
#
# Idempotent: a second run upgrades the venv in place and leaves an edited config alone.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
root=/ venv=/opt/satellite/venv with_venv=1 start=1 groundcontrol=0 uninstall=0
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --no-venv) with_venv=0; shift ;;
    --no-start) start=0; shift ;;
    --groundcontrol) groundcontrol=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    *) echo "install.sh: unknown argument $1 (see the head of this script)" >&2; exit 2 ;;
  esac
done
root=${root%/}
if [ -n "$root" ] && [ "$with_venv" = 1 ] && [ "$uninstall" = 0 ]; then
  # a venv records its own path: made under DIR it would not run once DIR is the root
  echo "install.sh: --root needs --no-venv (make the venv at its final path, as image/ does)" >&2
  exit 2
fi
units=$root/etc/systemd/system
systemd_up=0
[ -z "$root" ] && [ -d /run/systemd/system ] && systemd_up=1

if [ "$uninstall" = 1 ]; then
  if [ "$systemd_up" = 1 ]; then
    systemctl disable --now satellite.service groundcontrol.service 2>/dev/null || true
  fi
  rm -f "$units/satellite.service" "$units/groundcontrol.service" \
        "$units/satellite-bundle@.service" "$root/etc/udev/rules.d/99-satellite-bundle.rules" \
        "$root/opt/satellite/bin/satellite-usb-import" \
        "$root/etc/sysusers.d/satellite.conf" "$root/etc/tmpfiles.d/satellite.conf"
  rm -rf "$root$venv"
  [ "$systemd_up" = 1 ] && systemctl daemon-reload
  echo "uninstalled; kept /etc/satellite, /var/lib/satellite and the users (see docs/install.md)"
  exit 0
fi

if [ "$with_venv" = 1 ]; then
  [ -x "$root$venv/bin/python" ] || python3 -m venv "$root$venv"
  "$root$venv/bin/python" -m pip install -q --upgrade "$src"
fi

install -d -m 0755 "$units" "$root/etc/sysusers.d" "$root/etc/tmpfiles.d"
for unit in satellite.service groundcontrol.service; do
  sed "s#/opt/satellite/venv#$venv#g" "$src/systemd/$unit" > "$units/.$unit.tmp"
  chmod 0644 "$units/.$unit.tmp"
  mv "$units/.$unit.tmp" "$units/$unit"
done
# hands-free USB bundle import: the udev rule, its unit and the script the unit runs
install -d -m 0755 "$root/etc/udev/rules.d" "$root/opt/satellite/bin"
install -m 0644 "$src/systemd/99-satellite-bundle.rules" "$root/etc/udev/rules.d/99-satellite-bundle.rules"
sed "s#/opt/satellite/venv#$venv#g" "$src/systemd/satellite-bundle@.service" > "$units/.satellite-bundle@.service.tmp"
chmod 0644 "$units/.satellite-bundle@.service.tmp"
mv "$units/.satellite-bundle@.service.tmp" "$units/satellite-bundle@.service"
sed "s#/opt/satellite/venv#$venv#g" "$src/systemd/satellite-usb-import" > "$root/opt/satellite/bin/.satellite-usb-import.tmp"
chmod 0755 "$root/opt/satellite/bin/.satellite-usb-import.tmp"
mv "$root/opt/satellite/bin/.satellite-usb-import.tmp" "$root/opt/satellite/bin/satellite-usb-import"
install -m 0644 "$src/systemd/sysusers.d/satellite.conf" "$root/etc/sysusers.d/satellite.conf"
install -m 0644 "$src/systemd/tmpfiles.d/satellite.conf" "$root/etc/tmpfiles.d/satellite.conf"
if [ -n "$root" ]; then
  systemd-sysusers --root="$root" "$root/etc/sysusers.d/satellite.conf"
  systemd-tmpfiles --create --root="$root" "$root/etc/tmpfiles.d/satellite.conf"
else
  systemd-sysusers /etc/sysusers.d/satellite.conf
  systemd-tmpfiles --create /etc/tmpfiles.d/satellite.conf
fi

config=$root/etc/satellite/satellite.toml
if [ ! -e "$config" ]; then
  cat > "$config.tmp" <<'TOML'
# Satellite configuration (docs/satellite.md). Restart after a change:
#   systemctl restart satellite
[server]
listen = "0.0.0.0:8585"

[storage]
path = "/var/lib/satellite"
max_bytes = "50GiB"

[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true
TOML
  chmod 0640 "$config.tmp"
  # the group as the target system numbers it (under --root the host may have none)
  chgrp "$(awk -F: '$1=="satellite"{print $3}' "$root/etc/group")" "$config.tmp"
  mv "$config.tmp" "$config"
fi

gc_config=$root/etc/groundcontrol/groundcontrol.toml
if [ ! -e "$gc_config" ]; then
  printf '# Ground Control configuration (docs/groundcontrol.md). Restart after a change:\n#   systemctl restart groundcontrol\n[server]\nlisten = "0.0.0.0:8080"\n' > "$gc_config.tmp"
  chmod 0640 "$gc_config.tmp"
  chgrp "$(awk -F: '$1=="groundcontrol"{print $3}' "$root/etc/group")" "$gc_config.tmp"
  mv "$gc_config.tmp" "$gc_config"
fi

if [ "$systemd_up" = 1 ]; then
  systemctl daemon-reload
  if [ "$start" = 1 ]; then
    systemctl enable satellite.service
    systemctl restart satellite.service
    [ "$groundcontrol" = 1 ] && systemctl enable --now groundcontrol.service
  fi
fi
echo "installed: units in $units, venv $venv, config /etc/satellite/satellite.toml"
