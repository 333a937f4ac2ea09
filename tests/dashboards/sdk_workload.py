"""A process that uses the real SDK and exposes its metrics to Prometheus, for the end-to-end dashboard test.

Run as ``python sdk_workload.py --port 9464 --pg-dsn postgresql://... --redis-url redis://...``: it configures
OpenTelemetry the way an application does (a global MeterProvider with ``PrometheusMetricReader``, and
``prometheus_client.start_http_server`` on 127.0.0.1), then drives a PostgresClient and a RedisClient with a steady
workload until its stdin closes, it gets SIGTERM/SIGINT, or ``--max-seconds`` pass. It prints ``READY`` once both
clients are connected and their first calls succeeded.

The workload gives every dashboard panel something to show:

* PostgreSQL (``orders-pg``, a pool of 2): reads, idempotent upserts and transactions all the time, and every
  ``--hog-every`` seconds two slow statements that hold both connections while the other callers wait for one
  (pending requests) and give up after ``acquire_timeout`` (acquire timeouts). The period (1.3 s) is not a multiple
  of the 1 s scrape interval, so these moments drift across the scrapes: a scrape sees callers waiting at least
  once every four periods (a period of 1 s could miss them at every scrape).
* Redis (``quotes-redis``): SET/GET all the time, bulk stream appends read by the consumer group ``candles`` (each
  entry in a ``process`` span, every entry acknowledged), and every
  ``--dead-letter-every`` seconds a poison message read through a consumer group and moved to ``dlq:<stream>`` with
  ``dead_letter_message``. Both streams and groups are declared (``telemetry_streams``): their health is exported.
* With ``--orders-stream``: a producer appending to ``e2e:orders`` (20 entries/s) and a consumer of its group
  ``booking`` that reads and acknowledges everything every 0.1 s; the client observes the group too. SIGUSR1 stalls
  the consumer: it takes one more batch and holds it unacknowledged, reading nothing more; SIGUSR2 resumes it (it
  acknowledges what it held and reads on). With ``--duplicate-every``: an INSERT that violates the primary key
  (a caller error, for the errors-by-statement panel).

Breakers and retries are short (fail_max 3, reset_timeout 1 s, 3 attempts within a 1 s deadline) so that stopping a
server opens a breaker within a second and recovery closes it within a second. Failed calls are counted, never
raised: the workload keeps going through outages, as a service would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from trading_shared import (
    BreakerSettings,
    BulkWriteError,
    PostgresClient,
    PostgresSettings,
    RedisClient,
    RedisSettings,
    RetrySettings,
    TradingSharedError,
)

PG_CLIENT = "orders-pg"  # defaults of --pg-name / --redis-name
REDIS_CLIENT = "quotes-redis"
POISON_STREAM = "e2e:poison"
TICKS_STREAM = "e2e:ticks"
ORDERS_STREAM, ORDERS_GROUP = "e2e:orders", "booking"

RETRY = RetrySettings(max_attempts=3, initial_backoff=0.05, max_backoff=0.2, jitter=0.05, deadline=1.0)
BREAKER = BreakerSettings(fail_max=3, reset_timeout=1.0)

_log = logging.getLogger("sdk_workload")


def _settings(args: argparse.Namespace) -> tuple[PostgresSettings, RedisSettings]:
    pg = PostgresSettings(
        name=args.pg_name,
        dsn=args.pg_dsn,
        min_size=1,
        max_size=2,
        acquire_timeout=0.2,
        connect_timeout=0.5,
        command_timeout=2.0,
        retry=RETRY,
        breaker=BREAKER,
    )
    redis = RedisSettings(
        name=args.redis_name,
        url=args.redis_url,
        max_connections=8,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=RETRY,
        breaker=BREAKER,
        telemetry_streams=[
            f"{TICKS_STREAM}=candles",
            f"{POISON_STREAM}=e2e",
            *([f"{ORDERS_STREAM}={ORDERS_GROUP}"] if args.orders_stream else []),
        ],
    )
    return pg, redis


class Workload:
    """The loops; ``outcomes`` counts results by (loop, outcome) for the log at exit."""

    def __init__(self, pg: PostgresClient, redis: RedisClient, args: argparse.Namespace) -> None:
        self.pg = pg
        self.redis = redis
        self.args = args
        self.outcomes: Counter[tuple[str, str]] = Counter()
        #: Set while the orders consumer runs; cleared by SIGUSR1 (stall), set again by SIGUSR2 (resume).
        self.consuming = asyncio.Event()
        self.consuming.set()
        self._unacked: list[bytes] = []

    async def _guard(self, loop: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except BulkWriteError as exc:
            self.outcomes[(loop, f"BulkWriteError({len(exc.dead_lettered)} dead-lettered)")] += 1
        except (TradingSharedError, ConnectionError, OSError, TimeoutError) as exc:
            self.outcomes[(loop, type(exc).__name__)] += 1
        else:
            self.outcomes[(loop, "ok")] += 1

    async def _every(self, loop: str, seconds: float, call: Callable[[], Awaitable[object]]) -> None:
        while True:
            started = time.monotonic()
            await self._guard(loop, call)
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))

    # -- PostgreSQL --------------------------------------------------------------------------------------------------
    async def _pg_read(self) -> None:
        await self.pg.fetchval("SELECT $1::int", 1)

    async def _pg_write(self) -> None:
        await self.pg.execute(
            "INSERT INTO e2e_ticks (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
            int(time.monotonic() * 10) % 100,
            1,
            idempotent=True,
        )

    async def _pg_transaction(self) -> None:
        async def body(conn: asyncpg.Connection) -> None:
            await conn.execute("UPDATE e2e_ticks SET v = v + 1 WHERE id = $1", 0)

        await self.pg.transaction(body, idempotent=True)

    async def _pg_duplicate(self) -> None:
        """A caller error: the same primary key inserted again (UniqueViolationError, never retried)."""
        with contextlib.suppress(asyncpg.UniqueViolationError):
            await self.pg.execute("INSERT INTO e2e_ticks (id, v) VALUES ($1, $2)", 1000, 1)

    async def _pg_hog(self) -> None:
        """Hold both pooled connections for a while: the other callers wait, then time out."""

        async def hog() -> None:
            await self.pg.run("hog", lambda c: c.execute("SELECT pg_sleep($1)", self.args.hog_seconds), True)

        await asyncio.gather(hog(), hog())

    # -- Redis -------------------------------------------------------------------------------------------------------
    async def _redis_kv(self) -> None:
        await self.redis.set("e2e:quote", b"101.25")
        await self.redis.get("e2e:quote")

    async def _redis_stream(self) -> None:
        await self.redis.xadd_bulk(TICKS_STREAM, [{"px": 101.25, "qty": i} for i in range(20)], maxlen=1000)

    async def _redis_consume(self) -> None:
        await self.redis.ensure_consumer_group(TICKS_STREAM, "candles")
        entries = await self.redis.read_stream_messages(TICKS_STREAM, "candles", "worker", count=20)
        with self.redis.process_span(TICKS_STREAM, "candles", entries):
            ids = [e.id for e in entries]
        # All acknowledged: an entry left pending for good is a stuck consumer, which pages
        # (TradingSharedStreamPendingStuck); test_stream_alerts_e2e.py stalls a consumer on purpose.
        await self.redis.acknowledge_message(TICKS_STREAM, "candles", *ids)

    async def _redis_dead_letter(self) -> None:
        # A consumer meets a poison message and dead-letters it (copy to dlq:<stream>, acknowledge, count).
        # The group is (re)created first: after a Redis restart (no persistence) the stream is gone.
        await self.redis.ensure_consumer_group(POISON_STREAM, "e2e")
        await self.redis.xadd(POISON_STREAM, {"px": "not-a-price"})
        for entry in await self.redis.read_stream_messages(POISON_STREAM, "e2e", "worker", count=10):
            await self.redis.dead_letter_message(POISON_STREAM, "e2e", entry, reason="unparsable price")

    async def _produce_order(self) -> None:
        await self.redis.xadd(ORDERS_STREAM, {"px": "101.25", "qty": "5"}, maxlen=10_000)

    async def _consume_orders(self) -> None:
        """Acknowledge what an earlier round could not (a failed XACK), then read and acknowledge a batch; when
        stalled, take one batch more and hold it until resumed."""
        if self._unacked:
            await self.redis.acknowledge_message(ORDERS_STREAM, ORDERS_GROUP, *self._unacked)
            self._unacked = []
        await self.redis.ensure_consumer_group(ORDERS_STREAM, ORDERS_GROUP)
        stalled = not self.consuming.is_set()
        entries = await self.redis.read_stream_messages(ORDERS_STREAM, ORDERS_GROUP, "booker-1", count=100)
        self._unacked = [bytes(e.id) for e in entries]
        if stalled and entries:
            _log.warning("orders consumer stalled, holding %d entries", len(entries))
            await self.consuming.wait()
        if self._unacked:
            await self.redis.acknowledge_message(ORDERS_STREAM, ORDERS_GROUP, *self._unacked)
            self._unacked = []

    async def run(self) -> None:
        """Run every loop until cancelled."""
        a = self.args
        loops = [
            self._every("pg_read", 0.02, self._pg_read),
            self._every("pg_write", 0.05, self._pg_write),
            self._every("pg_transaction", 0.2, self._pg_transaction),
            self._every("pg_hog", a.hog_every, self._pg_hog),
            self._every("redis_kv", 0.02, self._redis_kv),
            self._every("redis_stream", 0.5, self._redis_stream),
            self._every("redis_consume", 0.5, self._redis_consume),
            self._every("redis_dead_letter", a.dead_letter_every, self._redis_dead_letter),
        ]
        if a.orders_stream:
            loops += [
                self._every("orders_produce", 0.05, self._produce_order),
                self._every("orders_consume", 0.1, self._consume_orders),
            ]
        if a.duplicate_every > 0:
            loops.append(self._every("pg_duplicate", a.duplicate_every, self._pg_duplicate))
        async with asyncio.TaskGroup() as group:
            for loop in loops:
                group.create_task(loop)


async def _stdin_closed() -> None:
    """Return when stdin reaches EOF (the parent test died or closed the pipe)."""
    done = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts the interpreter at exit.
        with contextlib.suppress(OSError):
            while os.read(0, 1024):
                pass
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    await done


async def main_async(args: argparse.Namespace) -> int:
    """Set up telemetry and the clients, run the workload until told to stop, close everything (bounded)."""
    provider = MeterProvider(
        resource=Resource.create({"service.name": "sdk-e2e-workload"}), metric_readers=[PrometheusMetricReader()]
    )
    metrics.set_meter_provider(provider)  # as an application does; the SDK picks up the global provider
    server, thread = start_http_server(args.port, addr="127.0.0.1")
    pg_settings, redis_settings = _settings(args)
    pg, redis = PostgresClient(pg_settings), RedisClient(redis_settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workload = Workload(pg, redis, args)
    loop.add_signal_handler(signal.SIGUSR1, workload.consuming.clear)
    loop.add_signal_handler(signal.SIGUSR2, workload.consuming.set)
    try:
        await pg.connect()
        await redis.connect()
        await pg.execute("CREATE TABLE IF NOT EXISTS e2e_ticks (id int PRIMARY KEY, v bigint NOT NULL)")
        await redis.set("e2e:quote", b"100")
        print(f"READY {server.server_port}", flush=True)
        running = asyncio.create_task(workload.run())
        waiters = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(_stdin_closed()),
            asyncio.create_task(asyncio.sleep(args.max_seconds)),
        ]
        await asyncio.wait([running, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task in (running, *waiters):
            task.cancel()
        results = await asyncio.gather(running, *waiters, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failed:
            raise failed[0]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(pg.close(2.0), redis.close(2.0)), 5.0)
        summary = ", ".join(f"{loop}:{outcome}={n}" for (loop, outcome), n in sorted(workload.outcomes.items()))
        _log.warning("outcomes: %s", summary)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port of /metrics on 127.0.0.1 (0: any free port)")
    parser.add_argument("--pg-dsn", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--pg-name", default=PG_CLIENT, help="the PostgresClient's pool name in telemetry")
    parser.add_argument("--redis-name", default=REDIS_CLIENT, help="the RedisClient's pool name in telemetry")
    parser.add_argument("--hog-every", type=float, default=1.3, help="seconds between pool-exhaustion moments")
    parser.add_argument("--hog-seconds", type=float, default=0.45, help="how long each hog holds a connection")
    parser.add_argument("--dead-letter-every", type=float, default=2.0, help="seconds between dead-lettered writes")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="exit after this long whatever happens")
    parser.add_argument("--orders-stream", action="store_true", help="produce to and consume an observed stream")
    parser.add_argument("--duplicate-every", type=float, default=0.0, help="seconds between duplicate-key INSERTs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
