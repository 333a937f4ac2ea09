"""End to end against a real Prometheus: the rules (fast-test profile) fire and resolve, the panel queries return data.

A stub exporter stands in for a service using the SDK; the same helpers serve the real end-to-end test with the SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_server import PrometheusServer, panel_queries
from stub_exporter import StubExporter

import dashboards.config as config
import dashboards.render as render
import dashboards.rules as rules
from dashboards.metrics import BREAKER_STATE, OPERATION_DURATION, L, names

JOB = "stub-service"
#: Clients of the stub: one per test, so the tests do not depend on each other's breaker history.
LONG_OPEN, SHORT_OPEN = "orders-pg", "quotes"
PANEL_CLIENTS = {"main-pg": names.SYSTEM_POSTGRESQL, "cache": names.SYSTEM_REDIS}
#: A PostgreSQL client with three times as many distinct statements as the statement panels show.
MANY_STATEMENTS = "ledger-pg"
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def stub() -> Iterator[StubExporter]:
    exporter = StubExporter(
        [
            (names.SYSTEM_POSTGRESQL, LONG_OPEN),
            (names.SYSTEM_REDIS, SHORT_OPEN),
            (names.SYSTEM_POSTGRESQL, MANY_STATEMENTS),
            *((s, p) for p, s in PANEL_CLIENTS.items()),
        ]
    )
    for pool in PANEL_CLIENTS:
        exporter.traffic(pool, "GET")
    exporter.stream("md:fills", "booking")
    exporter.statements(MANY_STATEMENTS, 3 * config.STATEMENT_TOPK)
    yield exporter
    exporter.stop()


@pytest.fixture(scope="module")
def prom(stub: StubExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    rule_file = tmp_path_factory.mktemp("rules") / "trading-shared.rules.yml"
    rule_file.write_text(render.rules_yaml(config.FAST_TEST))
    with PrometheusServer([stub.address], job=JOB, rule_files=[rule_file]) as server:
        server.wait_for(server.targets_up, timeout=TIMEOUT, message="stub not scraped")
        yield server


def _breaker_alerts(prom: PrometheusServer, pool: str) -> list[dict[str, object]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == rules.BREAKER_OPEN and a["labels"][L.POOL] == pool]


def _seen_for(prom: PrometheusServer, pool: str, seconds: int) -> bool:
    """Prometheus has had the client's breaker gauge for at least ``seconds``."""
    return bool(prom.query(f'{BREAKER_STATE}{{{L.POOL}="{pool}"}} offset {seconds}s'))


def test_breaker_open_alert_fires_then_resolves(stub: StubExporter, prom: PrometheusServer) -> None:
    prom.wait_for(lambda: prom.query(f'{BREAKER_STATE}{{{L.POOL}="{LONG_OPEN}"}}'), timeout=TIMEOUT)
    assert _breaker_alerts(prom, LONG_OPEN) == []

    opened = time.monotonic()
    stub.set_breaker(LONG_OPEN, names.BREAKER_OPEN)
    alert = prom.wait_for(
        lambda: [a for a in _breaker_alerts(prom, LONG_OPEN) if a["state"] == "firing"],
        timeout=TIMEOUT,
        message="breaker-open alert not firing",
    )[0]
    assert time.monotonic() - opened < 15, "the brief: firing within ~10-20 s at a 1 s evaluation interval"
    assert alert["labels"][L.JOB] == JOB and alert["labels"]["severity"] == config.FAST_TEST.breaker_open_severity
    assert alert["annotations"]["runbook_url"].endswith("#" + rules.runbook_anchor(rules.BREAKER_OPEN))

    stub.set_breaker(LONG_OPEN, names.BREAKER_HALF_OPEN)
    stub.set_breaker(LONG_OPEN, names.BREAKER_CLOSED)
    prom.wait_for(lambda: not _breaker_alerts(prom, LONG_OPEN), timeout=TIMEOUT, message="alert did not resolve")

    now = time.time()
    history = prom.query_range(
        f'{BREAKER_STATE}{{{L.POOL}="{LONG_OPEN}", {L.BREAKER_STATE}="{names.BREAKER_OPEN}"}}', now - 60, now
    )
    assert {v for _, v in history[0]["values"]} == {"0", "1"}


def test_open_shorter_than_a_scrape_fires_then_resolves(stub: StubExporter, prom: PrometheusServer) -> None:
    # The client's gauge must have been scraped before the open is counted (first transitions series of the process).
    prom.wait_for(lambda: _seen_for(prom, SHORT_OPEN, 1), timeout=TIMEOUT)

    stub.flash_open(SHORT_OPEN)  # the gauge never leaves closed

    prom.wait_for(
        lambda: [a for a in _breaker_alerts(prom, SHORT_OPEN) if a["state"] == "firing"],
        timeout=TIMEOUT,
        message="short open not caught",
    )
    prom.wait_for(lambda: not _breaker_alerts(prom, SHORT_OPEN), timeout=TIMEOUT, message="alert did not resolve")


@pytest.mark.parametrize("path", sorted(render.GENERATED_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_panel_query_returns_data(stub: StubExporter, prom: PrometheusServer, path: Path) -> None:
    variables = {
        config.JOB_VARIABLE: JOB,
        config.CLIENT_VARIABLE: list(PANEL_CLIENTS),
        config.SYSTEM_VARIABLE: [names.SYSTEM_POSTGRESQL, names.SYSTEM_REDIS],
        "__rate_interval": "4s",
    }
    queries = panel_queries(json.loads(path.read_text()), variables)
    assert queries
    for pool in PANEL_CLIENTS:  # enough samples in every rate window
        prom.wait_for(lambda pool=pool: _seen_for(prom, pool, 4), timeout=TIMEOUT)
    empty = [(title, expr) for title, expr in queries if not prom.query(expr)]
    assert empty == []


def test_statement_panels_show_the_top_statements_only(stub: StubExporter, prom: PrometheusServer) -> None:
    overview = json.loads((render.GENERATED_DIR / f"{config.OVERVIEW_UID}.json").read_text())
    variables = {config.JOB_VARIABLE: JOB, config.CLIENT_VARIABLE: [MANY_STATEMENTS], "__rate_interval": "4s"}
    queries = [(t, e) for t, e in panel_queries(overview, variables) if "statement" in t.lower()]
    summaries = f'count(count by ({L.QUERY_SUMMARY}) ({OPERATION_DURATION.count}{{{L.POOL}="{MANY_STATEMENTS}"}}))'
    stored = prom.wait_for(lambda: prom.query(summaries), timeout=TIMEOUT)
    assert float(stored[0]["value"][1]) == 3 * config.STATEMENT_TOPK
    by_statement = [(t, e) for t, e in queries if L.QUERY_SUMMARY in e and "topk" in e]
    assert len(by_statement) == 3
    for title, expr in by_statement:
        assert len(prom.query(expr)) == config.STATEMENT_TOPK, title
