"""Bad input matrix: every bad DSN, URL, credential or value gets a clear, typed error, fast, and nothing else.

For every case:

* the error has the stated type and arrives within :data:`BOUND` (1 s; the unknown host fails in the local
  resolver, see :data:`UNKNOWN_HOST`);
* it was tried ONCE: no retry was counted (``trading_shared.client.retries`` is empty and no span has an
  ``attempt_failed`` event); for Redis the server's own ``INFO commandstats`` shows how many times it got the command;
* the client's breaker stays closed with no failure counted;
* nothing is destroyed: a sentinel table / key written before is intact, the value the call was about is intact, and
  the client still works afterwards;
* the message of a configuration error never contains the password.

Some inputs are not errors at all (NUL bytes and newlines in Redis keys, injection attempts through values): those
must round-trip byte for byte and leave everything else alone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.exceptions as rex

from support.otel import Otel
from support.servers import SECURED_ROLE
from trading_shared import (
    ConfigurationError,
    PostgresClient,
    PostgresSettings,
    RedisClient,
    RedisSettings,
    ServiceUnavailableError,
)
from trading_shared.redis import PlaintextServerError
from trading_shared.telemetry import names

from .conftest import REDIS_PASSWORD
from .harness import PgEnv, RedisEnv
from .test_pg_history import LEGACY_FUNCTION

BOUND = 1.0
#: The unknown host is ``-no-such-host.invalid``: a label may not start with "-", so the C library's resolver refuses
#: the name without sending a query (checked with strace: no packet to port 53). No test depends on an outside DNS
#: server answering NXDOMAIN quickly, and the error is the same gaierror an unknown name gets.
UNKNOWN_HOST = "-no-such-host.invalid"
PASSWORD = "bad-input-pw-93b1"  # never the right password of anything
EVIL = '"; DROP TABLE sentinel; --'


def _no_retries(otel: Otel) -> None:
    assert sum(v for _, v in otel.points(names.RETRIES)) == 0, "a bad input was retried"
    failed = [s.name for s in otel.spans() if any(e.name == names.EVENT_ATTEMPT_FAILED for e in s.events)]
    assert failed == [], f"spans with failed attempts: {failed}"


def _breaker_untouched(*clients: PostgresClient | RedisClient) -> None:
    for client in clients:
        assert client.breaker.state.value == "closed"
        assert client.breaker.failure_count == 0


# ------------------------------------------------------------------------------------------------------ PostgreSQL


@dataclass
class PgCase:
    """``run(env, pg)`` makes the bad call and returns the client it used (``pg`` or one of its own)."""

    expect: type[BaseException] | tuple[type[BaseException], ...] | None
    run: Callable[[PgEnv, PostgresClient], Awaitable[PostgresClient | None]]
    bound: float = BOUND


def _settings(dsn: str, **extra: Any) -> PostgresSettings:
    return PostgresSettings(dsn=dsn, **extra)


async def _bad_settings(dsn: str) -> None:
    _settings(dsn)


async def _connect(env: PgEnv, dsn: str, **extra: Any) -> PostgresClient:
    client = env.client(dsn=dsn, **extra)
    await client.connect()
    return client


def _dsn(env: PgEnv, tail: str = "", **parts: Any) -> str:
    server = env.server
    db = env.dsn.rsplit("/", 1)[1]
    return server.dsn(db=db, **parts) + tail


async def _wrong_password(env: PgEnv, pg: PostgresClient) -> PostgresClient:
    await asyncio.to_thread(env.server.require_password, SECURED_ROLE)
    return await _connect(env, _dsn(env, user=SECURED_ROLE, password=PASSWORD))


async def _copy_upsert(pg: PostgresClient, table: str, columns: list[str], schema: str | None = None) -> None:
    await pg.copy_upsert(table, [(1, "a")], columns=columns, key_columns=columns[:1], schema=schema)


async def _odd_identifiers(env: PgEnv, pg: PostgresClient) -> PostgresClient:
    table, column = "odd table\nname; --", "odd column\r\n"
    await pg.execute(f'CREATE TABLE "{table}" (id int PRIMARY KEY, "{column}" text)')
    rows = [(1, "x"), (2, "it's\n")]
    assert await pg.copy_upsert(table, rows, columns=["id", column], key_columns=["id"]) == 2
    assert await pg.copy_records(table, [(3, None)], columns=["id", column]) == 1
    got = await pg.fetch(f'SELECT id, "{column}" FROM "{table}" ORDER BY id')
    assert [tuple(r) for r in got] == [*rows, (3, None)]
    return pg


async def _injection_in_values(env: PgEnv, pg: PostgresClient) -> PostgresClient:
    evil = "x'); DROP TABLE sentinel; --"
    await pg.execute("INSERT INTO t (id, note) VALUES (100, $1)", evil)
    await pg.copy_upsert("t", [(101, evil)], columns=["id", "note"], key_columns=["id"])
    await pg.bulk_upsert_instruments([{"symbol": evil, "tick_size": "1", "meta": {"k": evil}}], evil)
    assert await pg.fetchval("SELECT count(*) FROM t WHERE note = $1", evil) == 2
    assert await pg.fetchval("SELECT meta->>'k' FROM instruments WHERE symbol = $1", evil) == evil
    return pg


async def _bad_instrument(env: PgEnv, pg: PostgresClient) -> PostgresClient:
    good = {"symbol": "GOOD", "tick_size": "0.1"}
    try:
        await pg.bulk_upsert_instruments([good, {"symbol": "BAD", "tick_size": "not a number"}], "x")
    finally:
        assert await pg.fetchval("SELECT count(*) FROM instruments") == 0  # atomic: the good one was not kept
    return pg


PG_CASES: dict[str, PgCase] = {
    "dsn_port_out_of_range": PgCase(ValueError, lambda e, p: _bad_settings(f"postgresql://u:{PASSWORD}@h:99999/d")),
    "dsn_wrong_scheme": PgCase(ValueError, lambda e, p: _bad_settings(f"mysql://u:{PASSWORD}@h:5432/d")),
    "dsn_not_a_url": PgCase(ValueError, lambda e, p: _bad_settings(f"host=h password={PASSWORD}")),
    "dsn_bad_option": PgCase(asyncpg.ClientConfigurationError, lambda e, p: _connect(e, _dsn(e, "?sslmode=bogus"))),
    "wrong_password": PgCase(asyncpg.InvalidPasswordError, _wrong_password),
    "unknown_host": PgCase(socket.gaierror, lambda e, p: _connect(e, f"postgresql://u@{UNKNOWN_HOST}/d")),
    "tls_required_by_dsn": PgCase(ConnectionError, lambda e, p: _connect(e, _dsn(e, "?sslmode=require"))),
    "tls_required_by_setting": PgCase(ConnectionError, lambda e, p: _connect(e, _dsn(e), ssl="require")),
    "nul_in_parameter": PgCase(
        asyncpg.CharacterNotInRepertoireError, lambda e, p: p.execute("INSERT INTO t VALUES (1, $1)", "a\x00b")
    ),
    "nul_in_sql_text": PgCase(asyncpg.ProtocolViolationError, lambda e, p: p.fetchval("SELECT 1 -- \x00")),
    "nul_in_identifier": PgCase(ValueError, lambda e, p: _copy_upsert(p, "t\x00", ["id", "note"])),
    "oversized_index_row": PgCase(
        asyncpg.ProgramLimitExceededError,
        lambda e, p: p.execute("INSERT INTO t VALUES (2, $1)", os.urandom(100_000).hex()),
    ),
    "int_out_of_range": PgCase(asyncpg.DataError, lambda e, p: p.execute("INSERT INTO t VALUES ($1, 'x')", 2**40)),
    "too_many_arguments": PgCase(asyncpg.InterfaceError, lambda e, p: p.fetchval("SELECT 1", *range(40_000))),
    "non_utf8_surrogate": PgCase(asyncpg.DataError, lambda e, p: p.execute("INSERT INTO t VALUES (3, $1)", "\udcff")),
    "bytes_for_text": PgCase(asyncpg.DataError, lambda e, p: p.execute("INSERT INTO t VALUES (3, $1)", b"\xff\xfe")),
    "injection_in_values": PgCase(None, _injection_in_values),
    "injection_in_table_name": PgCase(
        asyncpg.UndefinedTableError, lambda e, p: _copy_upsert(p, f"sentinel{EVIL}", ["id", "note"])
    ),
    "injection_in_column_name": PgCase(
        asyncpg.UndefinedColumnError, lambda e, p: _copy_upsert(p, "t", ["id", 'note") ; DROP TABLE sentinel; --'])
    ),
    "injection_in_schema_name": PgCase(
        (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError),
        lambda e, p: _copy_upsert(p, "t", ["id", "note"], 'public"; DROP TABLE t; --'),
    ),
    "injection_in_copy_records_table": PgCase(
        asyncpg.UndefinedTableError,
        lambda e, p: p.copy_records('t"; DROP TABLE t; --', [(1, "a")], columns=["id", "note"]),
    ),
    "identifiers_with_spaces_and_newlines": PgCase(None, _odd_identifiers),
    "constraint_violation": PgCase(
        asyncpg.UniqueViolationError, lambda e, p: p.execute("INSERT INTO t VALUES (0, 'again')")
    ),
    "bad_value_in_bulk_upsert": PgCase(asyncpg.InvalidTextRepresentationError, _bad_instrument),
}


@pytest.mark.parametrize("case", list(PG_CASES))
async def test_pg_bad_input(pg_env: PgEnv, otel: Otel, case: str) -> None:
    spec = PG_CASES[case]
    admin = await pg_env.admin()
    try:
        await admin.execute(
            LEGACY_FUNCTION
            + """
            CREATE TABLE sentinel (id int PRIMARY KEY); INSERT INTO sentinel VALUES (1), (2), (3);
            CREATE TABLE t (id int PRIMARY KEY, note text); CREATE INDEX ON t (note); INSERT INTO t VALUES (0, 'keep');
        """
        )
    finally:
        await admin.close()
    pg = pg_env.client(breaker={"fail_max": 1})  # one counted failure would open it
    await pg.connect()
    used: list[PostgresClient] = [pg]
    started = time.monotonic()
    if spec.expect is None:
        client = await spec.run(pg_env, pg)
        error: BaseException | None = None
    else:
        with pytest.raises(spec.expect) as info:
            used.append(await spec.run(pg_env, pg))  # type: ignore[arg-type]
        error = info.value
        client = None
    took = time.monotonic() - started
    assert took < spec.bound, f"{case}: {took:.3f} s"
    if error is not None:
        assert not isinstance(error, ServiceUnavailableError), f"{case}: {error!r} reads as an outage"
        assert PASSWORD not in str(error) + repr(error)
        assert str(error), "an error without a message"
    _no_retries(otel)
    _breaker_untouched(*used, *(c for c in pg_env.clients if c is not client))
    assert await pg.fetchval("SELECT count(*) FROM sentinel") == 3  # nothing destroyed
    assert await pg.fetchval("SELECT note FROM t WHERE id = 0") == "keep"
    assert await pg.fetchval("SELECT count(*) FROM t WHERE id BETWEEN 1 AND 3") == 0  # nothing half-written


# ------------------------------------------------------------------------------------------------------------ Redis


@dataclass
class RedisCase:
    """``run(env, r)`` makes the bad call; ``command`` (if any) is the one the server must have seen ``sent`` times."""

    expect: type[BaseException] | tuple[type[BaseException], ...] | None
    run: Callable[[RedisEnv, RedisClient], Awaitable[object]]
    command: str | None = None
    sent: int = 1
    bound: float = BOUND


async def _bad_redis_settings(url: str) -> None:
    RedisSettings(url=url)


async def _bad_redis_client(env: RedisEnv, url: str) -> None:
    env.client(url=url)


async def _redis_connect(env: RedisEnv, url: str, **extra: Any) -> RedisClient:
    client = env.client(url=url, **extra)
    await client.connect()
    return client


async def _wrong_redis_password(env: RedisEnv, r: RedisClient) -> None:
    await _redis_connect(env, env.url(password=PASSWORD))


async def _odd_keys(env: RedisEnv, r: RedisClient) -> None:
    pairs = {
        b"key with spaces": b"v1",
        b"key\nwith\nnewlines": b"v2",
        b"k\r\nFLUSHALL\r\n": b"\r\nFLUSHALL\r\n",  # an inline-command injection attempt: just bytes
        b"nul\x00key": b"nul\x00value",
        "unicode ключ ✓": "значение ✓",
        b"\xff\xfe non-utf8 key": b"\x80\x81\xff",
    }
    for key, value in pairs.items():
        assert await r.set(key, value)
    for key, value in pairs.items():
        assert await r.get(key) == (value.encode() if isinstance(value, str) else value)
    await r.xadd_bulk("s\n s", [{b"f\x00 ield": b"v\r\n", "x');redis.call('FLUSHALL')--": 1}])
    raw = env.raw()
    try:
        assert await raw.dbsize() == len(pairs) + 4  # + sentinel, value, the stream and its chunk dedupe key
        (entry,) = await raw.xrange(b"s\n s")
        fields = dict(entry[1])
        fields.pop(b"traceparent", None)  # the SDK's trace context field, when tracing is on (stream-telemetry.md)
        assert fields == {b"f\x00 ield": b"v\r\n", b"x');redis.call('FLUSHALL')--": b"1"}
    finally:
        await raw.aclose()


async def _non_utf8_round_trip(env: RedisEnv, r: RedisClient) -> None:
    blob = bytes(range(256))
    await r.set("blob", blob)
    assert await r.get("blob") == blob
    # With redis-py's decode_responses=True, GETDEL deleted the key, then failed to decode: the value was lost. The
    # SDK never decodes (and refuses the URL option that would), so the destructive read returns the exact bytes.
    got = await r.run("GETDEL", lambda c: c.execute_command("GETDEL", "blob"), idempotent=False)
    assert got == blob


async def _oversized(env: RedisEnv, r: RedisClient) -> None:
    await asyncio.to_thread(env.server.cli, "CONFIG", "SET", "proto-max-bulk-len", "1mb")
    try:
        await r.set("value", b"x" * (32 * 1024 * 1024))  # far over: the server closes while the client still writes
    finally:
        await asyncio.to_thread(env.server.cli, "CONFIG", "SET", "proto-max-bulk-len", "512mb")


REDIS_CASES: dict[str, RedisCase] = {
    "url_wrong_scheme": RedisCase(ValueError, lambda e, r: _bad_redis_settings(f"http://:{PASSWORD}@h:1/0")),
    "url_bad_port": RedisCase(ValueError, lambda e, r: _bad_redis_settings(f"redis://:{PASSWORD}@h:port/0")),
    "url_bad_db": RedisCase(ValueError, lambda e, r: _bad_redis_settings(f"redis://:{PASSWORD}@h:1/zero")),
    "url_driver_retries": RedisCase(
        ConfigurationError, lambda e, r: _bad_redis_client(e, e.url() + "?retry_on_timeout=true")
    ),
    "url_decode_responses": RedisCase(
        ConfigurationError, lambda e, r: _bad_redis_client(e, e.url() + "?decode_responses=true")
    ),
    "wrong_password": RedisCase(rex.AuthenticationError, _wrong_redis_password),
    "unknown_host": RedisCase(rex.ConnectionError, lambda e, r: _redis_connect(e, f"redis://{UNKNOWN_HOST}/0")),
    "keys_and_values_with_spaces_newlines_nul_and_injection": RedisCase(None, _odd_keys),
    "non_utf8_values_and_destructive_read": RedisCase(None, _non_utf8_round_trip, "getdel"),
    "non_utf8_str_key": RedisCase(UnicodeEncodeError, lambda e, r: r.set("\udcff", b"v"), "set", sent=0),
    "oversized_value": RedisCase(rex.ResponseError, _oversized, "set", sent=0),  # refused while reading the request
    "wrong_type": RedisCase(rex.ResponseError, lambda e, r: r.lpush("value", b"x"), "lpush"),
    "incr_of_a_non_integer": RedisCase(rex.ResponseError, lambda e, r: r.incr("value"), "incr"),
    "xadd_invalid_id": RedisCase(rex.ResponseError, lambda e, r: r.xadd("s", {"f": 1}, id="0-0"), "xadd"),
    "xadd_bulk_invalid_message": RedisCase(
        ValueError, lambda e, r: r.xadd_bulk("s", [{"f": 1}, {}]), "evalsha", sent=0
    ),
    "set_zero_expiry": RedisCase(ValueError, lambda e, r: r.set("value", b"x", ex=0), "set", sent=0),
}


def _commandstats(info: str) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            calls[name] = int(stats.split("calls=", 1)[1].split(",", 1)[0])
    return calls


#: Cases that show a RedisClient bug (described in docs/reliability.md, "Known gaps"); strict: fixing it turns the
#: xfail into a failure that asks for the mark to go.
REDIS_KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=REDIS_KNOWN_BUGS[c]))
        if c in REDIS_KNOWN_BUGS
        else c
        for c in REDIS_CASES
    ],
)
async def test_redis_bad_input(secured_env: RedisEnv, otel: Otel, case: str) -> None:
    spec = REDIS_CASES[case]
    env = secured_env
    r = env.client(breaker={"fail_max": 1})
    await r.set("sentinel", b"\x00keep\xff")
    await r.set("value", b"not a number \xff")
    before = _commandstats(await asyncio.to_thread(env.server.cli, "INFO", "commandstats"))
    started = time.monotonic()
    error: BaseException | None = None
    if spec.expect is None:
        await spec.run(env, r)
    else:
        with pytest.raises(spec.expect) as info:
            await spec.run(env, r)
        error = info.value
    took = time.monotonic() - started
    after = _commandstats(await asyncio.to_thread(env.server.cli, "INFO", "commandstats"))
    assert took < spec.bound, f"{case}: {took:.3f} s"
    if error is not None:
        assert not isinstance(error, ServiceUnavailableError), f"{case}: {error!r} reads as an outage"
        for secret in (PASSWORD, REDIS_PASSWORD):
            assert secret not in str(error) + repr(error)
    if spec.command is not None:
        sent = after.get(spec.command, 0) - before.get(spec.command, 0)
        assert sent == spec.sent, f"the server got {spec.command} {sent} time(s), expected {spec.sent}"
    _no_retries(otel)
    _breaker_untouched(*env.clients)
    assert await r.get("sentinel") == b"\x00keep\xff"  # nothing destroyed
    if case != "non_utf8_values_and_destructive_read":
        assert await r.get("value") == b"not a number \xff"


async def test_redis_tls_against_a_plain_server_fails_fast_and_once(redis_env: RedisEnv, otel: Otel) -> None:
    url = redis_env.url().replace("redis://", "rediss://") + "?ssl_cert_reqs=none"
    client = redis_env.client(url=url, socket_connect_timeout=0.5, retry={"deadline": 5.0, "max_attempts": 5})
    started = time.monotonic()
    with pytest.raises((OSError, rex.RedisError)) as info:
        await client.connect()
    took = time.monotonic() - started
    assert isinstance(info.value, PlaintextServerError), repr(info.value)
    assert "redis://" in str(info.value)
    assert took < 0.5 + 0.25
    _no_retries(otel)
    _breaker_untouched(client)
