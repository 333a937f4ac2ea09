"""RedisClient: redis.asyncio behind the SDK's resilient, instrumented pipeline."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
import redis.asyncio.client as rclient
import redis.exceptions as rex
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ..errors import CircuitOpenError, TradingSharedError
from ..resilience.breaker import CircuitBreaker
from ..resilience.deadline import enclosing_deadline
from ..resilience.faults import PartlyApplied, RequestNotSent
from ..resilience.pipeline import Pipeline
from ..settings import RedisSettings
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from . import streams
from .bracketed import CommandSet, Wait
from .bulk import BulkAppender
from .classify import ConnectFailed, RedisErrors, error_code
from .cluster import ClusterRouter, slot_of
from .connection import SENT, not_sent
from .endpoints import Endpoints, Router
from .pipelines import run_cluster_pipeline
from .pool import BLOCK_SECONDS, Commands, Pools, connection_kwargs
from .routing import routed_attempt
from .sentinel import SentinelRouter
from .streams import ClaimResult, Fields, StreamEntry

T = TypeVar("T")
Key = str | bytes
Value = bytes | str | int | float


class RedisClient:
    """An async Redis client: one pool, one circuit breaker, retries, spans and metrics for every call.

    Use it as ``async with RedisClient(settings) as r:`` (run-once tasks) or ``await r.connect()`` /
    ``await r.close()`` (daemons). ``connect()`` is an idempotent get-or-create that concurrent callers share and
    that opens one connection (a wrong password fails there, fast); any call connects on demand; ``close()`` is
    idempotent and bounded, and the client can be used again after it. There is no PING before commands.

    Values are bytes in, bytes out (``decode_responses`` is off): any bytes round-trip. Commands that may be
    re-sent after their request may have reached the server: reads, SET (without NX), DEL, EXPIRE, HSET, XACK,
    XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XADD with an explicit ID, and ``xadd_bulk``. INCR, LPUSH, BRPOP,
    PUBLISH, SET NX and XADD ``*`` are not: a connection failure after sending raises
    :class:`~trading_shared.errors.OutcomeUnknownError`. Any command whose connection could not even be opened is
    retried. Blocking reads (BRPOP, XREADGROUP BLOCK) use a pool of their own whose read timeout is the block time
    plus ``socket_timeout``.

    ``settings.mode`` picks the deployment (README.md (Deployments)). ``sentinel``: every command goes to the
    master the sentinels name, and a failover is followed. ``cluster``: every command goes to the master owning its
    key's hash slot (MOVED/ASK followed). In both, each server gets its own pools and breaker (:attr:`breakers`),
    and spans name the server that answered. With ``wait_replicas`` set, writes are confirmed with WAIT.
    """

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else RedisSettings()
        host, port, db = self.settings.target()
        self._telemetry = ClientTelemetry(
            system=names.SYSTEM_REDIS,
            pool_name=self.settings.name,
            namespace=str(db),
            address=host,
            port=port,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            record_exceptions=False,  # Redis error messages can quote keys (NOGROUP) or arguments
        )
        self._kwargs = connection_kwargs(self.settings, self._telemetry.pool_create)  # ConfigurationError here
        #: The breaker of the server in standalone mode; in sentinel and cluster mode, of connecting (discovery).
        self.breaker = CircuitBreaker(self.settings.breaker, self.settings.name)
        self._pipeline = Pipeline(
            retry=self.settings.retry, breaker=self.breaker, errors=RedisErrors(), telemetry=self._telemetry
        )
        s = self.settings
        self._wait: Wait | None = (s.wait_replicas, round(s.wait_timeout * 1000)) if s.wait_replicas else None
        self._pools: Pools | None = None
        self._router: Router | None = None
        self._lock = asyncio.Lock()
        self._write_slots = asyncio.Semaphore(self.settings.write_concurrency_limit)
        self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)

    def __repr__(self) -> str:
        host, port, db = self.settings.target()
        state = "connected" if self._pools is not None or self._router is not None else "not connected"
        mode = "" if self.settings.mode == "standalone" else f" {self.settings.mode}"
        return f"<{type(self).__name__} {self.settings.name!r}{mode} {host}:{port}/{db} {state}>"

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    async def connect(self) -> Self:
        """Create the pool if there is none (concurrent callers share one) and open one connection.

        In sentinel mode this finds the master; in cluster mode it reads the slot map.
        """
        if self.settings.mode != "standalone":
            if self._router is None:
                async with self._lock:
                    if self._router is None:
                        await self._start_router()
            return self
        if self._pools is None:
            async with self._lock:
                if self._pools is None:
                    pools = Pools(self._kwargs, self.settings, timing=self._telemetry)
                    if self._wait is not None:
                        pools.writer = CommandSet(pools, self._wait).writer
                    try:
                        await self._pipeline.call(
                            "connect", self._attempt(pools, lambda _: pools.open_one()), idempotent=True
                        )
                    except BaseException:
                        await pools.close(1.0)
                        raise
                    self._pools = pools
                    self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Disconnect every pooled connection within ``timeout`` seconds. Idempotent.

        Calls still in flight fail (their connections are closed under them) and are not re-sent: a retry of one
        raises RuntimeError. Any later call, or ``connect()``, opens a new pool.
        """
        async with self._lock:
            pools, self._pools = self._pools, None
            if pools is not None:
                await pools.close(timeout)
            router, self._router = self._router, None
            if router is not None:
                await router.close(timeout)
            self._pipeline.close()
            self._telemetry.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connection_pool(self) -> aioredis.ConnectionPool | None:
        """The main redis-py pool (None until connected). Commands sent through it bypass retries and telemetry.

        Sentinel mode: the current master's pool. Cluster mode: None (one pool per node).
        """
        if self._router is not None:
            master = self._router.route(None) if isinstance(self._router, SentinelRouter) else None
            return master.pools.main.connection_pool if master is not None else None
        return self._pools.main.connection_pool if self._pools is not None else None

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every server's breaker by ``host:port``: one in standalone mode, one per master (sentinel) or node
        (cluster) the client has talked to. A failing server opens its own breaker only."""
        if self._router is not None:
            return {e.name: e.breaker for e in self._router.endpoints.all()}
        host, port, _ = self.settings.target()
        return {f"{host}:{port}": self.breaker}

    # -- keys and hashes -------------------------------------------------------------------------------------------
    async def get(self, key: Key) -> bytes | None:
        """GET: the value, or None."""
        result: bytes | None = await self._call(
            "GET", lambda r: r.execute_command("GET", key), idempotent=True, key=key
        )
        return result

    async def set(
        self,
        key: Key,
        value: Value,
        *,
        ex: int | None = None,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """SET with optional expiry (``ex`` seconds or ``px`` ms) and NX/XX; True when the value was set.

        SET NX is not re-sent after its request may have reached the server: a re-send would answer "not set"
        for a value this very call set, so it raises OutcomeUnknownError instead.
        """
        args: list[Any] = ["SET", key, value]
        if ex is not None and px is not None:
            raise ValueError("give ex or px, not both")
        if nx and xx:
            raise ValueError("give nx or xx, not both")
        for unit, amount in (("EX", ex), ("PX", px)):
            if amount is not None:
                if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                    raise ValueError(f"{unit.lower()} must be a positive int")
                args += [unit, amount]
        if nx:
            args.append("NX")
        if xx:
            args.append("XX")
        result = await self._call("SET", lambda r: r.execute_command(*args), idempotent=not nx, key=key, write=True)
        return bool(result)

    async def delete(self, *keys: Key) -> int:
        """DEL: how many of ``keys`` existed (after a retried lost reply the count may be lower than the truth).

        Cluster mode: keys of different slots are deleted with one DEL per slot, concurrently; if one fails, its
        error is raised after the others finished (and they may have deleted their keys).
        """
        if not keys:
            return 0
        if self.settings.mode == "cluster":
            by_slot: dict[int, list[Key]] = {}
            for k in keys:
                by_slot.setdefault(slot_of(k), []).append(k)
            if len(by_slot) > 1:
                outcomes = await asyncio.gather(*(self.delete(*g) for g in by_slot.values()), return_exceptions=True)
                total = 0
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    total += outcome
                return total
        return int(
            await self._call("DEL", lambda r: r.execute_command("DEL", *keys), idempotent=True, key=keys[0], write=True)
        )

    async def expire(self, key: Key, seconds: int) -> bool:
        """EXPIRE: True when the key exists and now expires in ``seconds`` (> 0: EXPIRE with 0 or less deletes the key;
        use :meth:`delete` for that)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise ValueError("seconds must be a positive int")
        return bool(
            await self._call(
                "EXPIRE", lambda r: r.execute_command("EXPIRE", key, seconds), idempotent=True, key=key, write=True
            )
        )

    async def hset(
        self,
        key: Key,
        field: Key | None = None,
        value: Value | None = None,
        *,
        mapping: Mapping[str, Value] | Mapping[bytes, Value] | Mapping[Key, Value] | None = None,
    ) -> int:
        """HSET one ``field``/``value`` and/or a ``mapping``; returns the number of fields that were new."""
        items: list[Any] = []
        if field is not None:
            if value is None:
                raise ValueError("value is required with field")
            items += [field, value]
        for k, v in (mapping or {}).items():
            items += [k, v]
        if not items:
            raise ValueError("hset needs a field and value or a non-empty mapping")
        return int(
            await self._call(
                "HSET", lambda r: r.execute_command("HSET", key, *items), idempotent=True, key=key, write=True
            )
        )

    async def hget(self, key: Key, field: Key) -> bytes | None:
        """HGET: the field's value, or None."""
        result: bytes | None = await self._call(
            "HGET", lambda r: r.execute_command("HGET", key, field), idempotent=True, key=key
        )
        return result

    async def hgetall(self, key: Key) -> dict[bytes, bytes]:
        """HGETALL: every field and value (empty when the key does not exist)."""
        raw = await self._call("HGETALL", lambda r: r.execute_command("HGETALL", key), idempotent=True, key=key)
        if isinstance(raw, dict):
            return raw
        return dict(zip(raw[::2], raw[1::2], strict=True))

    async def incr(self, key: Key, amount: int = 1) -> int:
        """INCR / INCRBY: the new value. Never re-sent once its request may have reached the server."""
        if amount == 1:
            return int(
                await self._call(
                    "INCR", lambda r: r.execute_command("INCR", key), idempotent=False, key=key, write=True
                )
            )
        return int(
            await self._call(
                "INCRBY", lambda r: r.execute_command("INCRBY", key, amount), idempotent=False, key=key, write=True
            )
        )

    # -- lists and pub/sub --------------------------------------------------------------------------------------------
    async def lpush(self, key: Key, *values: Value) -> int:
        """LPUSH: the list's new length. Never re-sent once its request may have reached the server."""
        if not values:
            raise ValueError("lpush needs at least one value")
        return int(
            await self._call(
                "LPUSH", lambda r: r.execute_command("LPUSH", key, *values), idempotent=False, key=key, write=True
            )
        )

    async def brpop(self, keys: Key | Sequence[Key], timeout: float) -> tuple[bytes, bytes] | None:
        """BRPOP: ``(list, value)`` popped from the first non-empty list, or None after ``timeout`` seconds.

        ``timeout`` must be > 0 (loop for longer waits). Not re-sent once its request may have reached the server:
        a lost reply may have popped an element (use an LMOVE-based reliable queue when that matters).
        """
        if isinstance(timeout, bool) or not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        names_ = [keys] if isinstance(keys, str | bytes) else list(keys)
        if not names_:
            raise ValueError("brpop needs at least one key")
        if self.settings.mode == "cluster" and len({slot_of(k) for k in names_}) > 1:
            raise ValueError("cluster mode: brpop's keys must share one hash slot (give them the same {hash tag})")
        result = await self._call(
            "BRPOP",
            lambda r: r.execute_command("BRPOP", *names_, timeout),
            idempotent=False,
            blocking=timeout,
            key=names_[0],
        )
        return (result[0], result[1]) if result else None

    async def publish(self, channel: Key, message: Value) -> int:
        """PUBLISH: how many subscribers received it. Never re-sent (that would deliver it twice)."""
        return int(
            await self._call(
                "PUBLISH", lambda r: r.execute_command("PUBLISH", channel, message), idempotent=False, key=channel
            )
        )

    # -- streams -----------------------------------------------------------------------------------------------------
    async def xadd(
        self,
        stream: Key,
        fields: Fields,
        *,
        id: str | bytes = "*",
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> bytes:
        """XADD one entry; returns its ID.

        With ``id="*"`` the server assigns the ID and a failure after sending raises OutcomeUnknownError. With an
        explicit ``<ms>-<seq>`` ID the call is safe to re-send: a retry adds the entry only if it is not there yet.
        """
        streams.check_maxlen(maxlen)
        args = streams.xadd_args(fields, id, maxlen, approximate)
        if not streams.is_explicit_id(id):
            result = await self._call(
                "XADD", lambda r: r.execute_command("XADD", stream, *args), idempotent=False, key=stream, write=True
            )
            return bytes(result)
        streams.check_field_count(fields, 0)  # a re-send goes through a script (Lua unpack limit)
        tries = 0

        async def add(r: Commands) -> Any:
            nonlocal tries
            tries += 1
            if tries == 1:
                return await r.execute_command("XADD", stream, *args)
            return await streams.XADD_IF_ABSENT.run(r, [streams.as_key(stream)], [id, *args])

        return bytes(await self._call("XADD", add, idempotent=True, key=stream, write=True))

    async def xadd_bulk(
        self,
        stream: Key,
        messages: Sequence[Fields],
        maxlen: int | None = None,
        *,
        approximate: bool = True,
        chunk_size: int = 500,
        dead_letter: bool = True,
        dedupe_ttl: int = streams.DEFAULT_DEDUPE_TTL,
    ) -> int:
        """Append ``messages`` to ``stream`` in order, in chunks, without duplicates; returns how many were added.

        Each chunk is one atomic script call, safe to re-send (see :mod:`trading_shared.redis.streams`); chunks of
        one call are written in order and at most ``write_concurrency_limit`` chunks of the client are in flight.
        If a chunk still fails after retries, writing stops, the unwritten messages are copied to ``dlq:<stream>``
        (when ``dead_letter`` and the server takes them) and :class:`~trading_shared.errors.BulkWriteError` names
        the input indexes not written, of unknown outcome, and dead-lettered. Messages are validated first: a bad
        one raises ValueError/TypeError before anything is sent.
        """
        appender = BulkAppender(
            lambda op, key, fn: self._call(op, fn, idempotent=True, key=key, write=True),
            self._write_slots,
            self._telemetry,
            stream=stream,
            messages=messages,
            maxlen=maxlen,
            approximate=approximate,
            chunk_size=chunk_size,
            dead_letter=dead_letter,
            dedupe_ttl=dedupe_ttl,
        )
        return await appender.run()

    async def ensure_consumer_group(
        self, stream: Key, group: Key, *, start_id: str | bytes = "0", mkstream: bool = True
    ) -> bool:
        """Create consumer ``group`` on ``stream`` (and the stream, with ``mkstream``); False if it already existed.

        ``start_id="0"`` (default) delivers the entries already in the stream too, so none written before the group
        existed is skipped; pass ``"$"`` for new entries only.
        """
        return bool(
            await self._call(
                "XGROUP CREATE",
                lambda r: _create_group(r, stream, group, start_id, mkstream),
                idempotent=True,
                key=stream,
                write=True,
            )
        )

    async def read_stream_messages(
        self,
        stream: Key,
        group: Key,
        consumer: Key,
        *,
        count: int = 100,
        block_ms: int | None = None,
        start_id: str | bytes = ">",
        recreate_from: str | bytes = "0",
    ) -> list[StreamEntry]:
        """XREADGROUP: up to ``count`` entries for ``consumer`` (``start_id=">"``: never delivered before).

        ``block_ms`` > 0 waits that long for entries (neither cut by the socket timeout nor counted as a failure).
        A missing group (NOGROUP, e.g. after a restart without persistence) is recreated from ``recreate_from``
        and the read repeated. Safe to re-send: entries delivered by a lost reply stay pending for this consumer
        (read them with ``start_id="0"`` or claim them with :meth:`xautoclaim_stale_messages`).
        """
        if block_ms is not None and (isinstance(block_ms, bool) or block_ms <= 0):
            raise ValueError("block_ms must be > 0 or None")
        args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", stream, start_id]

        async def read(r: Commands) -> Any:
            try:
                return await r.execute_command(*args)
            except rex.ResponseError as exc:
                if error_code(exc) != "NOGROUP":
                    raise
            await _create_group(r, stream, group, recreate_from, True)
            return await r.execute_command(*args)

        blocking = block_ms / 1000 if block_ms is not None else None
        raw = await self._call("XREADGROUP", read, idempotent=True, blocking=blocking, key=stream)
        return streams.entries(raw[0][1]) if raw else []

    async def acknowledge_message(self, stream: Key, group: Key, *ids: str | bytes) -> int:
        """XACK: how many of ``ids`` were pending and are now acknowledged."""
        if not ids:
            return 0
        return int(
            await self._call(
                "XACK",
                lambda r: r.execute_command("XACK", stream, group, *ids),
                idempotent=True,
                key=stream,
                write=True,
            )
        )

    async def dead_letter_message(self, stream: Key, group: Key, entry: StreamEntry, *, reason: str) -> bytes:
        """Copy a consumed ``entry`` to ``dlq:<stream>`` (its fields plus ``dlq.stream``, ``dlq.group``, ``dlq.id``,
        ``dlq.error`` = ``reason``), then acknowledge it in ``group``; returns the ID of the dead-letter copy.

        Safe to re-send and to repeat: the copy is made by a script keyed on the stream, group and entry ID, so a
        retry after a lost reply, or the same entry dead-lettered again after a crash left it pending, returns the
        first copy's ID and adds nothing (for :data:`~.streams.DEAD_LETTER_DEDUPE_TTL`). The copy is made before
        the acknowledgement: a failure in between leaves the entry pending, to be read and dead-lettered again.
        ``reason`` lands in the stream as is: keep secrets out of it. Counted in the dead-lettered metric once.
        """
        source = streams.as_key(stream)
        group_key = streams.as_key(group)
        entry_id = streams.as_key(entry.id)
        fields = streams.consumer_dead_letter_fields(source, group_key, entry_id, reason, entry.fields)
        streams.check_field_count(fields, 0, streams.MAX_FIELDS + streams.DLQ_META_FIELDS)
        dlq = streams.DLQ_PREFIX + source
        keys = [dlq, streams.dedupe_key(dlq, group_key + b":" + entry_id, b"ts:dlq:")]
        args = [streams.DEAD_LETTER_DEDUPE_TTL, *streams.items(fields, 0)]
        copy_id, added = await self._call(
            "DEAD_LETTER",
            lambda r: streams.DEAD_LETTER.run(r, keys, args),
            idempotent=True,
            key=dlq,
            write=True,
        )
        if added:
            self._telemetry.dead_lettered(1)
        await self.acknowledge_message(stream, group, entry.id)
        return bytes(copy_id)

    async def xautoclaim_stale_messages(
        self,
        stream: Key,
        group: Key,
        consumer: Key,
        *,
        min_idle_ms: int,
        count: int = 100,
        start_id: str | bytes = "0-0",
    ) -> ClaimResult:
        """XAUTOCLAIM: take over entries pending longer than ``min_idle_ms`` in other consumers.

        Re-sent after a lost reply, the second claim finds the entries already idle-reset and owned by
        ``consumer``: they stay pending there and are claimed again once idle, so none is lost.
        """
        raw = await self._call(
            "XAUTOCLAIM",
            lambda r: r.execute_command("XAUTOCLAIM", stream, group, consumer, min_idle_ms, start_id, "COUNT", count),
            idempotent=True,
            key=stream,
            write=True,
        )
        deleted = list(raw[2]) if len(raw) > 2 else []
        return ClaimResult(next_id=raw[0], messages=streams.entries(raw[1]), deleted_ids=deleted)

    # -- pipelines and anything else -----------------------------------------------------------------------------------
    async def run_pipeline(
        self,
        build: Callable[[rclient.Pipeline], object],
        *,
        transaction: bool = False,
        idempotent: bool = False,
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Queue commands with ``build(pipe)`` (e.g. ``lambda p: p.set("a", 1).incr("n")``), send them in one round
        trip (inside MULTI/EXEC with ``transaction``) and return the replies in order.

        ``build`` runs once; the queued commands are re-sent as a whole after a failure only if the connection
        could not be opened, or if ``idempotent`` says every command in it is safe to repeat (an error reply such
        as READONLY, raised while other commands of the pipeline ran, counts as possibly applied). With
        ``raise_on_error`` the first error reply is raised (outside a transaction the other commands were applied);
        otherwise error replies are returned in place. WATCH is not supported. Telemetry names the call
        ``PIPELINE <COMMAND>`` (``MULTI <COMMAND>``) when all commands are the same, else ``PIPELINE`` (``MULTI``).
        With ``wait_replicas`` set, a pipeline with any command not known to be read-only ends with one WAIT.

        Cluster mode (:mod:`trading_shared.redis.pipelines`): commands are grouped by hash slot, one round trip per
        group, groups concurrently; not atomic across slots. A transaction must keep every key in one slot
        (ValueError otherwise, before anything is sent).
        """
        if self._pools is None and self._router is None:
            began = time.monotonic()  # connect on demand: the connect and the call share one deadline
            await self._connect_now()
            with enclosing_deadline(self.settings.retry.deadline, began):
                return await self.run_pipeline(
                    build, transaction=transaction, idempotent=idempotent, raise_on_error=raise_on_error
                )
        if self._router is None:
            recorder = (await self._connected()).main.pipeline(transaction=False)
        else:
            recorder = self._router.route(None).pools.main.pipeline(transaction=False)
        build(recorder)
        stack = [(tuple(args), dict(options)) for args, options in recorder.command_stack]
        if not stack:
            return []
        prefix = "MULTI" if transaction else "PIPELINE"
        names_ = {_command_name(args[0]) for args, _ in stack}
        write = not names_ <= _READ_ONLY
        operation = f"{prefix} {next(iter(names_))}" if len(names_) == 1 else prefix
        if isinstance(self._router, ClusterRouter):
            return await run_cluster_pipeline(
                self._call,
                self._router,
                stack,
                operation=operation,
                transaction=transaction,
                idempotent=idempotent,
                raise_on_error=raise_on_error,
                write=write,
            )

        async def send(r: Commands) -> list[Any]:
            replies = await r.execute_stack(stack, transaction=transaction, raise_on_error=False)
            if raise_on_error:
                raise_first_error_partly(replies)
            return replies

        replies: list[Any] = await self._call(operation, send, idempotent=idempotent, write=write)
        return replies

    async def run(
        self,
        operation: str,
        fn: Callable[[aioredis.Redis], Awaitable[T]],
        *,
        idempotent: bool,
        blocking: float | None = None,
        key: Key | None = None,
        write: bool = False,
    ) -> T:
        """Run ``fn(redis)`` through the pipeline, for commands the client lacks.

        ``redis`` is a ``redis.asyncio.Redis`` on the SDK's pool whose commands each make one attempt (no driver
        retries). ``operation`` names the call in telemetry: the command in upper case, low-cardinality.
        ``idempotent`` says it may be re-sent after its request may have reached the server; once ``fn`` has sent a
        first command, any later failure (even a connect failure or a "refused" reply) counts as possibly applied,
        so a non-idempotent ``fn`` is never run twice after it sent something. ``blocking``
        (seconds) runs it on the blocking pool, with the deadline and the read timeout widened by that much.
        ``key`` routes the call in cluster mode (to the node owning its slot; without it, to any master: fine for
        keyless commands only); a MOVED/ASK reply re-runs the whole ``fn`` on the node named, so keep ``fn`` to
        one key's slot and, if it sends several commands, safe to repeat. ``write=True`` confirms each command with
        WAIT when ``wait_replicas`` is set.
        """
        return await self._call(
            operation, fn, idempotent=idempotent, blocking=blocking, key=key, write=write, multi=True
        )

    # -- internals -------------------------------------------------------------------------------------------------
    async def _call(
        self,
        operation: str,
        fn: Callable[[Commands], Awaitable[T]],
        *,
        idempotent: bool,
        blocking: float | None = None,
        key: Key | None = None,
        write: bool = False,
        multi: bool = False,
    ) -> T:
        """``multi``: ``fn`` may send several requests (a caller's ``run``), so once one of them has been sent, a
        later failure is read as :class:`~trading_shared.resilience.faults.PartlyApplied`."""
        pools = self._pools
        if pools is None:
            if self._router is not None:
                return await self._routed_call(operation, fn, idempotent, blocking, key, write, multi)
            began = time.monotonic()  # connect on demand: the connect and the call share one deadline
            await self._connect_now()
            with enclosing_deadline(self.settings.retry.deadline, began):
                return await self._call(
                    operation, fn, idempotent=idempotent, blocking=blocking, key=key, write=write, multi=multi
                )
        if blocking is None:
            attempt = self._attempt(pools, fn, None, write, multi)
            return await self._pipeline.call(operation, attempt, idempotent=idempotent)
        attempt = self._attempt(pools, fn, blocking, multi=multi)
        return await self._pipeline.call(operation, attempt, idempotent=idempotent, extra_time=blocking)

    async def _routed_call(
        self,
        operation: str,
        fn: Callable[[Commands], Awaitable[T]],
        idempotent: bool,
        blocking: float | None,
        key: Key | None,
        write: bool,
        multi: bool = False,
    ) -> T:
        """A call in sentinel or cluster mode, through the pipeline of the endpoint that serves ``key`` now."""
        router = self._router
        assert router is not None
        endpoint = router.route(key)
        endpoints = router.endpoints
        attempt = routed_attempt(
            router,
            key,
            fn,
            blocking=blocking,
            write=write,
            telemetry=self._telemetry,
            is_open=lambda: not endpoints.closed,
            multi=multi,
        )
        extra = blocking or 0.0
        try:
            return await endpoint.pipeline.call(operation, attempt, idempotent=idempotent, extra_time=extra)
        except CircuitOpenError as rejected:
            if rejected.attempts:
                raise  # rejected after attempts on this endpoint: its outcome stands
            other = await router.reroute(key, endpoint)  # the slot or the master may have moved meanwhile
            if other is None:
                raise
        return await other.pipeline.call(operation, attempt, idempotent=idempotent, extra_time=extra)

    async def _connected(self) -> Pools:
        await self.connect()
        pools = self._pools
        if pools is None:  # closed again by a concurrent close()
            raise RuntimeError("RedisClient was closed during connect()")
        return pools

    async def _connect_now(self) -> None:
        await self.connect()
        if self._pools is None and self._router is None:  # closed again by a concurrent close()
            raise RuntimeError("RedisClient was closed during connect()")

    async def _start_router(self) -> None:
        """Discover the deployment (sentinel: the master; cluster: the slot map) through the connect pipeline."""
        settings = self.settings
        sentinel = settings.mode == "sentinel"
        router: Router
        if sentinel:
            router = SentinelRouter(
                settings,
                self._kwargs,
                self._telemetry,
                lambda check: Endpoints(settings, self._kwargs, self._telemetry, self._wait, master_check=check),
            )
        else:
            router = ClusterRouter(settings, Endpoints(settings, self._kwargs, self._telemetry, self._wait))

        async def start() -> None:
            try:
                await router.start()
            except ConnectFailed as exc:
                raise RequestNotSent(exc.original) from exc.original

        try:
            await self._pipeline.call("connect", start, idempotent=True)
        except BaseException:
            await router.close(1.0)
            raise
        self._router = router
        self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)

    def _attempt(
        self,
        pools: Pools,
        fn: Callable[[Commands], Awaitable[T]],
        blocking: float | None = None,
        write: bool = False,
        multi: bool = False,
    ) -> Callable[[], Awaitable[T]]:
        telemetry = self._telemetry

        async def attempt() -> T:
            if pools.closed:
                raise RuntimeError("RedisClient was closed while this call was in flight")
            sent = [0] if multi else None
            counting = SENT.set(sent) if sent is not None else None
            try:
                if blocking is None:
                    return await fn(pools.writer if write else pools.main)
                token = BLOCK_SECONDS.set(blocking)
                try:
                    return await fn(pools.blocking())
                finally:
                    BLOCK_SECONDS.reset(token)
            except ConnectFailed as exc:  # the connection could not be opened: this request was not sent
                raise not_sent(exc, sent) from exc.original
            except rex.MaxConnectionsError:
                telemetry.pool_timeout()
                raise
            except Exception as exc:
                if sent is not None and sent[0] > 1 and not isinstance(exc, TradingSharedError):
                    raise PartlyApplied(exc) from exc  # an earlier request of this attempt was sent
                raise
            finally:
                if counting is not None:
                    SENT.reset(counting)

        return attempt

    def _pool_stats(self) -> PoolStats | None:
        router = self._router
        if router is not None:
            return router.endpoints.stats()
        pools = self._pools
        return pools.stats() if pools is not None else None

    def _breaker_states(self) -> list[tuple[dict[str, str], str]]:
        router = self._router
        if router is not None:
            return router.endpoints.breaker_states(self._telemetry.pool_attributes)
        return [(self._telemetry.pool_attributes, self.breaker.state.value)]


class CustomRedisClient(RedisClient):
    """Deprecated alias of :class:`RedisClient`, kept for services written against the replaced client."""

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        warnings.warn("CustomRedisClient is deprecated; use RedisClient", DeprecationWarning, stacklevel=2)
        super().__init__(settings, tracer_provider=tracer_provider, meter_provider=meter_provider)


async def _create_group(r: Commands, stream: Key, group: Key, start_id: str | bytes, mkstream: bool) -> bool:
    """XGROUP CREATE; an existing group (BUSYGROUP) is success, reported as False."""
    args: list[Any] = ["XGROUP", "CREATE", stream, group, start_id]
    if mkstream:
        args.append("MKSTREAM")
    try:
        await r.execute_command(*args)
    except rex.ResponseError as exc:
        if error_code(exc) == "BUSYGROUP":
            return False
        raise
    return True


#: Commands that never write: a pipeline of only these is not confirmed with WAIT.
_READ_ONLY = frozenset(
    {
        "GET", "MGET", "STRLEN", "GETRANGE", "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "HGET", "HMGET",
        "HGETALL", "HLEN", "HEXISTS", "HKEYS", "HVALS", "LRANGE", "LLEN", "LINDEX", "SMEMBERS", "SISMEMBER",
        "SCARD", "ZRANGE", "ZSCORE", "ZCARD", "ZRANK", "ZCOUNT", "XRANGE", "XREVRANGE", "XLEN", "XINFO", "XPENDING",
        "PING", "ECHO", "SCAN", "HSCAN", "SSCAN", "ZSCAN",
    }
)  # fmt: skip


def raise_first_error_partly(replies: Sequence[Any]) -> None:
    """Raise a pipeline's first error reply; as PartlyApplied when another command of it ran (it was applied and
    stays applied: neither a pipeline nor MULTI/EXEC rolls back after an error reply)."""
    for reply in replies:
        if isinstance(reply, rex.ResponseError):
            if any(not isinstance(other, rex.ResponseError) for other in replies):
                raise PartlyApplied(reply) from reply
            raise reply


def _command_name(arg: Any) -> str:
    """The command word of a queued command (redis-py queues e.g. ``"XGROUP CREATE"`` as one argument)."""
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return text.split(" ", 1)[0].upper()
