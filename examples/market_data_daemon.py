"""Long-running daemon: synthetic ticks -> Redis stream -> consumer group -> one-minute candles in PostgreSQL.

    POSTGRES_DSN=... REDIS_URL=... python examples/market_data_daemon.py --init-schema --prometheus-port 9464

Three tasks run under :func:`trading_shared.run_service` (SIGTERM/SIGINT stop it cleanly, exit code 0; a crash
exits 1):

* the **producer** appends batches of synthetic ticks with ``xadd_bulk`` (duplicate-free even when re-sent), one
  malformed "poison" tick every ``--poison-every`` ticks;
* the **consumer** reads the stream through a consumer group, folds ticks into candles (``candles.py``), upserts the
  changed candles (keyed by symbol + bucket, guarded by the last stream ID: re-running it changes nothing), moves
  poison entries to ``dlq:<stream>`` (``dead_letter_message``: copied once, then acknowledged), and only then
  acknowledges the rest. After a failure it re-reads its own pending
  entries first, so nothing is lost and nothing is counted twice;
* the **reporter** logs a progress line every ``--report-every`` seconds and writes ``--stats-file``.

Redis or PostgreSQL going away is survived: calls fail (fast, once a breaker is open), the tasks wait and retry,
and catch up when the server is back. With ``--duration`` the producer stops after that many seconds, the consumer
drains the stream, the daemon checks that every valid tick produced is in exactly one candle, and exits. ``--drain``
runs no producer: the consumer finishes what a previous run left (its pending entries first), then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from candles import Candle, CandleBook, CandleKey, PoisonMessage, parse_id, parse_tick

from trading_shared import (
    BulkWriteError,
    CircuitOpenError,
    PostgresClient,
    RedisClient,
    ServiceUnavailableError,
    run_service,
)
from trading_shared.redis import StreamEntry

HERE = Path(__file__).resolve().parent
#: A stream message as RedisClient takes it: field -> value.
Fields = dict[str | bytes, bytes | str | int | float]
_log = logging.getLogger("market_data")

UPSERT_CANDLE = """
INSERT INTO candles AS c (symbol, bucket, open, high, low, close, volume, trades, last_ms, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (symbol, bucket) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, trades = EXCLUDED.trades, last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq
WHERE (c.last_ms, c.last_seq) < (EXCLUDED.last_ms, EXCLUDED.last_seq)
"""
LOAD_CANDLES = """
SELECT symbol, bucket, open, high, low, close, volume, trades, last_ms, last_seq FROM candles
WHERE (symbol, bucket) IN (SELECT * FROM unnest($1::text[], $2::timestamptz[]))
"""


@dataclass
class Stats:
    """What the daemon did; written to ``--stats-file`` as JSON."""

    produced: int = 0  # ticks the stream certainly has (poison included)
    produced_poison: int = 0
    produce_unknown: int = 0  # outcome unknown after a failure: maybe in the stream
    produce_dropped: int = 0  # certainly not written (the feed moved on)
    consumed: int = 0  # entries read (replays included)
    folded: int = 0  # valid ticks folded into a candle, each counted once
    duplicates: int = 0  # redelivered ticks recognised and skipped
    dead_lettered: int = 0
    acked: int = 0
    candle_writes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)

    def error(self, where: str, exc: BaseException) -> None:
        """Count a failed call by task and error type."""
        key = f"{where}:{type(exc).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1


class Producer:
    """Synthetic random-walk ticks for a few symbols, appended in batches."""

    def __init__(self, redis: RedisClient, args: argparse.Namespace, stats: Stats, done: asyncio.Event) -> None:
        self.redis, self.args, self.stats, self.done = redis, args, stats, done
        self.prices = {f"SYM{i:02d}-PERP": 100.0 + 10 * i for i in range(args.symbols)}
        self.count = 0

    def batch(self, size: int) -> list[Fields]:
        """``size`` ticks; every ``--poison-every``-th one is malformed."""
        out: list[Fields] = []
        now = int(time.time() * 1000)
        for _ in range(size):
            self.count += 1
            symbol = random.choice(list(self.prices))
            self.prices[symbol] = max(0.01, self.prices[symbol] * (1 + random.gauss(0, 0.0005)))
            price: str = f"{self.prices[symbol]:.2f}"
            if self.args.poison_every and self.count % self.args.poison_every == 0:
                price = "not-a-price"
            out.append({"symbol": symbol, "price": price, "qty": f"{random.uniform(0.01, 2):.3f}", "ts_ms": now})
        return out

    async def run(self) -> None:
        """Append a batch every ``--batch-interval`` seconds until ``--duration`` (or forever)."""
        interval = self.args.batch_interval
        per_batch = max(1, round(self.args.rate * interval))
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        try:
            while deadline is None or time.monotonic() < deadline:
                started = time.monotonic()
                batch = self.batch(per_batch)
                poison = sum(1 for m in batch if m["price"] == "not-a-price")
                try:
                    self.stats.produced += await self.redis.xadd_bulk(self.args.stream, batch, self.args.maxlen)
                    self.stats.produced_poison += poison
                except BulkWriteError as exc:  # part written: the error says exactly which
                    self.stats.error("produce", exc)
                    unknown, missing = len(exc.outcome_unknown), len(exc.not_written)
                    self.stats.produced += len(batch) - unknown - missing
                    self.stats.produce_unknown += unknown
                    self.stats.produce_dropped += missing
                except ServiceUnavailableError as exc:  # nothing written (CircuitOpenError: failed fast)
                    self.stats.error("produce", exc)
                    self.stats.produce_dropped += len(batch)
                except asyncio.CancelledError:  # stopped mid-write (SIGTERM): some chunks may have landed
                    self.stats.produce_unknown += len(batch)
                    raise
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.done.set()
        _log.info("producer finished: %d ticks in the stream", self.stats.produced)


class Consumer:
    """Reads ticks through a consumer group and keeps candles in PostgreSQL up to date."""

    def __init__(
        self, pg: PostgresClient, redis: RedisClient, args: argparse.Namespace, stats: Stats, done: asyncio.Event
    ) -> None:
        self.pg, self.redis, self.args, self.stats, self.producer_done = pg, redis, args, stats, done
        self.finished = asyncio.Event()
        self.baseline = 0  # ticks already in the candles table when we started
        self.book = CandleBook(bucket_seconds=args.bucket_seconds)
        self.unacked: list[bytes] = []
        self.to_dead_letter: dict[bytes, tuple[StreamEntry, str]] = {}  # by ID: a replay re-reads it, once
        self.replaying = True  # first read our own pending entries (left by a previous run or a failure)

    async def run(self) -> None:
        """Consume until stopped (or, with ``--duration``, until the producer is done and the stream drained)."""
        if self.args.init_schema:
            await self.pg.execute((HERE / "data" / "schema.sql").read_text(), idempotent=True)
        await self.redis.ensure_consumer_group(self.args.stream, self.args.group)
        self.baseline = await self.ticks_in_candles()
        while True:
            try:
                await self.flush()
                drained = await self.step()
            except ServiceUnavailableError as exc:  # a ConnectionError: a server is away; wait, then carry on
                self.stats.error("consume", exc)
                self.replaying = True
                wait = min(getattr(exc, "retry_after", 0.0) or 0.5, 1.0) if isinstance(exc, CircuitOpenError) else 0.5
                await asyncio.sleep(wait)
                continue
            if drained and self.producer_done.is_set() and (self.args.duration or self.args.drain):
                await self.flush()
                if not self.args.drain:
                    await self.check()
                self.finished.set()
                return

    async def step(self) -> bool:
        """Read one batch and fold it in; True when there was nothing left to read."""
        entries = await self.redis.read_stream_messages(
            self.args.stream,
            self.args.group,
            self.args.consumer,
            count=self.args.read_count,
            start_id="0" if self.replaying else ">",
            block_ms=None if self.replaying else 500,
        )
        if not entries:
            if self.replaying:
                self.replaying = False
                return False
            return True
        self.stats.consumed += len(entries)
        # One CONSUMER span for the batch, linked to the producers' spans (their contexts travel in the entries):
        # the candle upsert and the acknowledgement below are its children, so a tick's trace leads to them.
        with self.redis.process_span(self.args.stream, self.args.group, entries):
            await self.fold(entries)
        return False

    async def fold(self, entries: list[StreamEntry]) -> None:
        """Fold a batch of entries into candles, then write and acknowledge (poison entries to the DLQ)."""
        ticks = []
        for entry in entries:
            try:
                ticks.append((parse_id(entry.id), parse_tick(entry.fields)))
            except PoisonMessage as exc:
                self.to_dead_letter[entry.id] = (entry, str(exc))  # acknowledged by dead_letter_message
            else:
                self.unacked.append(entry.id)
        await self.load({self.book.key(t) for _, t in ticks})
        for entry_id, tick in ticks:
            if self.book.fold(tick, entry_id):
                self.stats.folded += 1
            else:
                self.stats.duplicates += 1
        await self.flush()

    async def load(self, keys: set[CandleKey]) -> None:
        """Bring candles already in the database into memory before folding more ticks into them."""
        missing = self.book.missing(keys)
        if not missing:
            return
        symbols, buckets = zip(*missing, strict=True)
        for row in await self.pg.fetch(LOAD_CANDLES, list(symbols), list(buckets)):
            candle = self.book.candles.setdefault((row["symbol"], row["bucket"]), _candle_from_row(row))
            candle.last = max(candle.last, (row["last_ms"], row["last_seq"]))

    async def flush(self) -> None:
        """Dead-letter, write changed candles, then acknowledge: in that order, each step only once it is safe."""
        for entry_id, (entry, reason) in list(self.to_dead_letter.items()):  # copied (never twice), then acked
            await self.redis.dead_letter_message(self.args.stream, self.args.group, entry, reason=reason)
            self.stats.dead_lettered += 1
            self.stats.acked += 1
            del self.to_dead_letter[entry_id]
        if self.book.dirty:
            keys = sorted(self.book.dirty)
            rows = [_candle_row(key, self.book.candles[key]) for key in keys]
            await self.pg.executemany(UPSERT_CANDLE, rows, idempotent=True)  # keyed and guarded: safe to re-send
            self.stats.candle_writes += len(rows)
            self.book.dirty.difference_update(keys)
            self.book.evict()
        if self.unacked:
            self.stats.acked += await self.redis.acknowledge_message(self.args.stream, self.args.group, *self.unacked)
            self.unacked = []

    async def ticks_in_candles(self) -> int:
        """How many ticks the candles table holds."""
        return int(await self.pg.fetchval("SELECT coalesce(sum(trades), 0) FROM candles") or 0)

    async def check(self) -> None:
        """Every valid tick produced is in exactly one candle: lost = 0, duplicated = 0 (single writer assumed)."""
        in_candles = await self.ticks_in_candles() - self.baseline
        valid_low = self.stats.produced - self.stats.produced_poison
        valid_high = valid_low + self.stats.produce_unknown
        self.stats.check = {
            "ticks_in_candles": in_candles,
            "valid_ticks_produced": valid_low,
            "maybe_produced": self.stats.produce_unknown,
            "ok": valid_low <= in_candles <= valid_high,
        }
        log = _log.info if self.stats.check["ok"] else _log.error
        log(
            "check: %d ticks in candles, %d valid ticks produced (+%d of unknown outcome): %s",
            in_candles,
            valid_low,
            self.stats.produce_unknown,
            "OK" if self.stats.check["ok"] else "MISMATCH",
        )


def _candle_row(key: CandleKey, c: Candle) -> tuple[Any, ...]:
    return (*key, c.open, c.high, c.low, c.close, c.volume, c.trades, *c.last)


def _candle_from_row(row: Any) -> Candle:
    return Candle(
        row["open"],
        row["high"],
        row["low"],
        row["close"],
        row["volume"],
        row["trades"],
        (row["last_ms"], row["last_seq"]),
    )


class Reporter:
    """A progress line every ``--report-every`` seconds; the stats file kept up to date."""

    def __init__(self, clients: dict[str, Any], args: argparse.Namespace, stats: Stats, until: asyncio.Event):
        self.clients, self.args, self.stats, self.until = clients, args, stats, until

    async def run(self) -> None:
        """Report until ``until`` is set (the consumer finished) or the task is cancelled."""
        try:
            while not self.until.is_set():
                try:
                    await asyncio.wait_for(self.until.wait(), self.args.report_every)
                except TimeoutError:
                    self.report()
        finally:
            self.report()

    def report(self) -> None:
        """Log one line and rewrite the stats file."""
        s = self.stats
        s.breakers = {name: client.breaker.state.value for name, client in self.clients.items()}
        _log.info(
            "produced=%d consumed=%d folded=%d dup=%d dlq=%d acked=%d candle_writes=%d errors=%d breakers=%s",
            s.produced,
            s.consumed,
            s.folded,
            s.duplicates,
            s.dead_lettered,
            s.acked,
            s.candle_writes,
            sum(s.errors.values()),
            ",".join(f"{k}:{v}" for k, v in s.breakers.items()),
        )
        if self.args.stats_file:
            tmp = Path(f"{self.args.stats_file}.tmp")
            tmp.write_text(json.dumps(asdict(s), indent=2))
            tmp.replace(self.args.stats_file)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Ticks -> Redis stream -> consumer group -> candles in PostgreSQL.")
    p.add_argument("--duration", type=float, default=0, help="produce for this many seconds, drain, exit (0: forever)")
    p.add_argument("--drain", action="store_true", help="no producer: consume what is left, then exit")
    p.add_argument("--rate", type=float, default=500, help="ticks per second")
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--batch-interval", type=float, default=0.1, help="seconds between two appended batches")
    p.add_argument("--poison-every", type=int, default=1000, help="every N-th tick is malformed (0: none)")
    p.add_argument("--bucket-seconds", type=int, default=60)
    p.add_argument("--stream", default="market:ticks")
    p.add_argument("--group", default="candles")
    p.add_argument("--consumer", default="candles-1", help="stable per instance, so a restart resumes its pending")
    p.add_argument("--read-count", type=int, default=500)
    p.add_argument("--maxlen", type=int, default=1_000_000, help="approximate stream cap")
    p.add_argument("--init-schema", action="store_true", help="create the candles table first (idempotent)")
    p.add_argument("--prometheus-port", type=int, help="serve /metrics on this port (0: any free port)")
    p.add_argument("--report-every", type=float, default=1.0)
    p.add_argument("--stats-file", type=Path, help="keep a JSON copy of the stats here")
    p.add_argument("--spans-file", type=Path, help="also write every span here, one JSON object per line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Configure telemetry, build the clients, run the service; return its exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry = None
    if args.prometheus_port is not None or args.spans_file or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from telemetry_setup import setup_telemetry

        telemetry = setup_telemetry(
            "market-data-daemon", prometheus_port=args.prometheus_port, spans_file=args.spans_file
        )
        if telemetry.prometheus_port is not None:
            print(f"metrics: {telemetry.metrics_url}", flush=True)
    pg, redis = PostgresClient(), RedisClient()
    # Names the stream and group in telemetry (keys stay out of it unless declared) and exports the group's lag,
    # pending count and oldest pending age.
    redis.observe_stream(args.stream, args.group)
    stats, producer_done = Stats(), asyncio.Event()
    producer = Producer(redis, args, stats, producer_done)
    consumer = Consumer(pg, redis, args, stats, producer_done)
    reporter = Reporter({"postgres": pg, "redis": redis}, args, stats, consumer.finished)
    mains = [consumer.run, reporter.run] if args.drain else [producer.run, consumer.run, reporter.run]
    if args.drain:
        producer_done.set()
    try:
        code = run_service(mains, pg, redis, name="market-data")
    finally:
        if telemetry is not None:
            telemetry.shutdown()
    if stats.check and not stats.check["ok"]:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
