#!/usr/bin/env bash
# Installs everything Satellite and its tests need on a fresh Debian machine:
# the Debian packages of the real parts the tests drive, a virtualenv, the PyPI packages.
# Idempotent: a second run installs nothing and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(skopeo docker-registry nginx-light wrk containerd postgresql chromium chromium-driver
              apache2-utils ca-certificates tar gzip iproute2)
want=${SATELLITE_BOOTSTRAP:-full}   # "run" installs only what the daemon needs

missing=()
if [ "$want" = full ]; then
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the postgresql package starts a system cluster we do not use; tests start their own
  "${sudo_cmd[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.satellite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
