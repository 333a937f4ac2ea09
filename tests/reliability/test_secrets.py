"""Secrets: a run with a known password, including failures, leaves it nowhere; nor parameters, keys or values.

Each test runs a client whose DSN/URL carries a known password against a password-protected private server, through
a FaultProxy, and makes it do everything: connect, succeed, fail on caller errors, lose replies, retry through
connection resets, open its breaker, recover; a second client uses a wrong password. Everything the SDK and the
drivers log (caplog at DEBUG, every logger), every span (attributes, events, status) and every metric point
(tests/support/otel.py), plus the reprs and messages of the clients, settings and errors, are then searched for
the password, the wrong password, query parameters, SQL literals, Redis keys and values: none may appear. (Spans
carry the parameterised SQL as ``db.query.text`` by design, literals replaced by ``?``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
import redis.exceptions as rex

from support.otel import Otel
from support.servers import SECURED_PASSWORD, SECURED_ROLE
from trading_shared import (
    CircuitOpenError,
    OutcomeUnknownError,
    ServiceUnavailableError,
)

from .conftest import REDIS_PASSWORD
from .harness import PgEnv, RedisEnv, count_fault, pg_quiet, with_port

WRONG_PASSWORD = "wrong-pw-5d0c77"
PARAM = "param-value-e2b94f"
SQL_MARKER = "sql_marker_81aa3c"
KEY = "key-name-0f6a2d"
VALUE = "key-value-9b3e51"
GROUP = "group-name-3c8e17"

BREAKER = {
    "breaker": {"fail_max": 2, "reset_timeout": 0.3},
    "retry": {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 1.0},
}


async def _expect(
    errors: list[BaseException], kind: type[BaseException], call: Callable[[], Awaitable[object]]
) -> None:
    with pytest.raises(kind) as info:
        await call()
    errors.append(info.value)


def _assert_nowhere(secrets: list[str], places: dict[str, str]) -> None:
    found = [f"{secret!r} in {where}" for secret in secrets for where, text in places.items() if secret in text]
    assert not found, "leaked: " + "; ".join(found)


def _errors_text(errors: list[BaseException]) -> str:
    parts: list[str] = []
    visited: set[int] = set()
    todo: list[BaseException] = list(errors)
    while todo:  # every error and its whole chain (chains can loop)
        err = todo.pop()
        if id(err) in visited:
            continue
        visited.add(id(err))
        parts += [str(err), repr(err)]
        todo += [e for e in (err.__cause__, err.__context__) if e is not None]
    return "\n".join(parts)


async def test_pg_run_with_failures_leaks_no_password_parameter_or_sql(
    pg_env: PgEnv, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await asyncio.to_thread(pg_env.server.set_password, SECURED_ROLE, SECURED_PASSWORD)
    await asyncio.to_thread(pg_env.server.require_password, SECURED_ROLE)
    admin = await pg_env.admin()
    try:
        await admin.execute(f"CREATE TABLE t (id text PRIMARY KEY); GRANT ALL ON t TO {SECURED_ROLE}")
    finally:
        await admin.close()
    proxy = await pg_env.proxy()
    db = pg_env.dsn.rsplit("/", 1)[1]
    dsn = with_port(pg_env.server.dsn(db=db, user=SECURED_ROLE, password=SECURED_PASSWORD), proxy.port)
    pg = pg_env.client(dsn=dsn, **BREAKER)
    errors: list[BaseException] = []

    await pg.execute(f"INSERT INTO t VALUES ($1) /* {SQL_MARKER} */", PARAM)
    assert await pg.fetchval(f"SELECT id FROM t WHERE id = $1 /* {SQL_MARKER} */", PARAM) == PARAM
    await _expect(errors, asyncpg.UniqueViolationError, lambda: pg.execute("INSERT INTO t VALUES ($1)", PARAM))
    await _expect(errors, asyncpg.PostgresSyntaxError, lambda: pg.fetch(f"SELEC $1 /* {SQL_MARKER} */", PARAM))
    await pg_quiet(pg)  # the pool's background reset is done: the next chunk is the INSERT's
    proxy.lose_next_reply()
    count_fault("pg.reply_lost")
    await _expect(errors, OutcomeUnknownError, lambda: pg.execute("INSERT INTO t VALUES ($1)", PARAM + "-2"))
    proxy.reset()  # connections reset: retried, then the breaker opens
    count_fault("pg.connection_reset")
    for _ in range(2):
        await _expect(errors, ServiceUnavailableError, lambda: pg.fetchval("SELECT $1::text", PARAM))
    await _expect(errors, CircuitOpenError, lambda: pg.fetchval("SELECT $1::text", PARAM))
    proxy.pass_through()
    await asyncio.sleep(pg.breaker.retry_after() + 0.01)  # the breaker's own reset time, read from it
    # The reply dropped was to the INSERT itself (its parameter was in the request: applied) or to the Parse of a
    # statement asyncpg had not kept after the error (not executed): the proxy's record says which, so exactly.
    (lost,) = proxy.lost_requests
    applied = (PARAM + "-2").encode() in lost
    assert await pg.fetchval("SELECT count(*) FROM t WHERE id LIKE $1", PARAM + "%") == 1 + applied  # recovered
    wrong = pg_env.client(dsn=dsn.replace(SECURED_PASSWORD, WRONG_PASSWORD))
    await _expect(errors, asyncpg.InvalidPasswordError, wrong.connect)
    await pg_env.close_all()

    places = {
        "logs": caplog.text + "\n".join(str(r.args) for r in caplog.records),
        "spans and metrics": otel.everything_as_text(),
        "errors": _errors_text(errors),
        "reprs": repr(pg) + repr(wrong) + repr(pg.settings) + str(pg.settings) + repr(wrong.settings),
    }
    assert len(otel.spans()) >= 8 and otel.points("db.client.operation.duration")
    assert "circuit breaker" in caplog.text  # the capture works: the breaker's transitions were logged
    _assert_nowhere([SECURED_PASSWORD, WRONG_PASSWORD], places)
    # The caller's own errors may quote its SQL (PostgreSQL's messages do): parameters and SQL stay out of telemetry.
    _assert_nowhere([PARAM, SQL_MARKER], {k: v for k, v in places.items() if k != "errors"})


async def test_redis_run_with_failures_leaks_no_password_key_or_value(
    secured_env: RedisEnv, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await secured_env.proxy()
    url = secured_env.url(proxy.port)
    assert REDIS_PASSWORD in url
    r = secured_env.client(url=url, **BREAKER)
    errors: list[BaseException] = []

    await r.set(KEY, VALUE)
    assert await r.get(KEY) == VALUE.encode()
    await r.xadd_bulk(KEY + "-stream", [{KEY: VALUE}] * 3)
    # Streams as messaging: an undeclared stream and group are never named; a declared, observed one may be.
    r.observe_stream("md:declared", "candles")
    await r.xadd("md:declared", {KEY: VALUE})
    await r.xadd(KEY + "-stream", {KEY: VALUE})
    for stream in ("md:declared", KEY + "-stream"):
        await r.ensure_consumer_group(stream, GROUP)
        entries = await r.read_stream_messages(stream, GROUP, "c1")
        with r.process_span(stream, GROUP, entries):
            pass
        await r.dead_letter_message(stream, GROUP, entries[0], reason=VALUE)
        await r.acknowledge_message(stream, GROUP, *(e.id for e in entries))
        await r.xautoclaim_stale_messages(stream, GROUP, "c2", min_idle_ms=0)
    await r.refresh_stream_health()
    await _expect(errors, rex.ResponseError, lambda: r.lpush(KEY, VALUE))  # WRONGTYPE
    await _expect(
        errors,
        rex.ResponseError,  # NOGROUP: the server's message quotes the key
        lambda: r.run(
            "XREADGROUP",
            lambda c: c.execute_command("XREADGROUP", "GROUP", "g", "c", "STREAMS", KEY + "-none", ">"),
            idempotent=True,
        ),
    )
    proxy.lose_next_reply()
    count_fault("redis.reply_lost")
    await _expect(errors, OutcomeUnknownError, lambda: r.incr(KEY + "-counter"))
    proxy.reset()
    count_fault("redis.connection_reset")
    for _ in range(2):
        await _expect(errors, ServiceUnavailableError, lambda: r.get(KEY))
    await _expect(errors, CircuitOpenError, lambda: r.set(KEY, VALUE))
    proxy.pass_through()
    await asyncio.sleep(max(b.retry_after() for b in r.breakers.values()) + 0.01)  # the breaker's own reset time
    assert await r.get(KEY) == VALUE.encode()
    wrong = secured_env.client(url=url.replace(REDIS_PASSWORD, WRONG_PASSWORD))
    await _expect(errors, rex.AuthenticationError, wrong.connect)
    await secured_env.close_all()

    places = {
        "logs": caplog.text + "\n".join(str(r.args) for r in caplog.records),
        "spans and metrics": otel.everything_as_text(),
        "errors": _errors_text(errors),
        "reprs": repr(r) + repr(wrong) + repr(r.settings) + str(r.settings) + repr(wrong.settings),
    }
    assert len(otel.spans()) >= 8 and otel.points("db.client.operation.duration")
    assert "circuit breaker" in caplog.text
    _assert_nowhere([REDIS_PASSWORD, WRONG_PASSWORD], places)
    _assert_nowhere([KEY, VALUE, GROUP], {k: v for k, v in places.items() if k != "errors"})
    assert "md:declared" in places["spans and metrics"]  # the declared stream is named: the check can fail
