"""Contract tests: the SDK called exactly as the replaced client's PostgreSQL callers call it.

The callers are the original repository's ``repositories/*_repository.py`` (instrument, ohlc, order, trade, ticker,
universe, options, system, tradable_asset, hybrid_market_data). Each test makes one caller's calls -- the same SQL,
the same argument shapes, the same client methods, settings built with the old field names -- and checks the effect
through a separate plain asyncpg connection. The schema is a stand-in for the services' own (not published), with
the functions and composite types the callers' SQL names.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import SecretStr

from support.procs import free_port
from trading_shared import OutcomeUnknownError, PostgresClient, PostgresSettings, ServiceUnavailableError

SCHEMA = """
CREATE TABLE instruments (
    id serial PRIMARY KEY, exchange text NOT NULL, instrument_name text NOT NULL, instrument_kind text,
    market_type text, base_asset text, is_active boolean NOT NULL DEFAULT true, expiration_timestamp timestamptz,
    data jsonb NOT NULL, UNIQUE (exchange, instrument_name));
CREATE FUNCTION bulk_upsert_instruments(items jsonb[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO instruments (exchange, instrument_name, instrument_kind, market_type, base_asset, is_active,
                             expiration_timestamp, data)
    SELECT i->>'exchange', i->>'instrument_name', i->>'instrument_kind', i->>'market_type', i->>'base_asset',
           COALESCE((i->>'is_active')::boolean, true), (i->>'expiration_timestamp')::timestamptz, i
    FROM unnest(items) AS i
    ON CONFLICT (exchange, instrument_name) DO UPDATE SET instrument_kind = EXCLUDED.instrument_kind,
        market_type = EXCLUDED.market_type, base_asset = EXCLUDED.base_asset, is_active = EXCLUDED.is_active,
        expiration_timestamp = EXCLUDED.expiration_timestamp, data = EXCLUDED.data $$;
CREATE VIEW v_persistent_instruments AS SELECT instrument_name, exchange FROM instruments WHERE is_active;
CREATE TABLE tradable_assets (id serial PRIMARY KEY, spot_instrument_id int, linear_perp_instrument_id int,
                              is_active boolean NOT NULL DEFAULT true);

CREATE TYPE ohlc_upsert_type AS (exchange text, instrument_name text, resolution text, tick timestamptz,
    open float8, high float8, low float8, close float8, volume float8, open_interest float8,
    taker_buy_volume float8, taker_sell_volume float8);
CREATE TABLE ohlc (exchange text, instrument_name text, resolution text, tick timestamptz, open float8,
    high float8, low float8, close float8, volume float8, open_interest float8, taker_buy_volume float8,
    taker_sell_volume float8, PRIMARY KEY (exchange, instrument_name, resolution, tick));
CREATE FUNCTION bulk_upsert_ohlc(rows ohlc_upsert_type[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ohlc SELECT * FROM unnest(rows)
    ON CONFLICT (exchange, instrument_name, resolution, tick) DO UPDATE SET open = EXCLUDED.open,
        high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume $$;

CREATE TABLE orders (order_id text PRIMARY KEY, user_id text, trade_id text, instrument_name text,
                     amount numeric, exchange_timestamp timestamptz NOT NULL);
CREATE VIEW v_active_trades AS SELECT * FROM orders WHERE trade_id IS NOT NULL;
CREATE TYPE public_trade_insert_type AS (exchange text, instrument_name text, market_type text, trade_id text,
    price numeric, quantity numeric, is_buyer_maker boolean, was_best_price_match boolean,
    trade_timestamp timestamptz);
CREATE TABLE public_trades OF public_trade_insert_type (PRIMARY KEY (exchange, instrument_name, trade_id));
CREATE FUNCTION bulk_insert_public_trades(rows public_trade_insert_type[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public_trades SELECT * FROM unnest(rows) ON CONFLICT DO NOTHING $$;

CREATE TYPE option_trade_insert_type AS (exchange text, instrument_name text, tick timestamptz, price float8,
    quantity float8, iv float8, delta float8, gamma float8, vega float8, theta float8, rho float8,
    underlying_price float8);
CREATE TABLE options_data OF option_trade_insert_type;
CREATE FUNCTION bulk_insert_options_data(rows option_trade_insert_type[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO options_data SELECT * FROM unnest(rows) $$;

CREATE TABLE tickers (exchange text NOT NULL DEFAULT 'deribit', instrument_name text, last_price float8,
    mark_price float8, index_price float8, open_interest float8, best_bid_price float8, best_ask_price float8,
    data jsonb, exchange_timestamp timestamptz, recorded_at timestamptz, PRIMARY KEY (exchange, instrument_name));
CREATE TABLE system_metadata (key text PRIMARY KEY, value text NOT NULL);
"""

# The callers' DeprecationWarnings are expected; each test that triggers one says which.
DEPRECATED = r"is deprecated"


def old_settings(dsn: str, **extra: Any) -> PostgresSettings:
    """PostgresSettings as the services built the replaced model: parts and the old field names."""
    parts = urlsplit(dsn)
    fields: dict[str, Any] = {
        "user": parts.username or "postgres",
        "password": SecretStr("unused-with-trust-auth"),
        "host": parts.hostname,
        "port": parts.port,
        "db": parts.path.lstrip("/"),
        "pool_min_size": 1,
        "pool_max_size": 2,
        "command_timeout": 30,
        "max_retries": 3,
        "initial_retry_delay_s": 0.05,
        "connect_timeout": 1.0,
        **extra,
    }
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        return PostgresSettings(**fields)


@pytest.fixture
async def raw(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate plain asyncpg connection (no SDK, no codecs) with the schema, to check what a call did."""
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(SCHEMA)
    yield conn
    await conn.close()


@pytest.fixture
async def db(pg_dsn: str, raw: asyncpg.Connection) -> AsyncIterator[PostgresClient]:
    """The client a caller holds: built from old-style settings, used as ``async with`` (the old lifecycle)."""
    async with PostgresClient(old_settings(pg_dsn)) as client:
        yield client


def test_old_import_path_is_the_sdk_class_and_warns_once() -> None:
    sys.modules.pop("trading_shared.clients.postgres_client", None)
    with pytest.warns(DeprecationWarning, match="from trading_shared import PostgresClient") as caught:
        old = importlib.import_module("trading_shared.clients.postgres_client")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("trading_shared.clients.postgres_client")  # a second import: no second warning
    assert len(caught) == 1
    assert old.PostgresClient is PostgresClient


async def test_instrument_repository(db: PostgresClient, raw: asyncpg.Connection) -> None:
    # bulk_upsert: a model_dump() with datetimes, Decimals as the SDK now encodes them, exchange added by the caller
    expiry = datetime(2026, 12, 25, 8, tzinfo=UTC)
    dumped = [
        {
            "instrument_name": "BTC-25DEC26",
            "instrument_kind": "future",
            "market_type": "future",
            "base_asset": "BTC",
            "is_active": True,
            "expiration_timestamp": expiry,
            "tick_size": Decimal("0.5"),
            "listed": datetime(2026, 1, 1),
        },
        {
            "instrument_name": "BTC-PERPETUAL",
            "instrument_kind": "perpetual",
            "market_type": "perpetual",
            "base_asset": "BTC",
            "is_active": True,
            "expiration_timestamp": None,
        },
    ]
    payload = [{**inst, "exchange": "deribit"} for inst in dumped]
    assert await db.execute("SELECT bulk_upsert_instruments($1::jsonb[])", payload) == 1
    stored = await raw.fetch("SELECT instrument_name, expiration_timestamp, data::text FROM instruments ORDER BY id")
    assert [r["instrument_name"] for r in stored] == ["BTC-25DEC26", "BTC-PERPETUAL"]
    assert stored[0]["expiration_timestamp"] == expiry
    assert json.loads(stored[0]["data"]) == {
        "instrument_name": "BTC-25DEC26",
        "instrument_kind": "future",
        "market_type": "future",
        "base_asset": "BTC",
        "is_active": True,
        "expiration_timestamp": "2026-12-25T08:00:00+00:00",
        "tick_size": 0.5,
        "listed": "2026-01-01T00:00:00",
        "exchange": "deribit",
    }
    # the reads: fetch_all, fetch_by_exchange, fetch_by_criteria(**kwargs), find_instrument_by_name_and_kind,
    # get_furthest_active_future
    assert len(await db.fetch("SELECT * FROM public.instruments")) == 2
    assert len(await db.fetch("SELECT * FROM public.instruments WHERE exchange = $1", "deribit")) == 2
    by_criteria = await db.fetch(
        "SELECT * FROM public.instruments WHERE exchange = $1 AND is_active = $2 AND market_type = $3",
        *["deribit", True, "perpetual"],
    )
    assert [r["instrument_name"] for r in by_criteria] == ["BTC-PERPETUAL"]
    found = await db.fetchrow(
        "SELECT * FROM public.instruments WHERE exchange = $1 AND instrument_name = $2 AND instrument_kind = $3 "
        "LIMIT 1;",
        "deribit",
        "BTC-25DEC26",
        "future",
    )
    assert found is not None and found["data"]["exchange"] == "deribit"  # jsonb read back as Python objects
    furthest = await db.fetchrow(
        "SELECT instrument_name FROM public.instruments WHERE base_asset = $1 AND market_type = 'future' "
        "AND is_active = TRUE ORDER BY expiration_timestamp DESC LIMIT 1;",
        "BTC",
    )
    assert furthest is not None and furthest["instrument_name"] == "BTC-25DEC26"


async def test_ohlc_repository(db: PostgresClient, raw: asyncpg.Connection) -> None:
    tick = datetime.fromtimestamp(1_767_225_600_000 / 1000, tz=UTC)
    candles = [
        ("binance", "BTCUSDT", "1", tick + timedelta(minutes=i), 1.0 + i, 2.0, 0.5, 1.5, 10.0, 0.0, 6.0, 4.0)
        for i in range(3)
    ]
    await db.execute("SELECT bulk_upsert_ohlc($1::ohlc_upsert_type[])", candles)
    await db.execute("SELECT bulk_upsert_ohlc($1::ohlc_upsert_type[])", [(*candles[0][:4], 9.0, *candles[0][5:])])
    assert await raw.fetchval("SELECT count(*) FROM ohlc") == 3
    assert await raw.fetchval("SELECT open FROM ohlc WHERE tick = $1", tick) == 9.0
    latest = await db.fetchrow(
        "SELECT MAX(tick) AS latest_tick FROM ohlc WHERE exchange = $1 AND instrument_name = $2 AND resolution = $3",
        "binance",
        "BTCUSDT",
        "1",
    )
    assert latest is not None and latest["latest_tick"] == tick + timedelta(minutes=2)
    recent = await db.fetch(
        "SELECT * FROM ohlc WHERE exchange = $1 AND instrument_name = $2 AND resolution = $3 ORDER BY tick DESC "
        "LIMIT $4",
        "binance",
        "BTCUSDT",
        "1",
        2,
    )
    assert [r["tick"] for r in recent] == [tick + timedelta(minutes=2), tick + timedelta(minutes=1)]
    one = await db.fetchrow(
        "SELECT * FROM ohlc WHERE instrument_name = $1 AND resolution = $2 ORDER BY tick DESC LIMIT 1;", "BTCUSDT", "1"
    )
    assert one is not None and one["close"] == 1.5


async def test_hybrid_market_data_repository_reads_candles_from_postgres(
    db: PostgresClient, raw: asyncpg.Connection
) -> None:
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    await raw.execute("INSERT INTO ohlc VALUES ('binance', 'ETHUSDT', '1m', $1, 1, 2, 0.5, 1.5, 10, 0, 6, 4)", tick)
    records = await db.fetch(
        """
        SELECT exchange, instrument_name, resolution, extract(epoch from tick) * 1000 as tick,
               "open", high, low, "close", volume, taker_buy_volume, taker_sell_volume
        FROM ohlc WHERE exchange = $1 AND instrument_name = $2 AND resolution = '1m' ORDER BY tick DESC LIMIT $3
        """,
        "binance",
        "ETHUSDT",
        60,
    )
    history = [dict(r) for r in reversed(records)]
    assert history[0]["tick"] == Decimal(int(tick.timestamp() * 1000))
    assert history[0]["volume"] == 10.0


async def test_order_and_trade_repositories(db: PostgresClient, raw: asyncpg.Connection) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    await raw.executemany(
        "INSERT INTO orders VALUES ($1, $2, $3, 'BTC-PERPETUAL', 1, $4)",
        [("o1", "u1", None, at), ("o2", "u2", None, at + timedelta(seconds=1)), ("o3", "u1", "t3", at)],
    )
    # OrderRepository.fetch_open_orders, without and with a user
    assert [
        r["order_id"] for r in await db.fetch("SELECT * FROM orders WHERE trade_id IS NULL ORDER BY exchange_timestamp")
    ] == ["o1", "o2"]
    mine = await db.fetch(
        "SELECT * FROM orders WHERE trade_id IS NULL AND user_id = $1 ORDER BY exchange_timestamp", *["u1"]
    )
    assert [r["order_id"] for r in mine] == ["o1"]
    # TradeRepository.fetch_active_trades, without and with a user
    assert [r["order_id"] for r in await db.fetch("SELECT * FROM v_active_trades")] == ["o3"]
    assert await db.fetch("SELECT * FROM v_active_trades WHERE user_id = $1", "u2") == []
    # TradeRepository.bulk_insert_public: a list of tuples for a composite-type array, Decimal and bool fields
    trades = [
        ("binance", "BTCUSDT", "spot", f"T{i}", Decimal("64000.5"), Decimal("0.01"), i % 2 == 0, True, at)
        for i in range(3)
    ]
    await db.execute("\n            SELECT bulk_insert_public_trades($1::public_trade_insert_type[])\n        ", trades)
    await db.execute("SELECT bulk_insert_public_trades($1::public_trade_insert_type[])", trades[:1])  # duplicate
    rows = await raw.fetch("SELECT trade_id, price, is_buyer_maker FROM public_trades ORDER BY trade_id")
    assert [tuple(r) for r in rows] == [
        ("T0", Decimal("64000.5"), True),
        ("T1", Decimal("64000.5"), False),
        ("T2", Decimal("64000.5"), True),
    ]


async def test_options_repository(db: PostgresClient, raw: asyncpg.Connection) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        ("deribit", "BTC-27MAR26-70000-C", at, 0.05, 1.0, 0.55, 0.4, None, None, None, None, 64000.0),
        ("deribit", "BTC-27MAR26-70000-P", at, 0.07, 2.0, None, None, None, None, None, None, None),
    ]
    await db.execute("\n            SELECT bulk_insert_options_data($1::option_trade_insert_type[])\n        ", rows)
    got = await raw.fetch("SELECT instrument_name, iv, underlying_price FROM options_data ORDER BY instrument_name")
    assert [tuple(r) for r in got] == [("BTC-27MAR26-70000-C", 0.55, 64000.0), ("BTC-27MAR26-70000-P", None, None)]


async def test_system_repository_bootstrap_status(db: PostgresClient, raw: asyncpg.Connection) -> None:
    query = "SELECT value FROM system_metadata WHERE key = $1"
    assert await db.fetchval(query, "bootstrap_status:deribit") is None
    upsert = """
        INSERT INTO system_metadata (key, value) VALUES ($1, $2)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
    """
    assert await db.execute(upsert, "bootstrap_status:deribit", "incomplete") == 1  # the old int return shape
    assert await db.execute(upsert, "bootstrap_status:deribit", "complete") == 1
    assert await db.fetchval(query, "bootstrap_status:deribit") == "complete"
    assert await raw.fetchval("SELECT value FROM system_metadata WHERE key = 'bootstrap_status:deribit'") == "complete"


async def test_universe_and_tradable_asset_repositories(db: PostgresClient, raw: asyncpg.Connection) -> None:
    ids = [
        await raw.fetchval(
            "INSERT INTO instruments (exchange, instrument_name, data) VALUES ($1, $2, '{}') RETURNING id",
            exchange,
            name,
        )
        for exchange, name in [("binance", "BTCUSDT"), ("binance", "BTCUSDT-PERP"), ("deribit", "ETH-PERPETUAL")]
    ]
    await raw.execute(
        "INSERT INTO tradable_assets (spot_instrument_id, linear_perp_instrument_id) VALUES ($1, $2)", ids[0], ids[1]
    )
    persistent = await db.fetch(
        "\n        SELECT instrument_name\n        FROM v_persistent_instruments\n"
        "        WHERE exchange = $1\n        ",
        "binance",
    )
    assert sorted(r["instrument_name"] for r in persistent) == ["BTCUSDT", "BTCUSDT-PERP"]
    everything = [dict(r) for r in await db.fetch("SELECT instrument_name, exchange FROM v_persistent_instruments")]
    assert {"instrument_name": "ETH-PERPETUAL", "exchange": "deribit"} in everything
    records = await db.fetch(
        """
        SELECT spot.exchange AS exchange, spot.instrument_name AS instrument
        FROM tradable_assets ta JOIN instruments spot ON ta.spot_instrument_id = spot.id
        WHERE ta.is_active = TRUE AND spot.is_active = TRUE
        UNION
        SELECT perp.exchange AS exchange, perp.instrument_name AS instrument
        FROM tradable_assets ta JOIN instruments perp ON ta.linear_perp_instrument_id = perp.id
        WHERE ta.is_active = TRUE AND perp.is_active = TRUE;
        """
    )
    assert sorted((r["exchange"], r["instrument"]) for r in records) == [
        ("binance", "BTCUSDT"),
        ("binance", "BTCUSDT-PERP"),
    ]


async def test_ticker_repository_bulk_upsert_fails_on_its_own_sql_bug(
    db: PostgresClient, raw: asyncpg.Connection
) -> None:
    """The original TickerRepository.bulk_upsert names 11 columns for 10 values (and passes each record as a separate
    argument): PostgreSQL rejects it on the replaced client too. Not worked around: the caller's error reaches it as
    asyncpg's own exception, once, and nothing is written."""
    ticker = {"instrument_name": "BTC-PERPETUAL", "last_price": 64000.0, "exchange_timestamp": 1_767_225_600_000}
    record = (
        "BTC-PERPETUAL",
        64000.0,
        None,
        None,
        None,
        None,
        None,
        ticker,
        datetime.fromtimestamp(ticker["exchange_timestamp"] / 1000, tz=UTC),
    )
    query = """
        INSERT INTO tickers (
            exchange, instrument_name, last_price, mark_price, index_price, open_interest,
            best_bid_price, best_ask_price, data, exchange_timestamp, recorded_at
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NOW())
        ON CONFLICT (exchange, instrument_name) DO UPDATE SET
            last_price = EXCLUDED.last_price, data = EXCLUDED.data, recorded_at = NOW();
    """
    with pytest.raises(asyncpg.PostgresSyntaxError, match="more target columns than expressions"):
        await db.execute(query, *[record])
    assert await raw.fetchval("SELECT count(*) FROM tickers") == 0


async def test_execute_resiliently_and_ensure_pool_is_ready_keep_the_old_shapes(
    db: PostgresClient, raw: asyncpg.Connection
) -> None:
    async def command(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        await conn.execute("INSERT INTO system_metadata VALUES ('k', 'v')")
        return await conn.fetch("SELECT key, value FROM system_metadata")

    with pytest.warns(DeprecationWarning, match=r"execute_resiliently\(\) is deprecated; use run\("):
        rows = await db.execute_resiliently(command, "insert_and_read")
    assert [tuple(r) for r in rows] == [("k", "v")]
    with pytest.warns(DeprecationWarning, match=r"ensure_pool_is_ready\(\) is deprecated; use connect\(\)"):
        pool = await db.ensure_pool_is_ready()
    assert isinstance(pool, asyncpg.Pool)
    async with pool.acquire() as conn:  # the raw pool, as callers of the old method used it
        assert await conn.fetchval("SELECT value FROM system_metadata") == "v"
    with pytest.warns(DeprecationWarning, match=r"postgres_settings is deprecated; use settings"):
        assert db.postgres_settings is db.settings
    with pytest.warns(DeprecationWarning, match=r"dsn is deprecated"):
        assert db.dsn.startswith("postgresql://")
    assert await raw.fetchval("SELECT count(*) FROM system_metadata") == 1


async def test_execute_resiliently_re_runs_a_callback_only_when_told_it_is_idempotent(
    db: PostgresClient, raw: asyncpg.Connection
) -> None:
    """The replaced client re-ran any callback after a connection error, writes included; the SDK re-runs it only
    when the caller says it is idempotent, and otherwise says the outcome is unknown (the write did land)."""
    runs = 0

    async def insert_then_lose_the_connection(conn: asyncpg.Connection) -> str:
        nonlocal runs
        runs += 1
        await conn.execute("INSERT INTO system_metadata VALUES ('once', 'x') ON CONFLICT DO NOTHING")
        if runs == 1:
            await raw.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await conn.fetchval("SELECT 1")
        return "done"

    with pytest.warns(DeprecationWarning, match=DEPRECATED), pytest.raises(OutcomeUnknownError) as info:
        await db.execute_resiliently(insert_then_lose_the_connection, "write")
    assert isinstance(info.value, ConnectionError) and runs == 1
    assert await raw.fetchval("SELECT count(*) FROM system_metadata") == 1  # applied: hence "unknown", not "failed"
    runs = 0
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        assert await db.execute_resiliently(insert_then_lose_the_connection, "write", idempotent=True) == "done"
    assert runs == 2


async def test_no_compatibility_method_swallows_a_caller_error(db: PostgresClient) -> None:
    async def bad_sql(conn: asyncpg.Connection) -> Any:
        return await conn.fetch("SELECT * FROM no_such_table")

    async def bad_code(conn: asyncpg.Connection) -> Any:
        raise KeyError("instrument_name")

    with pytest.warns(DeprecationWarning, match=DEPRECATED), pytest.raises(asyncpg.UndefinedTableError):
        await db.execute_resiliently(bad_sql, "bad_sql")
    with pytest.warns(DeprecationWarning, match=DEPRECATED), pytest.raises(KeyError):
        await db.execute_resiliently(bad_code, "bad_code")
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.execute("DELETE FROM no_such_table")
    for read in (db.fetch, db.fetchrow, db.fetchval):
        with pytest.raises(asyncpg.UndefinedTableError):
            await read("SELECT * FROM no_such_table WHERE id = $1", 1)
    with pytest.raises(asyncpg.DataError):  # a value no codec can encode: the caller's error, not a retry
        await db.execute("SELECT bulk_upsert_instruments($1::jsonb[])", [{"bad": {1, 2}}])
    assert db.breaker.state.value == "closed"


async def test_no_compatibility_method_swallows_an_infrastructure_failure() -> None:
    nothing_listens = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    fast = {
        "max_retries": 2,
        "initial_retry_delay_s": 0.01,
        "retry": {"max_backoff": 0.02, "jitter": 0.0},
        "breaker": {"fail_max": 100},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        settings = old_settings(nothing_listens, **fast)
        db = PostgresClient(settings)
        calls = {
            "execute_resiliently": lambda: db.execute_resiliently(lambda c: c.fetchval("SELECT 1"), "probe"),
            "ensure_pool_is_ready": db.ensure_pool_is_ready,
            "execute": lambda: db.execute("SELECT 1"),
            "fetch": lambda: db.fetch("SELECT 1"),
            "fetchrow": lambda: db.fetchrow("SELECT 1"),
            "fetchval": lambda: db.fetchval("SELECT 1"),
        }
        try:
            for name, call in calls.items():
                with pytest.raises(ServiceUnavailableError) as info:
                    await asyncio.wait_for(call(), 10)
                assert isinstance(info.value, ConnectionError), name  # what the replaced client raised
                assert isinstance(info.value.__cause__, OSError), name
        finally:
            await db.close()
