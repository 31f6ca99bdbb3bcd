#!/usr/bin/env bash
# Installs everything Satellite and its tests need on a fresh Debian machine:
# the Debian packages of the real parts the tests drive, a virtualenv, the PyPI packages.
# Idempotent: a second run installs nothing and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_PACKAGES=(python3 python3-venv ca-certificates)   # what the daemon itself needs
TEST_PACKAGES=(skopeo docker-registry nginx-light wrk containerd postgresql chromium chromium-driver umoci
               apache2-utils tar gzip iproute2
               podman mmdebstrap mkosi prometheus)   # runtime configs, image build, alert rules
want=${SATELLITE_BOOTSTRAP:-full}   # "run" installs only what the daemon needs
packages=("${RUN_PACKAGES[@]}")
[ "$want" = full ] && packages+=("${TEST_PACKAGES[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the postgresql package starts a system cluster we do not use; tests start their own;
  # the prometheus package is there for promtool only
  "${sudo_cmd[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
  "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
# a venv that an earlier run left without pip (python3-venv was missing) is made again
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$PY" -m venv --clear .venv
fi
stamp=.venv/.satellite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
