#!/usr/bin/env bash
# The demo (the README's main command): set up, then run the SDK under load while Redis goes away and comes back.
# Starts private PostgreSQL, Redis, Prometheus and Alertmanager on free loopback ports (removed at the end), prints a
# progress line every second, a summary (with the notifications a person would have received), and the path of
# demo-output/dashboard.png. About 90 s; `--quick` takes about 30 s.
# Your own servers instead: DEMO_POSTGRES_DSN, DEMO_REDIS_URL, DEMO_PROMETHEUS_URL (+ DEMO_METRICS_PORT it scrapes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
