"""End to end with the REAL SDK: a process using PostgresClient and RedisClient, scraped by a real Prometheus.

``sdk_workload.py`` runs in a subprocess with OpenTelemetry's Prometheus exporter, against the session's private
PostgreSQL and Redis. A private Prometheus scrapes it every second and evaluates the rules rendered with
``config.FAST_TEST``. Scenario: warm up, stop both servers until both breakers' open alerts have gone pending and
then firing, start the servers again, wait until the alerts resolve. Then:

* every query of every panel of every generated dashboard (variables expanded as Grafana does for ``$client`` /
  ``$system`` = All) returned data (a finite value at some step of the run), except the :data:`KNOWN_SDK_GAPS`,
  which must still be empty; the panels the scenario drives show more than zero;
* the breaker-open alert of each client went inactive -> pending -> firing during the outage and resolved after it;
* the process exposed nothing but the names module's series (plus ``target_info`` and prometheus_client's own
  ``process_*`` / ``python_*``), all of them, with no label outside the names module's labels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import PrometheusServer, free_port, panel_queries

import dashboards.config as config
import dashboards.render as render
import dashboards.rules as rules
from dashboards.metrics import BREAKER_STATE, L, names
from support.servers import PostgresServer, RedisServer

JOB = "sdk-e2e"
#: The workload's clients (pool names). The SDK is imported by the workload process only: a broken SDK shows up as
#: the workload's own error output, not as a collection error here.
PG_CLIENT, REDIS_CLIENT = "orders-pg", "quotes-redis"
CLIENTS = {PG_CLIENT: names.SYSTEM_POSTGRESQL, REDIS_CLIENT: names.SYSTEM_REDIS}
WORKLOAD = Path(__file__).with_name("sdk_workload.py")
RATE_INTERVAL = "4s"
#: Seconds of scraped history before the outage, so that every rate window has samples of normal operation.
WARM_UP = 5
#: The whole test fails rather than run longer than this (it takes ~25 s).
BUDGET = 85.0

#: Panel queries the SDK cannot feed yet, and why. They must still return nothing: once the SDK emits the metric,
#: this test fails until the entry is removed.
#: Panel queries the SDK cannot feed (none since RedisClient times its bulk, pipeline and blocking-read borrows).
KNOWN_SDK_GAPS: dict[tuple[str, str], str] = {}

#: Panels (title prefix, client or system) that the scenario must drive above zero at some point.
MUST_EXCEED_ZERO = [
    *((title, client) for client in CLIENTS for title in (
        "Circuit breaker state",
        "Circuit breaker transitions",
        "Breaker rejections/s",
        "Errors/s by error type",
        "Retries/s by error type",
        "Operations/s",
    )),
    ("Connection acquire timeouts/s", PG_CLIENT),
    ("Pending connection requests", PG_CLIENT),
    ("Dead-lettered messages", REDIS_CLIENT),
    *((title, system) for system in CLIENTS.values() for title in (
        "Breakers not closed by client",
        "Retries/s by client",
        "Operations/s by client",
    )),
]  # fmt: skip
#: Panels of the rows that are not repeated per client (statements, streams) that the scenario must drive above zero.
#: Its consumers acknowledge at once (pending is rarely caught above zero): test_stream_alerts_e2e.py stalls one.
MUST_EXCEED_ZERO_ONCE = [
    f"Slowest statements (p99, top {config.STATEMENT_TOPK})",
    f"Time share by statement (top {config.STATEMENT_TOPK})",
    f"Errors/s by statement (top {config.STATEMENT_TOPK})",
    "Consumer-group lag",
    "Processing age (append to acknowledgement)",
    "Produced vs consumed/s",
]
#: The workload's options for this test: the observed orders stream, and a caller error per second in PostgreSQL.
WORKLOAD_OPTIONS = ("--orders-stream", "--duplicate-every", "1.0")


class Workload:
    """The SDK process: started on a free port, stopped (stdin closed, SIGTERM, then SIGKILL) on exit."""

    def __init__(self, pg_dsn: str, redis_url: str, log: Path, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [
                *(sys.executable, str(WORKLOAD), "--port", str(self.port)),
                *("--pg-dsn", pg_dsn, "--pg-name", PG_CLIENT, "--redis-url", redis_url, "--redis-name", REDIS_CLIENT),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, name="workload-stdout", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def wait_ready(self, timeout: float) -> None:
        """Wait for the process's READY line (clients connected, /metrics served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise AssertionError(f"workload exited ({self.process.returncode}):\n{self.log_tail()}") from None
                continue
            if line.startswith(b"READY"):
                return
        raise AssertionError(f"workload not ready within {timeout}s:\n{self.log_tail()}")

    def metrics_text(self) -> str:
        """The process's /metrics exposition, as Prometheus scrapes it."""
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process logged."""
        self._stderr.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the process; idempotent, bounded (~15 s at worst)."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self._reader.join(timeout=5)  # EOF on stdout once the process is gone
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        self._stderr.close()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class AlertTimeline:
    """Every state change of every alert (``inactive`` = gone from /api/v1/alerts), polled every 0.1 s."""

    prom: PrometheusServer
    t0: float
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    active_at: dict[tuple[str, str], str] = field(default_factory=dict)
    _states: dict[tuple[str, str], str] = field(default_factory=dict)

    def poll(self) -> dict[tuple[str, str], str]:
        """``{(alertname, client): state}`` of the active alerts now; records changes."""
        now = time.time() - self.t0
        states = {}
        for alert in self.prom.alerts():
            key = (alert["labels"]["alertname"], alert["labels"].get(L.POOL, ""))
            states[key] = alert["state"]
            if alert["state"] == "pending":
                self.active_at[key] = alert["activeAt"]
        for key in sorted(self._states.keys() | states.keys()):
            new = states.get(key, "inactive")
            if new != self._states.get(key, "inactive"):
                self.events.append((now, key[0], key[1], new))
        self._states = states
        return states

    def until(self, done: Callable[[dict[tuple[str, str], str]], bool], timeout: float, message: str) -> None:
        """Poll until ``done(states)``; AssertionError with the timeline after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.poll()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} within {timeout}s; timeline:\n{self.describe()}")
            time.sleep(0.1)

    def of(self, alertname: str, client: str) -> list[tuple[float, str]]:
        """``(seconds since t0, new state)`` of one alert."""
        return [(t, s) for t, a, c, s in self.events if a == alertname and c == client]

    def describe(self) -> str:
        """The timeline, one change a line."""
        return "\n".join(f"  t={t:5.1f}s {a} {c} -> {s}" for t, a, c, s in self.events)


def _breaker_open(states: dict[tuple[str, str], str], client: str) -> str | None:
    return states.get((rules.BREAKER_OPEN, client))


def _finite(result: list[dict[str, Any]]) -> list[float]:
    values = (float(v) for series in result for _, v in series["values"])
    return [v for v in values if math.isfinite(v)]


def _unix(rfc3339: str) -> float:
    """Prometheus' timestamps (nanoseconds, ``Z``) as Unix time."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def _series_in(expr: str) -> str:
    return next((s for s in sorted(names.PROMETHEUS_SERIES, key=len, reverse=True) if s in expr), "")


@contextlib.contextmanager
def _servers_restored(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[None]:
    try:
        yield
    finally:
        pg_server.ensure_running()
        redis_server.ensure_running()


def _budget(started: float) -> Callable[[float], float]:
    """``within(timeout)``: ``timeout`` capped by what is left of :data:`BUDGET`; AssertionError once spent."""

    def within(timeout: float = 0.0) -> float:
        left = started + BUDGET - time.monotonic()
        assert left > 0, f"the test ran over its budget of {BUDGET:g}s"
        return min(timeout, left)

    return within


def _not_scraped(prom: PrometheusServer, workload: Workload) -> str:
    """Why Prometheus has no history of the workload: the target's health and the process's state."""
    targets = [(t["health"], t["lastError"]) for t in prom.active_targets()]
    alive = "running" if workload.process.poll() is None else f"exited ({workload.process.returncode})"
    return f"workload {alive}, targets {targets}:\n{workload.log_tail()}"


def test_real_sdk_fills_every_panel_and_fires_then_resolves_the_breaker_alert(
    pg_server: PostgresServer, pg_dsn: str, redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    within = _budget(started)
    rule_file = tmp_path / "trading-shared.rules.yml"
    rule_file.write_text(render.rules_yaml(config.FAST_TEST))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_servers_restored(pg_server, redis_server))
        workload = stack.enter_context(Workload(pg_dsn, redis_url, tmp_path / "workload.log", WORKLOAD_OPTIONS))
        prom = stack.enter_context(PrometheusServer([workload.address], job=JOB, rule_files=[rule_file]))
        t0 = time.time()
        workload.wait_ready(timeout=within(20))
        timeline = AlertTimeline(prom, t0)

        # --- warm up: every client's gauges scraped for WARM_UP seconds, no breaker alert ---------------------------
        try:
            prom.wait_for(
                lambda: all(prom.query(f'{BREAKER_STATE}{{{L.POOL}="{c}"}} offset {WARM_UP}s') for c in CLIENTS),
                timeout=within(25),
            )
        except TimeoutError:
            raise AssertionError(f"no {WARM_UP}s of history of both clients: {_not_scraped(prom, workload)}") from None
        states = timeline.poll()
        assert not any(_breaker_open(states, c) for c in CLIENTS), timeline.describe()

        # --- outage: both servers down until both breaker alerts have been pending, then firing ----------------------
        down = time.time() - t0
        pg_server.stop("immediate")
        redis_server.stop()
        timeline.until(
            lambda s: all(_breaker_open(s, c) == "firing" for c in CLIENTS),
            timeout=within(20),
            message="alerts not firing",
        )

        # --- recovery: servers back; the breakers close, the alerts resolve -----------------------------------------
        up = time.time() - t0
        pg_server.start()
        redis_server.start()
        timeline.until(
            lambda s: not any(_breaker_open(s, c) for c in CLIENTS),
            timeout=within(25),
            message="alerts did not resolve",
        )
        end = time.time()
        closed = prom.query(f'{BREAKER_STATE}{{job="{JOB}", {L.BREAKER_STATE}="{names.BREAKER_CLOSED}"}} == 1')
        assert {r["metric"][L.POOL] for r in closed} == set(CLIENTS), "a breaker is not closed again"

        # --- (b) the breaker-open alert of each client: pending, firing, resolved -----------------------------------
        pending_for = float(config.FAST_TEST.breaker_open_for.removesuffix("s"))
        for client in CLIENTS:
            changes = timeline.of(rules.BREAKER_OPEN, client)
            assert [s for _, s in changes] == ["pending", "firing", "inactive"], timeline.describe()
            (pending_at, _), (firing_at, _), (resolved_at, _) = changes
            assert down < pending_at < firing_at < up < resolved_at, timeline.describe()
            active_at = _unix(timeline.active_at[(rules.BREAKER_OPEN, client)]) - t0
            assert down < active_at and firing_at >= active_at + pending_for, f"{client}: fired before its `for`"

        # --- (a) every panel query returned data; the ones the scenario drives went above zero ---------------------
        variables = {
            config.JOB_VARIABLE: JOB,
            config.CLIENT_VARIABLE: list(CLIENTS),
            config.SYSTEM_VARIABLE: sorted(set(CLIENTS.values())),
            "__rate_interval": RATE_INTERVAL,
        }
        empty, gaps_filled, maxima = [], [], {}
        for path in sorted(render.GENERATED_DIR.glob("*.json")):
            for title, expr in panel_queries(json.loads(path.read_text()), variables):
                within()
                values = _finite(prom.query_range(expr, t0, end, step="1s"))
                gap = KNOWN_SDK_GAPS.get((title, _series_in(expr)))
                if gap is not None:
                    if values:
                        gaps_filled.append(f"{title}: {expr}")
                    continue
                if not values:
                    empty.append(f"{path.name}: {title}: {expr}")
                maxima[title] = max([maxima.get(title, -math.inf), *values])
        assert empty == [], "panel queries without data:\n" + "\n".join(empty)
        assert gaps_filled == [], "the SDK now feeds these; remove them from KNOWN_SDK_GAPS:\n" + "\n".join(gaps_filled)
        flat = [
            f"{prefix} ({who})"
            for prefix, who in MUST_EXCEED_ZERO
            if not any(t.startswith(prefix) and t.endswith(f"={who})") and m > 0 for t, m in maxima.items())
        ]
        flat += [title for title in MUST_EXCEED_ZERO_ONCE if not maxima.get(title, 0) > 0]
        assert flat == [], "panels that never went above zero: " + ", ".join(flat)
        assert maxima[f"Circuit breaker state (client={PG_CLIENT})"] == 2, "the open state was never scraped"

        # --- (c) the process exposes the names module's series, all of them, and nothing else ------------------------
        assert workload.process.poll() is None, f"the workload died:\n{workload.log_tail()}"
        exposed = [s for family in text_string_to_metric_families(workload.metrics_text()) for s in family.samples]
        exposed_names = {s.name for s in exposed}
        foreign = {
            n
            for n in exposed_names - names.PROMETHEUS_SERIES
            if n != "target_info" and not n.startswith(("process_", "python_"))
        }
        assert foreign == set(), f"series the names module does not define: {sorted(foreign)}"
        assert names.PROMETHEUS_SERIES - exposed_names == set(), "series the SDK never exposed"
        labels = {k for s in exposed if s.name in names.PROMETHEUS_SERIES for k, v in s.labels.items() if v}
        assert labels - names.PROMETHEUS_LABELS == set(), "labels the names module does not define"
        stored = {r["metric"]["__name__"] for r in prom.query(f'count by (__name__) ({{job="{JOB}"}})')}
        synthetic = {"up", "ALERTS", "ALERTS_FOR_STATE"} | {n for n in stored if n.startswith("scrape_")}
        assert stored - synthetic - exposed_names == set(), "Prometheus stored series the process did not expose"

        panels = "\n".join(f"  {m:10.4g}  {t}" for t, m in maxima.items())
        scrape = prom.query(f'max_over_time(scrape_duration_seconds{{job="{JOB}"}}[{int(end - t0)}s])')
        panels += f"\nlongest scrape of the workload: {float(scrape[0]['value'][1]) * 1000:.1f} ms"
        print(
            f"\nSDK end to end in {time.monotonic() - started:.1f}s: servers down at t={down:.1f}s, "
            f"back at t={up:.1f}s, end t={end - t0:.1f}s\nalerts:\n{timeline.describe()}\n"
            f"highest value of each panel over the run:\n{panels}\nworkload log:\n{workload.log_tail(3)}"
        )
