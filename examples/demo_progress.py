"""What the demo watches while it runs: the daemon's /metrics, Prometheus's alerts, and how to print them.

Metric and label names come from ``trading_shared.telemetry.names`` (their Prometheus spellings), like the dashboards.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from trading_shared.telemetry import names

POOL = names.prometheus_label(names.POOL_NAME)
ERROR = names.prometheus_label(names.ERROR_TYPE)
STATE = names.prometheus_label(names.BREAKER_STATE_ATTR)
CONN_STATE = names.prometheus_label(names.CONNECTION_STATE)


def _series(name: str, suffix: str) -> str:
    series = name.replace(".", "_") + suffix
    assert series in names.PROMETHEUS_SERIES, series
    return series


CALLS = _series(names.OPERATION_DURATION, "_seconds_count")
RETRIES = _series(names.RETRIES, "_total")
TRANSITIONS = _series(names.BREAKER_TRANSITIONS, "_total")
REJECTIONS = _series(names.BREAKER_REJECTIONS, "_total")
BREAKER = _series(names.BREAKER_STATE, "")
CONNECTIONS = _series(names.CONNECTION_COUNT, "")
CONNECTIONS_MAX = _series(names.CONNECTION_MAX, "")


@dataclass
class ClientFigures:
    """One client's counters and gauges, as the daemon's /metrics shows them."""

    calls: float = 0.0
    failed: float = 0.0
    retries: float = 0.0
    rejections: float = 0.0
    transitions: dict[str, float] = field(default_factory=dict)
    state: str = "?"
    used: float = 0.0
    max: float = 0.0


def scrape(url: str, timeout: float = 2.0) -> dict[str, ClientFigures]:
    """Client name -> figures, from one scrape of a Prometheus endpoint."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    clients: dict[str, ClientFigures] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pool = sample.labels.get(POOL)
            if pool is None:
                continue
            f = clients.setdefault(pool, ClientFigures())
            value, labels = float(sample.value), sample.labels
            if sample.name == CALLS:
                f.calls += value
                if labels.get(ERROR) and labels.get(ERROR) != names.ERROR_CANCELLED:
                    f.failed += value
            elif sample.name == RETRIES:
                f.retries += value
            elif sample.name == REJECTIONS:
                f.rejections += value
            elif sample.name == TRANSITIONS:
                state = labels.get(STATE, "?")
                f.transitions[state] = f.transitions.get(state, 0.0) + value
            elif sample.name == BREAKER and value == 1:
                f.state = labels.get(STATE, "?")
            elif sample.name == CONNECTIONS and labels.get(CONN_STATE) == names.STATE_USED:
                f.used += value
            elif sample.name == CONNECTIONS_MAX:
                f.max += value
    return clients


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the demo needs (works for a private or the user's Prometheus)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query result vector."""
        return list(self._get("/api/v1/query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        """Range query result matrix."""
        return list(self._get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=step)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def alert_rules(self) -> list[str]:
        """Names of the alerting rules loaded."""
        groups = self._get("/api/v1/rules", type="alert")["groups"]
        return [rule["name"] for group in groups for rule in group["rules"]]


class AlertLog:
    """Each alert's state changes (pending, firing, resolved) as seen by polling Prometheus."""

    def __init__(self) -> None:
        self.history: dict[tuple[str, str], list[tuple[float, str]]] = {}
        self.current: dict[tuple[str, str], str] = {}

    def update(self, alerts: list[dict[str, Any]], at: float) -> None:
        """Record the alerts active at ``at`` (seconds since the demo started)."""
        seen = {(a["labels"].get("alertname", "?"), a["labels"].get(POOL, "")): a["state"] for a in alerts}
        for key, state in seen.items():
            if self.current.get(key) != state:
                self.history.setdefault(key, []).append((at, state))
        for key in self.current.keys() - seen.keys():
            self.history[key].append((at, "resolved"))
        self.current = seen

    def short(self) -> str:
        """The active alerts in a few words."""
        if not self.current:
            return "none"
        return ", ".join(
            f"{name.removeprefix('TradingShared')}({pool}) {state}"
            for (name, pool), state in sorted(self.current.items())
        )

    def lines(self) -> list[str]:
        """One line per alert that was ever active: its state changes with times."""
        out = []
        for (name, pool), changes in sorted(self.history.items()):
            steps = " -> ".join(f"{state} at {at:.0f}s" for at, state in changes)
            out.append(f"{name} {{client={pool}}}: {steps}")
        return out


def rate(now: float, before: float, seconds: float) -> float:
    """Per-second increase of a counter (0 after a reset)."""
    return max(0.0, now - before) / seconds if seconds > 0 else 0.0


__all__ = ["AlertLog", "ClientFigures", "PrometheusAPI", "rate", "scrape"]
