"""Candle aggregation for the market-data daemon: pure logic, no I/O.

A tick is a stream entry ``{symbol, price, qty, ts_ms}``. Ticks fold into one candle per symbol and time bucket.
Each candle remembers the stream ID of the last tick folded in, so a tick delivered twice (a redelivery after a
crash, a replay of pending entries) is recognised and skipped: counted exactly once, whatever the retries. This
relies on one consumer reading a stream in ID order (shard streams by symbol to scale out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

StreamId = tuple[int, int]
CandleKey = tuple[str, datetime]


class PoisonMessage(ValueError):
    """An entry that can never be processed (missing or malformed fields): it goes to the dead-letter stream."""


@dataclass(frozen=True, slots=True)
class Tick:
    """One trade."""

    symbol: str
    price: Decimal
    qty: Decimal
    ts_ms: int


def parse_id(entry_id: bytes | str) -> StreamId:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)`` (comparable in stream order)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def parse_tick(fields: dict[bytes, bytes]) -> Tick:
    """A tick from an entry's fields; :class:`PoisonMessage` when it is not one."""
    try:
        symbol = fields[b"symbol"].decode()
        price = Decimal(fields[b"price"].decode())
        qty = Decimal(fields[b"qty"].decode())
        ts_ms = int(fields[b"ts_ms"])
    except KeyError as exc:
        raise PoisonMessage(f"missing field {exc.args[0]!r}") from None
    except (UnicodeDecodeError, InvalidOperation, ValueError) as exc:
        raise PoisonMessage(f"malformed field: {type(exc).__name__}") from None
    if not symbol or not price.is_finite() or price <= 0 or not qty.is_finite() or qty <= 0:
        raise PoisonMessage("symbol empty, or price/qty not a positive number")
    return Tick(symbol, price, qty, ts_ms)


@dataclass(slots=True)
class Candle:
    """OHLCV of one symbol in one bucket, and the last stream ID folded in."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    last: StreamId

    @classmethod
    def first(cls, tick: Tick, entry: StreamId) -> Candle:
        """A candle made of one tick."""
        return cls(tick.price, tick.price, tick.price, tick.price, tick.qty, 1, entry)

    def fold(self, tick: Tick, entry: StreamId) -> bool:
        """Add a tick; False (nothing changed) when this entry was already folded in."""
        if entry <= self.last:
            return False
        self.high = max(self.high, tick.price)
        self.low = min(self.low, tick.price)
        self.close = tick.price
        self.volume += tick.qty
        self.trades += 1
        self.last = entry
        return True


@dataclass
class CandleBook:
    """The candles being built, which of them changed since the last write, and a bound on memory."""

    bucket_seconds: int = 60
    keep_buckets: int = 3
    candles: dict[CandleKey, Candle] = field(default_factory=dict)
    dirty: set[CandleKey] = field(default_factory=set)

    def key(self, tick: Tick) -> CandleKey:
        """The candle a tick belongs to."""
        start = math.floor(tick.ts_ms / 1000 / self.bucket_seconds) * self.bucket_seconds
        return tick.symbol, datetime.fromtimestamp(start, UTC)

    def missing(self, keys: set[CandleKey]) -> set[CandleKey]:
        """Keys not in memory: load them from the database before folding ticks into them."""
        return keys - self.candles.keys()

    def fold(self, tick: Tick, entry: StreamId) -> bool:
        """Fold one tick in (its candle must be loaded or new); False for a duplicate."""
        key = self.key(tick)
        candle = self.candles.get(key)
        if candle is None:
            self.candles[key] = Candle.first(tick, entry)
        elif not candle.fold(tick, entry):
            return False
        self.dirty.add(key)
        return True

    def evict(self) -> None:
        """Forget clean candles older than ``keep_buckets`` buckets before the newest one."""
        if not self.candles:
            return
        newest = max(bucket for _, bucket in self.candles)
        horizon = newest.timestamp() - self.keep_buckets * self.bucket_seconds
        for key in [k for k in self.candles if k[1].timestamp() < horizon and k not in self.dirty]:
            del self.candles[key]


__all__ = ["Candle", "CandleBook", "CandleKey", "PoisonMessage", "StreamId", "Tick", "parse_id", "parse_tick"]
