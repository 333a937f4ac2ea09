"""The demo: the SDK at work under load while Redis goes away and comes back. Run ``bash scripts/demo.sh``.

1. Starts private PostgreSQL, Redis, Prometheus and Alertmanager on free loopback ports (temporary directories,
   removed at the end), unless ``DEMO_POSTGRES_DSN`` / ``DEMO_REDIS_URL`` / ``DEMO_PROMETHEUS_URL`` name your own.
2. Runs the run-once janitor (examples/janitor.py), then the market-data daemon (examples/market_data_daemon.py)
   under load, with a Prometheus scraping it every second and the repository's alert rules loaded.
3. Stops Redis for a while, then brings it back (your own Redis is never stopped: a TCP proxy in front of it
   resets every connection instead).
4. Prints a progress line every second, then a summary (operations, retries, breaker transitions, alert states,
   the notifications a person would have received: a private Alertmanager with the repository's routing and
   inhibition gets Prometheus's alerts and notifies a webhook in the demo; the slowest statements by their query
   summary; one tick's trace from its ``send`` to the candle upsert, read from the spans the daemon wrote to
   ``demo-output/spans.jsonl``) and draws the dashboard's main panels, the statement and stream panels included,
   from Prometheus's data into ``demo-output/dashboard.png``.

``--quick`` runs a shorter scenario (~30 s) for tests. The exit code is 0 when the daemon shut down cleanly, every
valid tick ended up in exactly one candle, the picture was written and one tick's trace was found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo_dashboard import draw_dashboard
from demo_progress import POOL, AlertLog, ClientFigures, PrometheusAPI, rate, scrape
from demo_servers import ROOT, PrometheusServer, RedisServer, free_port, private_servers
from demo_trace import find_tick_trace, read_spans, render
from pydantic import SecretStr

from trading_shared import PostgresClient, PostgresSettings

HERE = Path(__file__).resolve().parent
JOB = "market-data-demo"
CLIENTS = ("postgres", "redis")
#: Demo settings for the daemon's clients: a breaker that tries again after 2 s, so recovery shows quickly.
DAEMON_ENV = {"REDIS_BREAKER__RESET_TIMEOUT": "2", "POSTGRES_BREAKER__RESET_TIMEOUT": "2"}


@dataclass(frozen=True)
class Profile:
    """How long each phase lasts, and the load."""

    warmup: float
    outage: float
    recovery: float
    settle: float  # at most this long waiting for the alerts to resolve
    rate: int


PROFILES = {"full": Profile(20, 10, 15, 20, 2000), "quick": Profile(3, 8, 4, 6, 1000)}


def say(text: str = "") -> None:
    """Print at once (the demo is watched live)."""
    print(text, flush=True)


def rules_file(output: Path) -> tuple[Path, str]:
    """The alert rules Prometheus loads: the repository's rules with windows shortened to seconds, if available.

    The profile is the one the Alertmanager end-to-end tests use (FAST_TEST with a breaker-open window that outlasts
    the symptoms it inhibits, as the production window does).
    """
    try:
        from alertmanager_server import E2E_RULES

        from dashboards import render

        path = output / "rules-fast.yml"
        path.write_text(render.rules_yaml(E2E_RULES))
        return path, "dashboards' rules, windows cut to seconds (production expressions)"
    except Exception as exc:  # the dashboards package needs its extra; fall back to the committed file
        return ROOT / "dashboards" / "alerts" / "trading-shared.rules.yml", f"committed rules ({exc!r})"


def alertmanager(stack: contextlib.ExitStack) -> tuple[Any, Any]:
    """A private Alertmanager with the repository's routing and inhibition (demo timings), its receivers webhooks
    into the demo (``WebhookReceiver``) instead of a pager and a ticket queue: ``(AlertmanagerServer, receiver)``."""
    # tests/dashboards (on sys.path through demo_servers) and the dashboards package: imported here, so that the
    # demo still runs without them.
    from alertmanager_server import E2E_GROUP_WAIT, E2E_RULES, AlertmanagerServer, WebhookReceiver, routing_for_tests

    from dashboards import alertmanager as am_config
    from dashboards import rules

    hooks = stack.enter_context(WebhookReceiver())
    routing = routing_for_tests(hooks, group_wait=E2E_GROUP_WAIT)
    server = stack.enter_context(AlertmanagerServer(am_config.alertmanager_config(rules.rules(E2E_RULES), routing)))
    return server, hooks


class Demo:
    """One run of the scenario."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = PROFILES["quick" if args.quick else "full"]
        self.output: Path = args.output
        self.t0 = time.monotonic()
        self.epoch0 = time.time()
        self.alerts = AlertLog()
        self.figures: dict[str, ClientFigures] = {}
        self.previous: tuple[float, dict[str, ClientFigures]] | None = None
        self.states: dict[str, list[tuple[float, str]]] = {}
        self.outages: list[tuple[float, float, str]] = []
        self.stats: dict[str, Any] = {}
        self.verdict: dict[str, Any] = {}
        self.quiet_before: set[tuple[str, str]] = set()
        self.sync_stack = contextlib.ExitStack()
        self.am: Any = None  # AlertmanagerServer and WebhookReceiver (tests/dashboards/alertmanager_server.py)
        self.hooks: Any = None
        #: Alerts Alertmanager held back (inhibited): (alertname, client) -> seconds since start, first seen.
        self.inhibited: dict[tuple[str, str], float] = {}
        self.statements: list[str] = []  # the slowest statements, as summary lines
        self.trace: list[str] = []  # one tick's trace, as summary lines

    def elapsed(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.t0

    async def run(self) -> int:
        """The whole scenario; returns the exit code."""
        self.output.mkdir(parents=True, exist_ok=True)
        p = self.profile
        say(
            f"== trading-shared demo ({'quick' if self.args.quick else 'full'}: {p.warmup:.0f}s load, "
            f"{p.outage:.0f}s Redis outage, {p.recovery:.0f}s recovery, {p.rate} ticks/s) =="
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(asyncio.to_thread, self.sync_stack.close)
            metrics_port = int(os.environ.get("DEMO_METRICS_PORT") or free_port())
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            prom = await self.prometheus(stack, metrics_port)  # first: it is scraping by the time the daemon is up
            servers = await asyncio.to_thread(
                stack.enter_context,
                private_servers(
                    postgres_dsn=os.environ.get("DEMO_POSTGRES_DSN"), redis_url=os.environ.get("DEMO_REDIS_URL")
                ),
            )
            say(f"PostgreSQL: {_where(servers.postgres_dsn)} ({'private' if servers.postgres else 'yours'})")
            say(f"Redis:      {_where(servers.redis_url)} ({'private' if servers.redis else 'yours'})")
            redis_url, outage = await self.outage_switch(stack, servers.redis, servers.redis_url)
            env = {**os.environ, **DAEMON_ENV, "POSTGRES_DSN": servers.postgres_dsn, "REDIS_URL": redis_url}
            await self.janitor(env)
            baseline = await ticks_in_candles(servers.postgres_dsn)
            daemon = await self.start_daemon(stack, env, metrics_port)
            await self.wait_ready(daemon, prom, metrics_url)

            await self.phase("load", p.warmup, daemon, prom, metrics_url)
            began = time.time()
            self.quiet_before = set(self.alerts.current)
            await outage(True)
            await self.phase("REDIS DOWN", p.outage, daemon, prom, metrics_url)
            await outage(False)
            self.outages.append((began, time.time(), "Redis down"))
            await self.phase("recovery", p.recovery, daemon, prom, metrics_url)
            await self.phase("settling", p.settle, daemon, prom, metrics_url, until_quiet=True)

            with contextlib.suppress(OSError):
                self.figures = await asyncio.to_thread(scrape, metrics_url)
            code = await self.stop_daemon(daemon)
            png = await self.picture(prom)
            self.statements = await self.slowest_statements(prom)
            self.trace = self.tick_trace()
            drain_code = await self.drain(env)
            self.check(baseline, await ticks_in_candles(servers.postgres_dsn), drain_code)
        return self.summary(code, png)

    # -- set-up ----------------------------------------------------------------------------------------------------
    async def outage_switch(self, stack: contextlib.AsyncExitStack, server: RedisServer | None, url: str) -> Any:
        """How Redis goes away: stop the private server, or reset connections through a proxy to the user's."""
        if server is not None:

            async def stop_start(down: bool) -> None:
                say(f"[{self.elapsed():5.1f}s] >>> {'stopping Redis (SIGTERM)' if down else 'starting Redis again'}")
                await asyncio.to_thread(server.stop if down else server.start)

            return url, stop_start
        from support.proxy import FaultProxy

        parts = urllib.parse.urlsplit(url)
        proxy = await FaultProxy.start(parts.hostname or "127.0.0.1", parts.port or 6379)
        stack.push_async_callback(proxy.close)
        auth = parts.netloc.rpartition("@")[0]
        proxied = parts._replace(netloc=f"{auth + '@' if auth else ''}127.0.0.1:{proxy.port}").geturl()

        async def cut(down: bool) -> None:
            say(f"[{self.elapsed():5.1f}s] >>> {'cutting' if down else 'restoring'} the connections to your Redis")
            if down:
                proxy.reset()
            else:
                proxy.pass_through()

        return proxied, cut

    async def janitor(self, env: dict[str, str]) -> None:
        """The run-once example: create the schema, upsert the sample instruments."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "janitor.py"),
            "--init-schema",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        (self.output / "janitor.log").write_bytes(out)
        last = out.decode().strip().splitlines()[-2:] if out else []
        say(f"janitor (run-once): exit {proc.returncode}: {' / '.join(line.split(': ', 1)[-1] for line in last)}")
        if proc.returncode != 0:
            raise RuntimeError(f"the janitor failed; see {self.output / 'janitor.log'}")

    async def prometheus(self, stack: contextlib.AsyncExitStack, metrics_port: int) -> PrometheusAPI:
        """A private Prometheus scraping the daemon, or the user's (which must scrape DEMO_METRICS_PORT)."""
        if url := os.environ.get("DEMO_PROMETHEUS_URL"):
            say(f"Prometheus: {url} (yours: it must scrape 127.0.0.1:{metrics_port} as job {JOB} with the rules)")
            return PrometheusAPI(url)
        path, what = rules_file(self.output)
        try:
            self.am, self.hooks = await asyncio.to_thread(alertmanager, self.sync_stack)
            say(f"Alertmanager: {self.am.url} (private, the repository's routing and inhibition, demo timings)")
        except Exception as exc:  # e.g. prometheus-alertmanager not installed: the demo goes on without it
            say(f"Alertmanager: not started ({exc})")
        alertmanagers = [self.am.address] if self.am else []
        server = PrometheusServer(
            [f"127.0.0.1:{metrics_port}"], job=JOB, rule_files=[path], alertmanagers=alertmanagers
        )
        await asyncio.to_thread(server.start)
        stack.callback(server.stop)
        say(f"Prometheus: {server.url} (private, scrape and rule evaluation every 1s; {what})")
        return PrometheusAPI(server.url)

    async def start_daemon(
        self, stack: contextlib.AsyncExitStack, env: dict[str, str], metrics_port: int
    ) -> asyncio.subprocess.Process:
        """The long-running example, as its own process (as it would be deployed)."""
        self.spans_file.unlink(missing_ok=True)
        log = (self.output / "daemon.log").open("wb")
        stack.callback(log.close)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "market_data_daemon.py"),
            "--init-schema",
            "--rate",
            str(self.profile.rate),
            "--prometheus-port",
            str(metrics_port),
            "--stats-file",
            str(self.output / "stats.json"),
            "--spans-file",
            str(self.spans_file),
            "--bucket-seconds",
            "10",
            "--stream",
            self.args.stream,
            env=env,
            stdout=log,
            stderr=log,
        )

        async def kill() -> None:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        stack.push_async_callback(kill)
        say(f"daemon: pid {proc.pid}, metrics on :{metrics_port}, log {self.output / 'daemon.log'}")
        return proc

    async def wait_ready(self, daemon: asyncio.subprocess.Process, prom: PrometheusAPI, metrics_url: str) -> None:
        """Until the daemon serves metrics and Prometheus has scraped them."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if daemon.returncode is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}; see {self.output / 'daemon.log'}")
            with contextlib.suppress(Exception):
                figures = await asyncio.to_thread(scrape, metrics_url)
                up = await asyncio.to_thread(prom.query, f'up{{job="{JOB}"}} == 1')
                if up and all(c in figures for c in CLIENTS):
                    self.previous = (time.monotonic(), figures)
                    say(f"[{self.elapsed():5.1f}s] daemon running, Prometheus scraping it")
                    return
            await asyncio.sleep(0.25)
        raise RuntimeError("the daemon or Prometheus did not get ready within 30 s")

    # -- running ---------------------------------------------------------------------------------------------------
    async def phase(
        self,
        name: str,
        seconds: float,
        daemon: asyncio.subprocess.Process,
        prom: PrometheusAPI,
        metrics_url: str,
        until_quiet: bool = False,
    ) -> None:
        """Print a progress line every second for ``seconds`` (or until no alert is active, with ``until_quiet``)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pause = 1.0 - (time.monotonic() - self.t0) % 1.0  # lines on whole seconds, at least 0.5 s apart
            await asyncio.sleep(pause if pause >= 0.5 else pause + 1.0)
            if daemon.returncode is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}; see {self.output / 'daemon.log'}")
            await self.progress(name, prom, metrics_url)
            if until_quiet and not set(self.alerts.current) - self.quiet_before:
                return  # every alert the outage raised has resolved

    async def progress(self, phase: str, prom: PrometheusAPI, metrics_url: str) -> None:
        """One progress line: per client ops/s, errors/s, retries/s and breaker state; ticks; active alerts."""
        now = time.monotonic()
        try:
            figures = await asyncio.to_thread(scrape, metrics_url)
        except OSError:
            figures = self.figures
        with contextlib.suppress(Exception):
            self.alerts.update(await asyncio.to_thread(prom.alerts), self.elapsed())
        if self.am is not None:
            with contextlib.suppress(Exception):
                for alert in await asyncio.to_thread(self.am.alerts):
                    if alert["status"]["state"] == "suppressed":
                        key = (alert["labels"].get("alertname", "?"), alert["labels"].get(POOL, ""))
                        self.inhibited.setdefault(key, self.elapsed())
        self.stats = _read_json(self.output / "stats.json") or self.stats
        since, before = self.previous or (now, figures)
        parts = []
        for client in CLIENTS:
            f, b = figures.get(client, ClientFigures()), before.get(client, ClientFigures())
            dt = now - since
            history = self.states.setdefault(client, [])
            if not history or history[-1][1] != f.state:
                history.append((self.elapsed(), f.state))
            parts.append(
                f"{client} {rate(f.calls, b.calls, dt):5.0f} ops/s {rate(f.failed, b.failed, dt):4.0f} err/s "
                f"{rate(f.retries, b.retries, dt):4.0f} retry/s {f.state.upper():9}"
            )
        self.figures, self.previous = figures, (now, figures)
        ticks = f"ticks {self.stats.get('produced', 0):>7,} in {self.stats.get('folded', 0):>7,} folded"
        say(f"[{self.elapsed():5.1f}s] {phase:<10} | {' | '.join(parts)} | {ticks} | alerts: {self.alerts.short()}")

    async def stop_daemon(self, daemon: asyncio.subprocess.Process) -> int:
        """SIGTERM, as an orchestrator would; the daemon must exit 0 after closing its clients."""
        say(f"[{self.elapsed():5.1f}s] >>> SIGTERM to the daemon")
        daemon.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(daemon.wait(), 30)
        except TimeoutError:
            daemon.kill()
            code = await daemon.wait()
        self.stats = _read_json(self.output / "stats.json") or self.stats
        return code

    async def drain(self, env: dict[str, str]) -> int:
        """Restart the daemon without a producer: it resumes its pending entries and consumes what is left."""
        log = self.output / "daemon-drain.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "market_data_daemon.py"), "--drain", "--stream", self.args.stream,
                "--bucket-seconds", "10", "--stats-file", str(self.output / "stats-drain.json"),
                env=env, stdout=out, stderr=out,
            )  # fmt: skip
            try:
                code = await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                code = await proc.wait()
        drained = _read_json(self.output / "stats-drain.json") or {}
        say(f"[{self.elapsed():5.1f}s] daemon restarted with --drain: exit {code}, read {drained.get('consumed', 0):,} "
            f"entries left by the first run ({drained.get('folded', 0):,} ticks folded), then stopped")  # fmt: skip
        return code

    def check(self, baseline: int, final: int, drain_code: int) -> None:
        """Jepsen-style: every valid tick appended is in exactly one candle after the outage, SIGTERM and restart."""
        s = self.stats
        valid = int(s.get("produced", 0)) - int(s.get("produced_poison", 0))
        unknown = int(s.get("produce_unknown", 0))
        in_candles = final - baseline
        self.verdict = {
            "valid": valid,
            "in_candles": in_candles,
            "lost": max(0, valid - in_candles),
            "duplicated": max(0, in_candles - valid - unknown),
            "ok": drain_code == 0 and valid <= in_candles <= valid + unknown,
        }

    async def picture(self, prom: PrometheusAPI) -> Path | None:
        """Draw the dashboard's main panels from Prometheus's data."""
        try:
            return await asyncio.to_thread(
                draw_dashboard,
                prom.query_range,
                job=JOB,
                clients=CLIENTS,
                start=self.epoch0,
                end=time.time(),
                path=self.output / "dashboard.png",
                shaded=self.outages,
                title="trading-shared demo",
            )
        except Exception as exc:
            say(f"could not draw the dashboard: {exc!r}")
            return None

    @property
    def spans_file(self) -> Path:
        """Where the daemon writes its spans (JSON lines)."""
        return self.output / "spans.jsonl"

    async def slowest_statements(self, prom: PrometheusAPI, top: int = 3) -> list[str]:
        """The PostgreSQL statements with the highest p99 over the run, named by their query summary."""
        window = f"{max(1, round(time.time() - self.epoch0))}s"
        selector = f'job="{JOB}", db_system_name="postgresql", db_query_summary!=""'
        p99 = (
            f"topk({top}, histogram_quantile(0.99, sum by (db_query_summary, le) "
            f"(increase(db_client_operation_duration_seconds_bucket{{{selector}}}[{window}]))))"
        )
        counts = (
            f"sum by (db_query_summary) (increase(db_client_operation_duration_seconds_count{{{selector}}}[{window}]))"
        )
        try:
            slow = await asyncio.to_thread(prom.query, p99)
            calls = {
                r["metric"].get("db_query_summary"): float(r["value"][1])
                for r in await asyncio.to_thread(prom.query, counts)
            }
        except Exception as exc:
            return [f"  could not query Prometheus: {exc!r}"]
        rows = sorted(slow, key=lambda r: -float(r["value"][1]))
        return [
            f"  {r['metric'].get('db_query_summary', '?'):<28} p99 {float(r['value'][1]) * 1000:8.1f} ms   "
            f"{calls.get(r['metric'].get('db_query_summary'), 0):>8,.0f} calls"
            for r in rows
            if float(r["value"][1]) == float(r["value"][1])  # NaN: no calls in the window
        ]

    def tick_trace(self) -> list[str]:
        """One tick's way from the producer's send span to the candle upsert, from the daemon's span file."""
        try:
            trace = find_tick_trace(read_spans(self.spans_file))
        except OSError as exc:
            return [f"One tick's trace: no span file ({exc})"]
        if trace is None:
            return [f"One tick's trace: NOT FOUND in {self.spans_file}"]
        return render(trace, self.spans_file)

    # -- the end -----------------------------------------------------------------------------------------------------
    def notification_lines(self) -> list[str]:
        """What a person would have received: the webhook notifications, and what inhibition held back."""
        if self.hooks is None:
            return []
        lines = ["", "Notifications a person would have received (Alertmanager: one per alert, client and change):"]
        for n in self.hooks.received():
            alerts = ", ".join(f"{name}" + (f" ({st})" if st != n.status else "") for name, st in n.alerts())
            receiver = n.path.strip("/")
            lines.append(
                f"  {n.at - self.epoch0:4.0f}s to {receiver:<21} {n.status.upper():8} {n.group.get(POOL)}: {alerts}"
            )
        if len(lines) == 2:
            lines.append("  none")
        for (name, pool), at in sorted(self.inhibited.items(), key=lambda item: item[1]):
            lines.append(f"  not notified: {name} ({pool}), inhibited by the breaker-open alert from {at:.0f}s")
        return lines

    def summary(self, code: int, png: Path | None) -> int:
        """Print (and save) the summary; return the demo's exit code."""
        s, v = self.stats, self.verdict
        lines = [
            "",
            f"== Summary ({self.elapsed():.0f} s) ==",
            f"Daemon: exit code {code} after SIGTERM ({'clean shutdown, clients closed' if code == 0 else 'FAILED'})",
            f"Ticks: {s.get('produced', 0):,} appended with xadd_bulk ({s.get('produced_poison', 0)} poison); "
            f"{s.get('produce_dropped', 0):,} not written while Redis was away; {s.get('produce_unknown', 0)} "
            "of unknown outcome",
            f"Consumer: {s.get('folded', 0):,} ticks folded into candles ({s.get('candle_writes', 0):,} idempotent "
            f"upserts), {s.get('duplicates', 0)} redeliveries skipped, {s.get('dead_lettered', 0)} poison messages "
            f"dead-lettered to dlq:{self.args.stream}",
        ]
        if v:
            lines.append(
                f"Check: {v['valid']:,} valid ticks appended, {v['in_candles']:,} in candles: lost {v['lost']}, "
                f"duplicated {v['duplicated']}: {'OK' if v['ok'] else 'FAILED'}"
            )
        lines += [
            "",
            f"{'client':<9} {'operations':>10} {'failed':>7} {'retries':>8} {'rejected':>9}  "
            f"{'breaker transitions':<34} breaker states seen (1 s samples)",
        ]
        for client in CLIENTS:
            f = self.figures.get(client, ClientFigures())
            moves = ", ".join(f"-> {state} x{n:.0f}" for state, n in sorted(f.transitions.items()) if n) or "none"
            seen = " -> ".join(f"{st} ({at:.0f}s)" for at, st in self.states.get(client, []))
            lines.append(
                f"{client:<9} {f.calls:>10,.0f} {f.failed:>7,.0f} {f.retries:>8,.0f} {f.rejections:>9,.0f}  "
                f"{moves:<34} {seen}"
            )
        lines += ["", "Alerts reported by Prometheus (times since the demo started):"]
        lines += [f"  {line}" for line in self.alerts.lines()] or ["  none became active"]
        if self.alerts.current:
            lines.append(f"  still active at the end: {self.alerts.short()}")
        for name, pool in sorted(self.quiet_before):
            lines.append(f"  note: {name} ({pool}) was already active before the outage: not caused by it")
        outages = ", ".join(f"{a - self.epoch0:.0f}s to {b - self.epoch0:.0f}s" for a, b, _ in self.outages)
        lines += [f"  (Redis was down from {outages})", *self.notification_lines()]
        lines += ["", "Slowest PostgreSQL statements over the run (p99 by db.query.summary, from Prometheus):"]
        lines += self.statements or ["  none recorded"]
        lines += ["", *self.trace]
        lines += [
            "",
            f"Dashboard picture: {png if png else 'NOT WRITTEN'}",
            f"Logs and stats: {self.output}/ (daemon.log, daemon-drain.log, janitor.log, stats.json, spans.jsonl, "
            "summary.txt)",
        ]
        text = "\n".join(lines)
        say(text)
        (self.output / "summary.txt").write_text(text.lstrip() + "\n")
        traced = bool(self.trace) and self.trace[0].startswith("One tick's trace, from")
        return 0 if code == 0 and v.get("ok") and png is not None and traced else 1


async def ticks_in_candles(dsn: str) -> int:
    """How many ticks the candles table holds (the demo's own check, through the SDK)."""
    async with PostgresClient(PostgresSettings(dsn=SecretStr(dsn), name="demo-check", min_size=1, max_size=1)) as pg:
        return int(await pg.fetchval("SELECT coalesce(sum(trades), 0) FROM candles") or 0)


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}"


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    """Run the demo."""
    parser = argparse.ArgumentParser(description="trading-shared demo: load, a Redis outage, a summary, a picture.")
    parser.add_argument("--quick", action="store_true", help="short scenario (~30 s), for tests")
    parser.add_argument("--output", type=Path, default=ROOT / "demo-output", help="where the PNG and logs go")
    parser.add_argument("--stream", default=f"market:ticks:demo-{os.getpid()}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind (and clean up the servers) on SIGTERM too
    try:
        return asyncio.run(Demo(args).run())
    except KeyboardInterrupt:
        say("\ninterrupted: servers stopped and removed")
        return 130
    except RuntimeError as exc:
        say(f"demo failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
