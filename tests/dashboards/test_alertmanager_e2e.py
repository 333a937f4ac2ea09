"""End to end: the real SDK, a real Prometheus with the rules, a real Alertmanager with the shipped routing, a webhook.

``sdk_workload.py`` (as in ``test_sdk_e2e.py``) drives a PostgresClient and a RedisClient; a private Prometheus
scrapes it every second, evaluates the rules every second and sends its alerts to a private Alertmanager configured
with the generated routing and inhibition (test-time timings, every receiver a webhook into this test).

* A real Redis outage (the server stopped, then started again): the page receiver gets exactly one firing
  notification for the Redis client, the breaker-open alert alone, and one resolved notification after recovery.
  The symptoms of the outage fire in Prometheus (the test waits for the error-ratio alert) but no receiver ever
  hears of them: Alertmanager holds them as suppressed, inhibited by the breaker-open alert.
* A slow but working Redis (latency added by a fault proxy, the breaker stays closed): the latency alert reaches the
  ticket receiver.

Timings are test-time overrides (``alertmanager_server.E2E_RULES`` and ``E2E_GROUP_WAIT``; the shipped defaults are in
dashboards/config.py) that keep the relations the shipped ones have, checked for both in test_alertmanager_config.py:
the breaker-open window outlasts the symptoms' windows after recovery, and a symptom's ``for`` plus its group wait
exceeds the breaker-open ``for`` plus two evaluation intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alertmanager_server import (
    E2E_GROUP_WAIT,
    E2E_RULES,
    AlertmanagerServer,
    Notification,
    WebhookReceiver,
    routing_for_tests,
)
from prometheus_server import PrometheusServer
from test_sdk_e2e import JOB, REDIS_CLIENT, Workload

import dashboards.alertmanager as alertmanager
import dashboards.render as render
import dashboards.rules as rules
from dashboards.metrics import BREAKER_STATE, L
from support.proxy import FaultProxy
from support.servers import PostgresServer, RedisServer

RULES, GROUP_WAIT = E2E_RULES, E2E_GROUP_WAIT
PAGE, TICKET = "/trading-shared-page", "/trading-shared-ticket"
SYMPTOMS = set(alertmanager.INHIBITED_BY_BREAKER_OPEN)
#: Seconds of scraped history before a fault.
WARM_UP = 4


@dataclasses.dataclass
class Stack:
    """The running servers of one test."""

    workload: Workload
    prom: PrometheusServer
    am: AlertmanagerServer
    hooks: WebhookReceiver
    t0: float

    def redis_notifications(self, path: str | None = None) -> list[Notification]:
        """Notifications about the Redis client's groups (at ``path`` if given)."""
        return self.hooks.received(lambda n: n.group.get(L.POOL) == REDIS_CLIENT and (path is None or n.path == path))

    def redis_alerts(self, state: str = "firing") -> set[str]:
        """Names of the Redis client's alerts in ``state`` in Prometheus now."""
        return {
            a["labels"]["alertname"]
            for a in self.prom.alerts()
            if a["labels"].get(L.POOL) == REDIS_CLIENT and a["state"] == state
        }

    def describe(self) -> str:
        """What the receivers got, one notification a line, for failure messages and the log."""
        return "\n".join(
            f"  t={n.at - self.t0:5.1f}s {n.path} {n.group.get(L.POOL)} {n.status}: {n.alerts()}"
            for n in self.hooks.received()
        )


@contextlib.contextmanager
def _stack(pg_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    rule_file = tmp_path / "trading-shared.rules.yml"
    rule_file.write_text(render.rules_yaml(RULES))
    with contextlib.ExitStack() as stack:
        hooks = stack.enter_context(WebhookReceiver())
        routing = routing_for_tests(hooks, group_wait=GROUP_WAIT)
        am = stack.enter_context(AlertmanagerServer(alertmanager.alertmanager_config(rules.rules(RULES), routing)))
        workload = stack.enter_context(Workload(pg_dsn, redis_url, tmp_path / "workload.log"))
        prom = stack.enter_context(
            PrometheusServer([workload.address], job=JOB, rule_files=[rule_file], alertmanagers=[am.address])
        )
        t0 = time.time()
        workload.wait_ready(timeout=20)
        prom.wait_for(
            lambda: prom.query(f'{BREAKER_STATE}{{{L.POOL}="{REDIS_CLIENT}"}} offset {WARM_UP}s'),
            timeout=25,
            message=f"no {WARM_UP}s of history of {REDIS_CLIENT}",
        )
        yield Stack(workload, prom, am, hooks, t0)


def _until(check: Callable[[], Any], timeout: float, message: str, stack: Stack) -> Any:
    try:
        return PrometheusServer.wait_for(check, timeout=timeout, interval=0.2, message=message)
    except TimeoutError as exc:
        alerts = sorted((a["labels"]["alertname"], a["labels"].get(L.POOL), a["state"]) for a in stack.prom.alerts())
        raise AssertionError(f"{exc}\nPrometheus alerts: {alerts}\nnotifications:\n{stack.describe()}") from None


def test_redis_outage_pages_once_for_the_breaker_and_never_for_its_symptoms(
    pg_server: PostgresServer, pg_dsn: str, redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with _stack(pg_dsn, redis_url, tmp_path) as s:
        assert s.redis_alerts() & ({rules.BREAKER_OPEN} | SYMPTOMS) == set(), "alerts before the outage"

        # --- outage: until the breaker-open page went out and a symptom fires in Prometheus -------------------------
        down = time.time() - s.t0
        redis_server.stop()
        try:
            _until(
                lambda: rules.HIGH_ERROR_RATIO in s.redis_alerts() and s.redis_notifications(PAGE),
                timeout=25,
                message="no page, or no error-ratio alert firing in Prometheus",
                stack=s,
            )
            firing_in_prometheus = s.redis_alerts()
            held = {a["labels"]["alertname"]: a for a in s.am.alerts() if a["labels"].get(L.POOL) == REDIS_CLIENT}
        finally:
            redis_server.ensure_running()
        up = time.time() - s.t0

        # --- recovery: until the resolved page; when did the symptoms and the breaker alert last fire? -------------
        last_firing: dict[str, float] = {}

        def resolved_page() -> list[Notification]:
            for name in s.redis_alerts():
                last_firing[name] = time.time() - s.t0
            return [n for n in s.redis_notifications(PAGE) if n.status == "resolved"]

        _until(resolved_page, timeout=35, message="no resolved page", stack=s)
        time.sleep(2.5)  # two more group intervals: anything late would show

        pages = [(n.status, n.alerts()) for n in s.redis_notifications(PAGE)]
        assert pages == [
            ("firing", [(rules.BREAKER_OPEN, "firing")]),
            ("resolved", [(rules.BREAKER_OPEN, "resolved")]),
        ], s.describe()
        mentioned = {name for n in s.redis_notifications() for name, _ in n.alerts()}
        assert mentioned & SYMPTOMS == set(), s.describe()

        # The symptoms did fire, and Alertmanager held them back because of the breaker-open alert.
        assert rules.BREAKER_OPEN in firing_in_prometheus
        assert rules.HIGH_ERROR_RATIO in firing_in_prometheus
        breaker = held[rules.BREAKER_OPEN]["fingerprint"]
        inhibited = {name for name, a in held.items() if a["status"]["inhibitedBy"] == [breaker]}
        assert rules.HIGH_ERROR_RATIO in inhibited
        assert inhibited == {name for name in held if name in SYMPTOMS}
        # The breaker-open alert outlived every symptom: none was ever left firing without it.
        assert all(last_firing[n] < last_firing[rules.BREAKER_OPEN] for n in SYMPTOMS & last_firing.keys())
        last = ", ".join(f"{n.removeprefix('TradingShared')} t={t:.1f}s" for n, t in sorted(last_firing.items()))
        print(
            f"\nAlertmanager e2e (outage) in {time.monotonic() - started:.1f}s: Redis down at t={down:.1f}s, up at "
            f"t={up:.1f}s; firing in Prometheus during the outage: {sorted(firing_in_prometheus)}; "
            f"inhibited in Alertmanager: {sorted(inhibited)}; last seen firing after recovery: {last}"
            f"\nnotifications:\n{s.describe()}"
        )


class _ThreadedProxy:
    """A :class:`FaultProxy` in front of Redis, on its own event loop in a thread (the test itself is synchronous)."""

    def __init__(self, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy: FaultProxy = self._run(FaultProxy.start("127.0.0.1", port))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def latency(self, seconds: float) -> None:
        """Delay every chunk both ways by ``seconds`` from now on."""

        async def apply() -> None:
            self.proxy.latency(seconds)

        self._run(apply())

    def close(self) -> None:
        """Close the proxy, stop the loop and its thread."""
        with contextlib.suppress(Exception):
            self._run(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def test_slow_redis_reaches_the_ticket_receiver_with_the_latency_alert(
    pg_server: PostgresServer, pg_dsn: str, redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    proxy = _ThreadedProxy(redis_server.port)
    try:
        with _stack(pg_dsn, f"redis://127.0.0.1:{proxy.proxy.port}/0", tmp_path) as s:
            slow_at = time.time() - s.t0
            # Each call waits 2 x 40 ms (request and reply): well over the 50 ms p99 threshold, far below the
            # 0.5 s socket timeout: no call fails, the breaker stays closed.
            proxy.latency(0.04)
            latency_tickets = _until(
                lambda: [n for n in s.redis_notifications(TICKET) if n.group.get("alertname") == rules.HIGH_LATENCY],
                timeout=30,
                message="no latency notification",
                stack=s,
            )
            (ticket,) = latency_tickets
            assert ticket.alerts() == [(rules.HIGH_LATENCY, "firing")]
            assert ticket.status == "firing"
            where = {L.JOB: JOB, L.INSTANCE: s.workload.address, L.POOL: REDIS_CLIENT}
            assert ticket.group == {"alertname": rules.HIGH_LATENCY, **where}
            assert s.redis_notifications(PAGE) == [], s.describe()
            assert rules.BREAKER_OPEN not in s.redis_alerts() | s.redis_alerts("pending")
            closed = s.prom.query(f'{BREAKER_STATE}{{{L.POOL}="{REDIS_CLIENT}", {L.BREAKER_STATE}="closed"}}')
            assert [float(r["value"][1]) for r in closed] == [1.0]
            print(
                f"\nAlertmanager e2e (latency) in {time.monotonic() - started:.1f}s: latency added at "
                f"t={slow_at:.1f}s\nnotifications:\n{s.describe()}"
            )
    finally:
        proxy.close()
