#!/usr/bin/env bash
# The gate: set up everything, then format check, lint, type check, and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# one pytest worker per core (pytest-xdist); tests that must not overlap share an
# xdist_group, which --dist loadgroup keeps on one worker
exec .venv/bin/python -m pytest -p no:cacheprovider -n auto --dist loadgroup "$@"
