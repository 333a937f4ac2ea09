"""End to end with the REAL SDK: a stream consumer stalls, both stream alerts fire, and resolve when it resumes.

``sdk_workload.py --orders-stream`` (as in ``test_sdk_e2e.py``) appends to ``e2e:orders`` 20 times a second and
consumes it in group ``booking``, which its RedisClient observes (lag, pending, oldest pending age). A private
Prometheus scrapes it every second and evaluates the rules rendered with ``config.FAST_TEST`` (same expressions,
second-long windows and ``for``). Scenario: warm up; SIGUSR1 stalls the consumer (it takes one more batch, holds it
unacknowledged and reads nothing more, while the producer keeps writing); wait until both stream alerts of the group
have gone pending, then firing; SIGUSR2 resumes it (it acknowledges what it held and catches up); wait until both
resolve. Then:

* each alert went inactive -> pending -> firing -> inactive for group ``booking`` only, pending after the stall,
  firing no sooner than its ``for`` later, resolved after the resume;
* every query of the statement and stream rows of the overview returned data during the run, and the stall shows
  on them: lag and pending above zero, the oldest pending entry older than the alert threshold, the group's consumed
  rate at zero while the producer's stayed up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_server import PrometheusServer, panel_queries
from test_sdk_e2e import JOB, RATE_INTERVAL, WORKLOAD_OPTIONS, Workload, _unix

import dashboards.config as config
import dashboards.render as render
import dashboards.rules as rules
import dashboards.statements as statements
import dashboards.streams as streams
from dashboards.metrics import MESSAGES_CONSUMED, MESSAGES_SENT, STREAM_GROUP_LAG, L
from support.servers import PostgresServer, RedisServer

STREAM, GROUP = "e2e:orders", "booking"
ALERTS = (rules.STREAM_PENDING_STUCK, rules.STREAM_LAG_GROWING)
CFG = config.FAST_TEST
#: Seconds of scraped history of the group before the stall.
WARM_UP = 5
#: The whole test fails rather than run longer than this (it takes ~25 s).
BUDGET = 55.0


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration.removesuffix("s"))


class Timeline:
    """State changes of the stream alerts of one group (``inactive``: gone from /api/v1/alerts), polled every 0.1 s."""

    def __init__(self, prom: PrometheusServer, t0: float) -> None:
        self.prom = prom
        self.t0 = t0
        self.events: list[tuple[float, str, str]] = []
        self.active_at: dict[str, float] = {}
        self.others: set[tuple[str, str, str]] = set()
        self._states: dict[str, str] = {}

    def poll(self) -> dict[str, str]:
        """``{alertname: state}`` of the group's stream alerts now; records changes."""
        now = time.time() - self.t0
        states = {}
        for alert in self.prom.alerts():
            labels = alert["labels"]
            if labels["alertname"] not in ALERTS:
                continue
            if (labels.get(L.STREAM), labels.get(L.GROUP)) != (STREAM, GROUP):
                self.others.add((labels["alertname"], labels.get(L.STREAM, ""), labels.get(L.GROUP, "")))
                continue
            states[labels["alertname"]] = alert["state"]
            if alert["state"] == "pending":
                self.active_at[labels["alertname"]] = _unix(alert["activeAt"]) - self.t0
        for name in ALERTS:
            new = states.get(name, "inactive")
            if new != self._states.get(name, "inactive"):
                self.events.append((now, name, new))
        self._states = states
        return states

    def until(self, done: Callable[[dict[str, str]], bool], timeout: float, message: str) -> None:
        """Poll until ``done(states)``; AssertionError with the timeline after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.poll()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} within {timeout:.0f}s; timeline:\n{self.describe()}")
            time.sleep(0.1)

    def of(self, alertname: str) -> list[tuple[float, str]]:
        """``(seconds since t0, new state)`` of one alert."""
        return [(t, s) for t, a, s in self.events if a == alertname]

    def describe(self) -> str:
        """The timeline, one change a line."""
        return "\n".join(f"  t={t:5.1f}s {a} -> {s}" for t, a, s in self.events)


def _finite(result: list[dict[str, Any]]) -> list[float]:
    values = (float(v) for series in result for _, v in series["values"])
    return [v for v in values if math.isfinite(v)]


def _values(prom: PrometheusServer, expr: str, start: float, end: float) -> list[float]:
    return _finite(prom.query_range(expr, start, end, step="1s"))


def test_stalled_consumer_pages_and_resolves_when_it_resumes(
    pg_server: PostgresServer, pg_dsn: str, redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()

    def within(timeout: float) -> float:
        left = started + BUDGET - time.monotonic()
        assert left > 0, f"the test ran over its budget of {BUDGET:g}s"
        return min(timeout, left)

    rule_file = tmp_path / "trading-shared.rules.yml"
    rule_file.write_text(render.rules_yaml(CFG))
    with contextlib.ExitStack() as stack:
        workload = stack.enter_context(Workload(pg_dsn, redis_url, tmp_path / "workload.log", WORKLOAD_OPTIONS))
        prom = stack.enter_context(PrometheusServer([workload.address], job=JOB, rule_files=[rule_file]))
        t0 = time.time()
        workload.wait_ready(timeout=within(20))
        timeline = Timeline(prom, t0)
        group = f'{L.STREAM}="{STREAM}", {L.GROUP}="{GROUP}"'

        # --- warm up: the group's figures scraped for WARM_UP seconds, the consumer keeping up, no stream alert ------
        try:
            prom.wait_for(lambda: prom.query(f"{STREAM_GROUP_LAG}{{{group}}} offset {WARM_UP}s"), timeout=within(25))
        except TimeoutError:
            raise AssertionError(f"no {WARM_UP}s of the group's lag:\n{workload.log_tail()}") from None
        assert timeline.poll() == {}, timeline.describe()

        # --- stall: the consumer holds a batch and reads nothing more; the producer keeps writing --------------------
        stalled = time.time() - t0
        os.kill(workload.process.pid, signal.SIGUSR1)
        timeline.until(
            lambda s: all(s.get(a) == "firing" for a in ALERTS), timeout=within(25), message="stream alerts not firing"
        )

        # Stay stalled until a rate window holds only the stall (+2 s of points), so the quiet-window check below has
        # data even when the alerts fired sooner than that.
        time.sleep(max(0.0, t0 + stalled + _seconds(RATE_INTERVAL) + 3 - time.time()))

        # --- resume: it acknowledges what it held and catches up; both alerts resolve --------------------------------
        resumed = time.time() - t0
        os.kill(workload.process.pid, signal.SIGUSR2)
        timeline.until(lambda s: not s, timeout=within(20), message="stream alerts did not resolve")
        end = time.time()

        # --- each alert: pending after the stall, firing after its `for`, resolved after the resume -----------------
        waits = {rules.STREAM_PENDING_STUCK: CFG.stream_pending_for, rules.STREAM_LAG_GROWING: CFG.stream_lag_for}
        for alert, pending_for in waits.items():
            changes = timeline.of(alert)
            assert [s for _, s in changes] == ["pending", "firing", "inactive"], timeline.describe()
            (pending_at, _), (firing_at, _), (resolved_at, _) = changes
            assert stalled < pending_at < firing_at < resumed < resolved_at, timeline.describe()
            assert stalled < timeline.active_at[alert], f"{alert} was active before the stall"
            assert firing_at >= timeline.active_at[alert] + _seconds(pending_for), f"{alert} fired before its `for`"
        assert all(name in ALERTS for name, _, _ in timeline.others)
        assert not any(g == GROUP for _, _, g in timeline.others), timeline.others

        # --- the statement and stream panels returned data; the stall shows on the stream panels ------------------
        overview = json.loads((render.GENERATED_DIR / f"{config.OVERVIEW_UID}.json").read_text())
        variables = {config.JOB_VARIABLE: JOB, config.CLIENT_VARIABLE: ["orders-pg", "quotes-redis"]}
        queries = panel_queries(overview, {**variables, "__rate_interval": RATE_INTERVAL})
        titles = {p["title"] for p in _row_panels(overview, statements.TITLE) + _row_panels(overview, streams.TITLE)}
        maxima: dict[str, float] = {}
        of_group: dict[str, float] = {}  # the stream panels' lines of e2e:orders / booking
        empty = []
        for title, expr in queries:
            if title in titles:
                result = prom.query_range(expr, t0, end, step="1s")
                values = _finite(result)
                if not values:
                    empty.append(f"{title}: {expr}")
                maxima[title] = max([maxima.get(title, -math.inf), *values])
                mine = _finite([r for r in result if r["metric"].get(L.GROUP) == GROUP])
                of_group[title] = max([of_group.get(title, -math.inf), *mine])
        assert set(maxima) == titles
        assert empty == [], "panel queries without data:\n" + "\n".join(empty)
        assert of_group["Consumer-group lag"] > 0 and of_group["Pending entries"] > 0
        assert of_group["Oldest pending entry age"] > CFG.stream_pending_age_seconds
        assert of_group["Processing age (append to acknowledgement)"] > CFG.stream_pending_age_seconds
        # While stalled (once the rate window holds only the stall): the group received nothing, the producer wrote.
        quiet_from, quiet_to = t0 + stalled + _seconds(RATE_INTERVAL) + 1, t0 + resumed - 1
        consumed = f"sum(rate({MESSAGES_CONSUMED}{{{group}}}[{RATE_INTERVAL}]))"
        produced = f'sum(rate({MESSAGES_SENT}{{{L.STREAM}="{STREAM}", {L.ERROR}=""}}[{RATE_INTERVAL}]))'
        assert _values(prom, consumed, quiet_from, quiet_to) and max(_values(prom, consumed, quiet_from, quiet_to)) == 0
        assert min(_values(prom, produced, quiet_from, quiet_to)) > 0

        assert workload.process.poll() is None, f"the workload died:\n{workload.log_tail()}"
        print(
            f"\nstream alerts end to end in {time.monotonic() - started:.1f}s: consumer stalled at t={stalled:.1f}s, "
            f"resumed at t={resumed:.1f}s, end t={end - t0:.1f}s\nalerts of {STREAM}/{GROUP}:\n{timeline.describe()}"
            f"\nother stream alerts: {sorted(timeline.others)}\nhighest value of each panel over the run:\n"
            + "\n".join(f"  {m:10.4g} (this group {of_group[t]:.4g})  {t}" for t, m in maxima.items())
        )


def _row_panels(dashboard: dict[str, object], title: str) -> list[dict[str, object]]:
    """The panels under the row titled ``title`` (up to the next row)."""
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    out, inside = [], False
    for panel in panels:
        if panel["type"] == "row":
            inside = panel["title"] == title
        elif inside:
            out.append(panel)
    assert out, f"no row {title!r}"
    return out
