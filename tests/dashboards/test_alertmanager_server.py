"""The shipped routing and inhibition in a real Alertmanager, alerts posted to its API as Prometheus posts them.

Fast and deterministic (no Prometheus, no SDK): the end-to-end test with both is ``test_alertmanager_e2e.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alertmanager_server import AlertmanagerServer, Notification, WebhookReceiver, routing_for_tests

import dashboards.alertmanager as alertmanager
import dashboards.rules as rules
from dashboards.metrics import L

PAGE, TICKET = "/trading-shared-page", "/trading-shared-ticket"
A = {L.JOB: "orders", L.INSTANCE: "10.0.0.1:9464", L.POOL: "orders-pg"}
#: The same client name in another process of the same job.
B = {**A, L.INSTANCE: "10.0.0.2:9464"}
SEVERITY = {r.alert: r.severity for r in rules.rules()}


def _alert(alertname: str, where: dict[str, str]) -> dict[str, Any]:
    return {
        "labels": {"alertname": alertname, "severity": SEVERITY[alertname], **where},
        "annotations": {"summary": alertname},
        "startsAt": datetime.now(UTC).isoformat(),
    }


def _of(hooks: WebhookReceiver, where: dict[str, str], path: str) -> list[Notification]:
    return [n for n in hooks.received() if n.path == path and n.group.get(L.INSTANCE) == where[L.INSTANCE]]


@pytest.fixture
def hooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def am(hooks: WebhookReceiver) -> Iterator[AlertmanagerServer]:
    routing = routing_for_tests(hooks, group_wait={"critical": "500ms", "warning": "500ms"})
    with AlertmanagerServer(alertmanager.alertmanager_config(rules.rules(), routing)) as server:
        yield server


def test_breaker_open_inhibits_the_symptoms_of_its_client_only(am: AlertmanagerServer, hooks: WebhookReceiver) -> None:
    symptoms = list(alertmanager.INHIBITED_BY_BREAKER_OPEN)
    am.post_alerts(
        [
            _alert(rules.BREAKER_OPEN, A),
            *(_alert(s, A) for s in symptoms),
            _alert(rules.MESSAGES_DEAD_LETTERED, A),
            *(_alert(s, B) for s in symptoms),
        ]
    )
    for symptom in symptoms:
        hooks.wait_for(lambda n, s=symptom: n.group == {"alertname": s, **B}, timeout=10)
    hooks.wait_for(lambda n: n.path == TICKET and n.group.get(L.INSTANCE) == A[L.INSTANCE], timeout=10)
    hooks.wait_for(lambda n: n.path == PAGE and n.group.get(L.INSTANCE) == A[L.INSTANCE], timeout=10)
    time.sleep(1.0)  # a second flush (group_interval 1s) would show anything that was only late

    # Client A: one page, the breaker alone; one ticket, the dead-lettered alert, which nothing inhibits.
    assert [n.alerts() for n in _of(hooks, A, PAGE)] == [[(rules.BREAKER_OPEN, "firing")]]
    assert [n.alerts() for n in _of(hooks, A, TICKET)] == [[(rules.MESSAGES_DEAD_LETTERED, "firing")]]
    assert _of(hooks, A, PAGE)[0].group == {"alertname": rules.BREAKER_OPEN, **A}, "alert + job + instance + client"
    # The same client in another process has no open breaker: its symptoms are not inhibited, one notification each.
    critical = sorted([(s, "firing")] for s in symptoms if SEVERITY[s] == "critical")
    warning = sorted([(s, "firing")] for s in symptoms if SEVERITY[s] == "warning")
    assert sorted(n.alerts() for n in _of(hooks, B, PAGE)) == critical
    assert sorted(n.alerts() for n in _of(hooks, B, TICKET)) == warning

    held = {a["labels"]["alertname"]: a["status"] for a in am.alerts() if a["labels"][L.INSTANCE] == A[L.INSTANCE]}
    breaker = next(a["fingerprint"] for a in am.alerts() if a["labels"]["alertname"] == rules.BREAKER_OPEN)
    for symptom in symptoms:
        assert held[symptom]["state"] == "suppressed"
        assert held[symptom]["inhibitedBy"] == [breaker]
    assert held[rules.BREAKER_OPEN]["state"] == "active"


def test_resolved_breaker_is_notified_once(am: AlertmanagerServer, hooks: WebhookReceiver) -> None:
    am.post_alerts([_alert(rules.BREAKER_OPEN, A)])
    hooks.wait_for(lambda n: n.path == PAGE and n.status == "firing", timeout=10)
    resolved = {**_alert(rules.BREAKER_OPEN, A), "endsAt": datetime.now(UTC).isoformat()}
    am.post_alerts([resolved])
    hooks.wait_for(lambda n: n.path == PAGE and n.status == "resolved", timeout=10)
    time.sleep(1.0)
    assert [(n.status, n.alerts()) for n in _of(hooks, A, PAGE)] == [
        ("firing", [(rules.BREAKER_OPEN, "firing")]),
        ("resolved", [(rules.BREAKER_OPEN, "resolved")]),
    ]
    assert _of(hooks, A, TICKET) == []


def test_a_symptom_resolved_under_inhibition_is_never_notified(am: AlertmanagerServer, hooks: WebhookReceiver) -> None:
    # Prometheus re-sends a resolved alert at every resend interval for 15 minutes. A symptom that resolved while
    # inhibited, re-sent after the breaker-open alert resolved too, must not appear in any notification.
    am.post_alerts([_alert(rules.BREAKER_OPEN, A), _alert(rules.HIGH_ERROR_RATIO, A)])
    hooks.wait_for(lambda n: n.path == PAGE and n.status == "firing", timeout=10)
    symptom_resolved = {**_alert(rules.HIGH_ERROR_RATIO, A), "endsAt": datetime.now(UTC).isoformat()}
    am.post_alerts([symptom_resolved])
    time.sleep(1.5)  # a flush (group_interval 1s) while the breaker-open alert still fires
    am.post_alerts([{**_alert(rules.BREAKER_OPEN, A), "endsAt": datetime.now(UTC).isoformat()}, symptom_resolved])
    hooks.wait_for(lambda n: n.path == PAGE and n.status == "resolved", timeout=10)
    time.sleep(1.5)
    assert [(n.status, n.alerts()) for n in _of(hooks, A, PAGE)] == [
        ("firing", [(rules.BREAKER_OPEN, "firing")]),
        ("resolved", [(rules.BREAKER_OPEN, "resolved")]),
    ]


def test_a_redis_breaker_open_does_not_silence_the_stream_alerts_of_its_process(
    am: AlertmanagerServer, hooks: WebhookReceiver
) -> None:
    # The observing process's Redis client has an open breaker; the groups it observes page anyway: a backlog
    # outlives the outage and needs its own resolved notification. Their alerts carry the group, not the client;
    # given the breaker's client label too, they would still not be inhibited (no inhibit rule targets them).
    redis = {**A, L.POOL: "quotes-redis"}
    group = {**redis, L.STREAM: "md:fills", L.GROUP: "booking"}
    stream_alerts = [rules.STREAM_PENDING_STUCK, rules.STREAM_LAG_GROWING]
    am.post_alerts([_alert(rules.BREAKER_OPEN, redis), *(_alert(a, group) for a in stream_alerts)])
    for alert in [rules.BREAKER_OPEN, *stream_alerts]:
        hooks.wait_for(lambda n, a=alert: n.path == PAGE and n.group.get("alertname") == a, timeout=10)
    time.sleep(1.0)

    assert sorted(n.alerts() for n in _of(hooks, A, PAGE)) == sorted(
        [[(a, "firing")] for a in [rules.BREAKER_OPEN, *stream_alerts]]
    )
    held = {a["labels"]["alertname"]: a["status"] for a in am.alerts()}
    assert all(held[a] == {**held[a], "state": "active", "inhibitedBy": []} for a in stream_alerts), held
