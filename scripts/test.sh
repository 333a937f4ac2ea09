#!/usr/bin/env bash
# The test command: set up, then lint, type-check, check generated dashboards, and run the whole test suite.
# Tests start their own PostgreSQL, Redis, Prometheus and PgBouncer on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check --no-cache .
echo "== mypy --strict sdk"; .venv/bin/mypy sdk
echo "== pytest"; .venv/bin/pytest "$@"
