"""Grafana dashboards, Prometheus alert rules and Grafana-managed alerts for trading-shared, as code.

Everything here is generated from :mod:`dashboards.config` (knobs) and ``trading_shared.telemetry.names`` (the metric
contract) by ``python dashboards/generate.py``; the generated files are committed and CI checks they are current.
"""
