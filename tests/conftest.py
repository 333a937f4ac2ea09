"""Shared fixtures: private PostgreSQL and Redis servers, per-test databases, leak checks.

Fixtures
--------
- ``pg_server`` (session): a private :class:`~support.servers.PostgresServer`, started once, removed at the end.
- ``redis_server`` (session): a private :class:`~support.servers.RedisServer` without password.
- ``pg_dsn`` (function): DSN of a fresh database (``CREATE DATABASE ... TEMPLATE template1``), dropped afterwards.
- ``redis_url`` (function): URL of db 0 on the private Redis, flushed (FLUSHALL) before the test.
- ``readonly_pg_dsn`` (session): for read-only smoke tests. ``TS_TEST_POSTGRES_DSN``, if set, points it at an
  existing server (the tests must not write through it); otherwise it is the private server's ``postgres`` db.

Servers a test froze, stopped, killed or reconfigured are brought back before the next test that uses them.
A test that leaves pending asyncio tasks behind fails at teardown (they are cancelled first); mark a test
``@pytest.mark.allow_pending_tasks`` to opt out. Missing server binaries fail the session's tests with a
pointer to ``scripts/setup.sh``; they are never skipped.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from support.leaks import describe_tasks, drain_pending_tasks
from support.servers import PostgresServer, RedisServer, ServerBinaryMissing, ServerError, cleanup_all


def pytest_configure(config: pytest.Config) -> None:
    """Register markers; make SIGTERM (e.g. a CI timeout) unwind like Ctrl-C so the servers get cleaned up."""
    config.addinivalue_line("markers", "allow_pending_tasks: the test may leave pending asyncio tasks behind")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Clean up servers that are still registered (also runs on KeyboardInterrupt)."""
    cleanup_all()


def _start(server: PostgresServer | RedisServer) -> None:
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start {type(server).__name__}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL server (127.0.0.1, trust auth, role ``secured`` needs a password)."""
    try:
        server = PostgresServer()
    except ServerBinaryMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    _start(server)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private redis-server (127.0.0.1, no password, DEBUG allowed)."""
    try:
        server = RedisServer()
    except ServerBinaryMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    _start(server)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(autouse=True)
def _restore_servers(request: pytest.FixtureRequest) -> None:
    """Before each test using a private server: thaw/restart it if an earlier test left it frozen or down."""
    for name in ("pg_server", "redis_server"):
        if name in request.fixturenames:
            server: PostgresServer | RedisServer = request.getfixturevalue(name)
            server.ensure_running()


@pytest.fixture(autouse=True)
async def _no_pending_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail a test that leaves pending asyncio tasks behind (checked after the test's other fixtures ended)."""
    yield
    leaked = await drain_pending_tasks(grace=0.2)
    if leaked and request.node.get_closest_marker("allow_pending_tasks") is None:
        pytest.fail(f"test left {len(leaked)} pending asyncio task(s) (now cancelled):\n{describe_tasks(leaked)}")


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """DSN (user postgres, trust) of a database created for this test only and dropped after it."""
    pg_server.ensure_running()
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg_server.create_database(name)
    try:
        yield pg_server.dsn(db=name)
    finally:
        pg_server.ensure_running()
        pg_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of db 0 on the private Redis, emptied (FLUSHALL) before the test."""
    redis_server.ensure_running()
    redis_server.cli("FLUSHALL")
    return redis_server.url()


@pytest.fixture(scope="session")
def readonly_pg_dsn(request: pytest.FixtureRequest) -> str:
    """DSN for read-only smoke tests: ``$TS_TEST_POSTGRES_DSN`` if set, else the private server's ``postgres`` db.

    Tests using it must only read: with the variable set it may be a shared, real server.
    """
    if dsn := os.environ.get("TS_TEST_POSTGRES_DSN"):
        return dsn
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.dsn()
