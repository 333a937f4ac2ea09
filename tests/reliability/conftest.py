"""Fixtures of the fault-injection reliability suite, and its end-of-session summary.

- ``otel``: in-memory tracer and meter providers.
- ``pg_env``: a :class:`~reliability.harness.PgEnv` on this test's database: clients (optionally behind a
  FaultProxy) with a test-unique ``application_name``; leak checks at teardown.
- ``redis_aof`` (session): a private redis-server with ``appendonly yes, appendfsync always``: an acknowledged write
  survives a restart or a SIGKILL, so histories can be checked across them (the shared ``redis_server`` keeps
  nothing across a restart).
- ``redis_env``: a :class:`~reliability.harness.RedisEnv` on ``redis_aof`` (flushed): named clients, leak checks.
- ``redis_secured`` (session) / ``secured_env``: a private redis-server with ``requirepass`` :data:`REDIS_PASSWORD`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from support.otel import Otel
from support.servers import PostgresServer, RedisServer, ServerError

from .harness import PgEnv, RedisEnv
from .history import LEDGER

#: The password of ``redis_secured`` (and of nothing else): it must never appear in logs, spans or metrics.
REDIS_PASSWORD = "rel-redis-pw-7c41e9"


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


@pytest.fixture
async def pg_env(pg_server: PostgresServer, pg_dsn: str, otel: Otel) -> AsyncIterator[PgEnv]:
    env = PgEnv(pg_server, pg_dsn, otel)
    yield env
    await env.teardown()


@pytest.fixture(scope="session")
def redis_aof() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start redis-server with AOF: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_secured() -> Iterator[RedisServer]:
    server = RedisServer(password=REDIS_PASSWORD)
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start redis-server with requirepass: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def secured_env(redis_secured: RedisServer, otel: Otel) -> AsyncIterator[RedisEnv]:
    await asyncio.to_thread(redis_secured.ensure_running)
    await asyncio.to_thread(redis_secured.cli, "FLUSHALL")
    env = RedisEnv(redis_secured, otel)
    yield env
    await env.teardown()


@pytest.fixture
async def redis_env(redis_aof: RedisServer, otel: Otel) -> AsyncIterator[RedisEnv]:
    await asyncio.to_thread(redis_aof.ensure_running)
    await asyncio.to_thread(redis_aof.cli, "FLUSHALL")
    env = RedisEnv(redis_aof, otel)
    yield env
    await env.teardown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the faults injected and the verdict over every checked write history."""
    if not LEDGER.reports and not LEDGER.faults:
        return
    terminalreporter.section("reliability summary")
    terminalreporter.write_line("reliability: " + LEDGER.summary())
    if LEDGER.faults:
        terminalreporter.write_line("  faults: " + LEDGER.fault_breakdown())
    if LEDGER.bounded_calls:
        terminalreporter.write_line(
            f"  time bounds: {LEDGER.bounded_calls} calls under blackhole/freeze/stall ended at most "
            f"{max(LEDGER.worst_overshoot, 0.0) * 1000:.0f} ms after their deadline"
        )
    by_path: dict[str, list[int]] = {}
    keyed: set[str] = set()
    for report in LEDGER.reports:  # targeted variants (pg.transaction.deadlock) count under their path
        path = ".".join(report.path.split(".")[:2])
        totals = by_path.setdefault(path, [0, 0, 0, 0, 0])
        if report.keyed:
            keyed.add(path)
        for i, n in enumerate(
            (report.writes, report.indeterminate, len(report.lost), len(report.duplicated), len(report.unexpected))
        ):
            totals[i] += n
    for path, (writes, info, lost, dup, unexpected) in sorted(by_path.items()):
        dup_text = "n/a" if path in keyed else str(dup)  # keyed paths: a duplicate cannot be observed
        terminalreporter.write_line(
            f"  {path:<28} writes {writes:>6}  indeterminate {info:>4}  "
            f"lost {lost}  duplicated {dup_text}  unexpected {unexpected}"
        )
    if LEDGER.hits:
        terminalreporter.write_line("  writes each fault reached, per path (history runs; a 0 fails its test):")
        for line in LEDGER.hit_table():
            terminalreporter.write_line("    " + line)
