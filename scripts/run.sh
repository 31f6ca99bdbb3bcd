#!/usr/bin/env bash
# Sets up Satellite and runs it in the foreground with its embedded defaults
# (listens on 0.0.0.0:8585, data under /var/lib/satellite or --data-dir). Extra args go to `satellite run`.
set -euo pipefail
cd "$(dirname "$0")/.."
SATELLITE_BOOTSTRAP=run bash scripts/bootstrap.sh
exec .venv/bin/satellite run "$@"
