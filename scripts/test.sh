#!/usr/bin/env bash
# The test command: set up, then lint, type-check, check generated dashboards, and run the whole test suite
# (newest dependency versions in .venv; then unit, operations, telemetry and reliability tests on the lowest).
# Tests start their own PostgreSQL, Redis, Prometheus and PgBouncer on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check --no-cache .
echo "== mypy --strict sdk"; .venv/bin/mypy sdk
echo "== pytest"; .venv/bin/pytest "$@"
# The whole run (no arguments): a second pass on the lowest version of every dependency range (~2 min).
if [ $# -eq 0 ]; then echo "== pytest, lowest dependency versions"; bash scripts/test_lowest.sh; fi
