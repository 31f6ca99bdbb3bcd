#!/usr/bin/env bash
# Builds the appliance's own OCI image, without a daemon, as an OCI image layout:
#
#   bash image/build.sh OUTPUT_DIR        # then: skopeo copy oci:OUTPUT_DIR:latest docker://...
#
# Three layers, each reproducible (same inputs, same digest) and cached by its inputs:
#   1. Debian bookworm, essential packages + python3 + ca-certificates (mmdebstrap, no
#      daemon; timestamps clamped to a fixed epoch, docs/man/locales left out)
#   2. the PyPI dependencies, resolved from pyproject.toml for the image's Python and
#      platform, installed as manylinux wheels (keyed by the resolved name==version list)
#   3. the project itself, its venv skeleton, a non-root user (10001) and /var/lib/satellite
# Only the Debian mirror (the host's apt sources) and PyPI are reached.
#
# Environment: SATELLITE_IMAGE_ARCH (amd64, arm64; default this host's), SATELLITE_IMAGE_CACHE
# (default ~/.cache/satellite-image), SATELLITE_IMAGE_SOURCES (an apt .sources or .list file),
# SOURCE_DATE_EPOCH (image created time; default the last commit's time).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bash image/build.sh OUTPUT_DIR}
python=${PYTHON:-python3}
arch=${SATELLITE_IMAGE_ARCH:-$(dpkg --print-architecture)}
suite=bookworm
image_python=3.11 # bookworm's python3
base_epoch=1700000000 # layers 1 and 2 keep this clock: fixed, so they survive new commits
packages=python3,ca-certificates
cache=${SATELLITE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/satellite-image}
sources=${SATELLITE_IMAGE_SOURCES:-}
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$f" ] && sources=$f && break
  done
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || echo "$base_epoch")}
case $arch in
  amd64) wheel_platforms=(manylinux_2_36_x86_64 manylinux2014_x86_64) ;;
  arm64) wheel_platforms=(manylinux_2_36_aarch64 manylinux2014_aarch64) ;;
  *) echo "build.sh: unsupported architecture $arch (amd64, arm64)" >&2; exit 2 ;;
esac
for tool in mmdebstrap "$python"; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (scripts/bootstrap.sh installs it)" >&2; exit 2; }
done
layout_py=$src/image/layout.py
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key() { sha256sum | cut -c1-20; }
say() { echo "build.sh: $*" >&2; }

# ---- layer 1: Debian
dpkg_opts=()
for p in doc man info locale lintian; do
  dpkg_opts+=(--dpkgopt="path-exclude=/usr/share/$p/*")
done
dpkg_opts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
base_key=$( { echo "$suite $arch $packages $base_epoch"; echo "${dpkg_opts[*]}"; cat "$sources"; } | key)
base=$cache/base-$base_key
if [ ! -s "$base.tar.gz" ]; then
  say "layer 1: mmdebstrap $suite ($arch) with $packages"
  SOURCE_DATE_EPOCH=$base_epoch mmdebstrap --quiet --variant=essential --include="$packages" \
    --architectures="$arch" --format=tar "${dpkg_opts[@]}" \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/cache/ldconfig/aux-cache' \
    "$suite" "$work/base.tar" "$sources"
  "$python" "$layout_py" gzip "$work/base.tar" "$work/base.tar.gz"
  tar -xOf "$work/base.tar" ./etc/passwd > "$work/base.passwd"
  tar -xOf "$work/base.tar" ./etc/group > "$work/base.group"
  mv "$work/base.passwd" "$base.passwd"; mv "$work/base.group" "$base.group"
  mv "$work/base.tar.gz" "$base.tar.gz"
else
  say "layer 1: cached ($base.tar.gz)"
fi

# ---- layer 2: the PyPI dependencies
pip_target=(--only-binary=:all: --python-version "$image_python" --implementation cp
            --abi "cp${image_python/./}")
for p in "${wheel_platforms[@]}"; do pip_target+=(--platform "$p"); done
pip() { # pip, its output shown only when it fails
  "$python" -m pip "$@" > "$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; say "pip $1 failed"; exit 1; }
}
pip install -q --dry-run --ignore-installed "${pip_target[@]}" --target "$work/none" \
  --report "$work/report.json" "$src"
"$python" - "$work/report.json" > "$work/requirements.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"]
              if i["metadata"]["name"].lower() != "satellite")
print("\n".join(pins))
PY
site=opt/satellite/venv/lib/python$image_python/site-packages
deps_key=$( { echo "$arch $image_python ${wheel_platforms[*]}"; cat "$work/requirements.txt"; } | key)
deps=$cache/deps-$deps_key
if [ ! -s "$deps.tar.gz" ]; then
  say "layer 2: $(wc -l < "$work/requirements.txt") wheels"
  mkdir -p "$work/deps/$site"
  pip install -q --no-deps --no-compile "${pip_target[@]}" \
    --target "$work/deps/$site" -r "$work/requirements.txt"
  rm -rf "$work/deps/$site/bin"
  find "$work/deps/$site" -name direct_url.json -delete
  "$python" -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$work/deps" -p / "$work/deps/$site" >/dev/null
  cp "$work/requirements.txt" "$work/deps/opt/satellite/requirements.txt"
  # the fixed clock, as for layer 1: the layer's bytes depend on the pins alone
  SOURCE_DATE_EPOCH=$base_epoch "$python" "$layout_py" tar "$work/deps" "$work/deps.tar"
  "$python" "$layout_py" gzip "$work/deps.tar" "$work/deps.tar.gz"
  mv "$work/deps.tar.gz" "$deps.tar.gz"
else
  say "layer 2: cached ($deps.tar.gz)"
fi

# ---- layer 3: the project, its venv, the user
say "layer 3: the project"
version=$("$python" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$src/pyproject.toml")
revision=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
app=$work/app
mkdir -p "$app/$site" "$app/opt/satellite/venv/bin" "$app/var/lib/satellite" "$app/etc"
for pkg in registry_proxy appliance groundcontrol; do
  (cd "$src" && find "$pkg" -name '*.py' -o -name '*.html' -o -name '*.css' -o -name '*.js' -o -name '*.json' -o -name py.typed) |
    while read -r f; do install -D -m 0644 "$src/$f" "$app/$site/$f"; done
done
dist=$app/$site/satellite-$version.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: satellite\nVersion: %s\n' "$version" > "$dist/METADATA"
printf '[console_scripts]\nsatellite = appliance.cli:main\ngroundcontrol = groundcontrol.cli:main\n' > "$dist/entry_points.txt"
"$python" -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$app" -p / "$app/$site" >/dev/null
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$image_python" > "$app/opt/satellite/venv/pyvenv.cfg"
ln -s /usr/bin/python3 "$app/opt/satellite/venv/bin/python"
ln -s python "$app/opt/satellite/venv/bin/python3"
for cmd in satellite:appliance groundcontrol:groundcontrol; do
  printf '#!/opt/satellite/venv/bin/python\nimport sys\nfrom %s.cli import main\nsys.exit(main())\n' "${cmd#*:}" > "$app/opt/satellite/venv/bin/${cmd%%:*}"
  chmod 0755 "$app/opt/satellite/venv/bin/${cmd%%:*}"
done
cp "$base.passwd" "$app/etc/passwd"; cp "$base.group" "$app/etc/group"
echo 'satellite:x:10001:10001:Satellite:/var/lib/satellite:/usr/sbin/nologin' >> "$app/etc/passwd"
echo 'satellite:x:10001:' >> "$app/etc/group"
chmod 0644 "$app/etc/passwd" "$app/etc/group"
"$python" "$layout_py" tar "$app" "$work/app.tar" var/lib/satellite=10001:10001:0750
"$python" "$layout_py" gzip "$work/app.tar" "$work/app.tar.gz"

created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
cat > "$work/spec.json" <<JSON
{
  "architecture": "$arch",
  "tags": ["latest", "$version"],
  "layers": [
    {"gz": "$base.tar.gz", "comment": "mmdebstrap --variant=essential $suite: $packages"},
    {"gz": "$deps.tar.gz", "comment": "pip install --no-deps -r /opt/satellite/requirements.txt"},
    {"gz": "$work/app.tar.gz", "comment": "satellite $version ($revision), user 10001"}
  ],
  "config": {
    "User": "10001:10001",
    "Entrypoint": ["/opt/satellite/venv/bin/satellite", "run"],
    "Env": [
      "PATH=/opt/satellite/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "PYTHONUNBUFFERED=1",
      "PYTHONDONTWRITEBYTECODE=1",
      "SATELLITE_STORAGE_PATH=/var/lib/satellite",
      "SATELLITE_SERVER_LISTEN=0.0.0.0:8585"
    ],
    "ExposedPorts": {"8585/tcp": {}},
    "Volumes": {"/var/lib/satellite": {}},
    "WorkingDir": "/var/lib/satellite",
    "StopSignal": "SIGTERM",
    "Labels": {
      "org.opencontainers.image.title": "satellite",
      "org.opencontainers.image.description": "Offline-first edge appliance for container images; health check: GET /healthz on port 8585 (ready: /readyz)",
      "org.opencontainers.image.version": "$version",
      "org.opencontainers.image.revision": "$revision",
      "org.opencontainers.image.licenses": "Apache-2.0",
      "org.opencontainers.image.created": "$created",
      "org.opencontainers.image.base.name": "debian:$suite"
    }
  },
  "annotations": {
    "org.opencontainers.image.title": "satellite",
    "org.opencontainers.image.version": "$version",
    "org.opencontainers.image.revision": "$revision",
    "org.opencontainers.image.created": "$created"
  }
}
JSON
digest=$("$python" "$layout_py" write "$out" "$work/spec.json")
size=$(( $(stat -c %s "$base.tar.gz") + $(stat -c %s "$deps.tar.gz") + $(stat -c %s "$work/app.tar.gz") ))
say "wrote $out: $digest, $size bytes of compressed layers"
echo "$digest"
