"""The replaced client's Redis surface on :class:`~trading_shared.RedisClient`, plus the generic :meth:`command`.

Every method here goes through the SDK's one call path (``_call`` / ``run_pipeline``): breaker, retries under the
idempotency rules of :mod:`.commands_table`, deadline, spans and metrics. Signatures and return shapes are the old
client's (bytes stay bytes). Old spellings of methods the SDK renamed or reshaped (``read_stream_messages`` with
``stream_name=``, ``xautoclaim_stale_messages`` with a positional idle time, ``execute_resiliently``,
``get_client_deprecated``) keep working and emit a ``DeprecationWarning`` naming the new spelling. Unlike the old
client, no method here logs and swallows a failure: infrastructure failures raise the SDK's typed errors (builtin
``ConnectionError``s), caller errors the driver's own exception. docs/migration.md lists every change.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.asyncio.client as rclient
import redis.exceptions as rex

from .classify import error_code
from .commands_table import lookup
from .compat_pipeline import CompatPipeline
from .endpoints import Key
from .pool import Commands
from .pubsub import Subscription, managed_pubsub
from .stream_commands import StreamCommands, create_group
from .streams import ClaimResult, StreamEntry, strip_traceparent

T = TypeVar("T")

#: Fields :meth:`LegacyCommands.parse_stream_message` decodes as JSON first (the old client's list).
_JSON_FIELDS = frozenset({"data", "payload", "order", "trade", "kline"})


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


class LegacyCommands(StreamCommands):
    """The generic table-driven entry point and the replaced client's methods (mixed into ``RedisClient``)."""

    if TYPE_CHECKING:  # defined on RedisClient

        async def run_pipeline(
            self,
            build: Callable[[rclient.Pipeline], object],
            *,
            transaction: bool = False,
            idempotent: bool = False,
            raise_on_error: bool = True,
        ) -> list[Any]:
            """See :meth:`trading_shared.RedisClient.run_pipeline`."""

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
            """See :meth:`trading_shared.RedisClient.run`."""

    # -- any command of the table ------------------------------------------------------------------------------------
    async def command(self, name: str, *args: Any, **options: Any) -> Any:
        """Run any command of :mod:`.commands_table`, e.g. ``await r.command("LRANGE", key, 0, -1)``.

        The table says whether it may be re-sent after its request may have reached the server (an option word
        such as ``NX`` can make it unsafe), whether it writes (WAIT with ``wait_replicas``) and where its keys are
        (cluster routing; all keys must share a slot). ``options`` go to redis-py's reply parser (e.g.
        ``withscores=True``). Blocking and subscribe commands are refused (use :meth:`brpop`, :meth:`subscribe`).
        """
        spec, words = lookup((name, *args))
        rest = (name, *args)[words:]
        if spec.access == "s" or spec.blocks(rest):
            raise ValueError(f"{spec.name} cannot run through command(): use the client's blocking or pub/sub API")
        keys = spec.keys(rest)
        if len(keys) > 1 and len(self._slot_groups(keys)) > 1:
            raise ValueError(f"cluster mode: the keys of {spec.name} must share one hash slot")
        head = (spec.name,) if words == 2 else (name,)
        return await self._call(
            spec.name,
            lambda r: r.execute_command(*head, *rest, **options),
            idempotent=spec.idempotent_for(rest),
            key=keys[0] if keys else None,
            write=spec.write,
        )

    def pipeline(self, transaction: bool = True) -> CompatPipeline:
        """A redis-py-style pipeline (``await r.pipeline()`` works too, as with the old client); see
        :mod:`.compat_pipeline`. ``execute()`` is re-sent after a lost reply only if every command is idempotent."""
        return CompatPipeline(self.run_pipeline, transaction)

    # -- keys, strings, lists, sets, sorted sets ---------------------------------------------------------------------
    async def exists(self, key: Key) -> bool:
        """EXISTS: True when ``key`` exists."""
        return int(await self.command("EXISTS", key)) > 0

    async def setex(self, key: Key, ttl: int, value: bytes | str | int | float) -> bool:
        """SETEX: set ``key`` to ``value`` expiring in ``ttl`` seconds."""
        return bool(await self.command("SETEX", key, ttl, value))

    async def llen(self, key: Key) -> int:
        """LLEN: the list's length (0 when it does not exist)."""
        return int(await self.command("LLEN", key))

    async def lrange(self, key: Key, start: int, end: int) -> list[bytes]:
        """LRANGE: the elements from ``start`` to ``end`` (inclusive; -1 is the last)."""
        result: list[bytes] = await self.command("LRANGE", key, start, end)
        return result

    async def ltrim(self, key: Key, start: int, end: int) -> bool:
        """LTRIM: keep only the elements from ``start`` to ``end``."""
        return bool(await self.command("LTRIM", key, start, end))

    async def sadd(self, key: Key, *values: bytes | str | int | float) -> int | None:
        """SADD: how many of ``values`` were new (None without values, as before)."""
        if not values:
            return None
        return int(await self.command("SADD", key, *values))

    async def smembers(self, key: Key) -> set[bytes]:
        """SMEMBERS: every member (an empty set when the key does not exist)."""
        return set(await self.command("SMEMBERS", key) or ())

    async def zadd(self, key: Key, mapping: Mapping[str | bytes, float], nx: bool = False, xx: bool = False) -> int:
        """ZADD ``mapping`` (member -> score), with NX (only new members) or XX (only existing); how many were added."""
        if nx and xx:
            raise ValueError("give nx or xx, not both")
        if not mapping:
            raise ValueError("zadd needs a non-empty mapping")
        flags = ["NX"] if nx else ["XX"] if xx else []
        items: list[Any] = []
        for member, score in mapping.items():
            items += [score, member]
        return int(await self.command("ZADD", key, *flags, *items))

    async def zrange(self, key: Key, start: int, end: int, withscores: bool = False) -> list[Any]:
        """ZRANGE by rank; ``(member, score)`` pairs with ``withscores``."""
        return await self._zrange("ZRANGE", key, start, end, withscores)

    async def zrevrange(self, key: Key, start: int, end: int, withscores: bool = False) -> list[Any]:
        """ZREVRANGE: by rank, highest score first."""
        return await self._zrange("ZREVRANGE", key, start, end, withscores)

    async def zrangebyscore(
        self, key: Key, min_score: float | str, max_score: float | str, withscores: bool = False
    ) -> list[Any]:
        """ZRANGEBYSCORE: members with a score between ``min_score`` and ``max_score``."""
        return await self._zrange("ZRANGEBYSCORE", key, min_score, max_score, withscores)

    async def _zrange(self, name: str, key: Key, low: Any, high: Any, withscores: bool) -> list[Any]:
        extra: tuple[Any, ...] = ("WITHSCORES",) if withscores else ()
        options = {"withscores": True, "score_cast_func": float} if withscores else {}
        return list(await self.command(name, key, low, high, *extra, **options))

    async def zremrangebyscore(self, key: Key, min_score: float | str, max_score: float | str) -> int:
        """ZREMRANGEBYSCORE: how many members were removed."""
        return int(await self.command("ZREMRANGEBYSCORE", key, min_score, max_score))

    async def zremrangebyrank(self, key: Key, start: int, stop: int) -> int:
        """ZREMRANGEBYRANK: how many members were removed (not re-sent: a second run removes more)."""
        return int(await self.command("ZREMRANGEBYRANK", key, start, stop))

    async def zcard(self, key: Key) -> int:
        """ZCARD: the number of members."""
        return int(await self.command("ZCARD", key))

    # -- connection ------------------------------------------------------------------------------------------------
    async def ping(self) -> bool:
        """PING: True; a failure raises the SDK's error (a ``ConnectionError``), as the old client raised one."""
        return bool(await self.command("PING"))

    async def test_connection(self) -> bool:
        """True when a PING succeeds, False when Redis is unreachable (only connection failures count as False)."""
        try:
            return await self.ping()
        except ConnectionError:
            return False

    def is_connected(self) -> bool:
        """True when connected and the breaker is not open."""
        return self._router is not None and self.breaker.state.value != "open"

    async def reconnect(self) -> bool:
        """Close the pool and connect again; False when Redis is unreachable."""
        await self.close()
        try:
            await self.connect()
        except ConnectionError:
            return False
        return True

    async def get_client_deprecated(self) -> aioredis.Redis:
        """Deprecated: a ``redis.asyncio.Redis`` on the SDK's pool; its calls bypass retries and telemetry."""
        _deprecated("get_client_deprecated()", "RedisClient.run(operation, fn, idempotent=...)")
        router = await self._connected()
        client: Commands = router.route(None).pools.main
        return client

    async def execute_resiliently(
        self,
        func: Callable[[aioredis.Redis], Awaitable[T]],
        command_name_for_logging: str = "execute_resiliently",
        *,
        idempotent: bool = False,
    ) -> T:
        """Deprecated: ``func(redis)`` through the pipeline, as :meth:`run` does. Not re-sent once it may have sent
        something unless ``idempotent=True``. ``command_name_for_logging`` is not used in telemetry (old callers
        put keys in it): the operation is named ``EXECUTE_RESILIENTLY``."""
        _deprecated("execute_resiliently(func, name)", "RedisClient.run(operation, fn, idempotent=...)")
        return await self.run("EXECUTE_RESILIENTLY", func, idempotent=idempotent)

    # -- pub/sub -----------------------------------------------------------------------------------------------------
    def pubsub(self) -> Any:
        """The old ``async with r.pubsub() as ps:``: a redis-py PubSub on the client's pool, closed on exit.

        It is not re-subscribed after a lost connection: use :meth:`subscribe` for that.
        """
        return managed_pubsub(self._new_pubsub)

    def subscribe(
        self,
        *channels: Key,
        patterns: Sequence[Key] = (),
        health_interval: float = 5.0,
        max_outage: float = 30.0,
    ) -> Subscription:
        """A subscription to ``channels`` and ``patterns`` that re-subscribes after the connection is lost; see
        :mod:`trading_shared.redis.pubsub`. It holds one connection of the pool while subscribed."""
        return Subscription(
            self._new_pubsub,
            self.settings,
            self._telemetry,
            channels,
            patterns,
            health_interval=health_interval,
            max_outage=max_outage,
        )

    async def _new_pubsub(self) -> rclient.PubSub:
        await self.command("PING")  # through the call path first: breaker, retries, a failover followed
        router = await self._connected()
        return router.route(None).pools.main.pubsub()

    # -- system state (old keys) -----------------------------------------------------------------------------------
    async def get_system_state(self) -> str:
        """Raises NotImplementedError, as the old client did (read the state through a state manager)."""
        raise NotImplementedError("get_system_state is not supported; read the state with hgetall(key)")

    async def set_system_state(self, state: str, reason: str | None = None) -> None:
        """Write ``system:state`` (status, reason, timestamp) and ``system:state:simple`` in one transaction.

        Raises on failure (the old client logged a ConnectionError and returned).
        """
        mapping: dict[str | bytes, str | float] = {"status": state, "reason": reason or "", "timestamp": time.time()}

        def build(pipe: rclient.Pipeline) -> None:
            pipe.hset("system:state", mapping=mapping)  # type: ignore[arg-type]
            pipe.set("system:state:simple", state)

        await self.run_pipeline(build, transaction=True, idempotent=True)

    # -- streams ---------------------------------------------------------------------------------------------------
    @staticmethod
    def parse_stream_message(message_data: Mapping[bytes, bytes]) -> dict[str, Any]:
        """Decode a stream entry's fields: JSON values (orjson) as objects, other values as str, else bytes."""
        result: dict[str, Any] = {}
        for raw_key, value in message_data.items():
            key = raw_key.decode("utf-8")
            try:
                result[key] = orjson.loads(value)
                continue
            except (orjson.JSONDecodeError, TypeError):
                pass
            try:
                result[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                result[key] = value
        return result

    async def xadd_to_dlq(self, original_stream_name: str, failed_messages: Sequence[Mapping[str, Any]]) -> None:
        """Append each message (orjson-encoded under ``payload``) to ``deadletter:queue:<domain>:<type>`` (from
        ``<domain>:<type>:...``; else ``deadletter:queue:malformed:<name>``), capped at ~25,000 entries.

        Written with :meth:`xadd_bulk` (safe to re-send, no duplicates); a failure raises (the old client logged it).
        """
        if not failed_messages:
            return
        parts = original_stream_name.split(":", 2)
        if len(parts) >= 2:
            dlq = f"deadletter:queue:{parts[0]}:{parts[1]}"
        else:
            dlq = f"deadletter:queue:malformed:{original_stream_name}"
        payloads = [{"payload": orjson.dumps(m)} for m in failed_messages]
        await self.xadd_bulk(dlq, payloads, maxlen=25_000, dead_letter=False)

    async def read_stream_messages(self, *args: Any, **kwargs: Any) -> list[StreamEntry]:
        """:meth:`StreamCommands.read_stream_messages`; also takes the old call (``stream_name=``, ``group_name=``,
        ``consumer_name=``, ``count=``, ``block=`` in ms, or those positionally), which warns."""
        old = {"stream_name", "group_name", "consumer_name", "block"}
        if len(args) > 3 or old & kwargs.keys():
            names = ("stream_name", "group_name", "consumer_name", "count", "block")
            given = dict(zip(names, args, strict=False)) | kwargs
            _deprecated(
                "read_stream_messages(stream_name=, group_name=, consumer_name=, count=, block=)",
                "read_stream_messages(stream, group, consumer, count=, block_ms=)",
            )
            return await super().read_stream_messages(
                given["stream_name"],
                given["group_name"],
                given["consumer_name"],
                count=given.get("count", 250),
                block_ms=given.get("block", 5000),
            )
        return await super().read_stream_messages(*args, **kwargs)

    async def xautoclaim_stale_messages(self, *args: Any, **kwargs: Any) -> ClaimResult:
        """:meth:`StreamCommands.xautoclaim_stale_messages`; also takes the old call (idle time and count
        positionally, or ``min_idle_time_ms=``), which warns. The result also indexes like the old list:
        ``[next_id, entries, deleted_ids]``."""
        if len(args) > 3 or "min_idle_time_ms" in kwargs:
            names = ("stream", "group", "consumer", "min_idle_ms", "count")
            given = dict(zip(names, args, strict=False)) | kwargs
            if "min_idle_time_ms" in given:
                given["min_idle_ms"] = given.pop("min_idle_time_ms")
            for new, previous in (("stream", "stream_name"), ("group", "group_name"), ("consumer", "consumer_name")):
                if previous in given:
                    given[new] = given.pop(previous)
            _deprecated(
                "xautoclaim_stale_messages(stream, group, consumer, min_idle_time_ms, count)",
                "xautoclaim_stale_messages(stream, group, consumer, min_idle_ms=, count=)",
            )
            return await super().xautoclaim_stale_messages(
                given.pop("stream"), given.pop("group"), given.pop("consumer"), **given
            )
        return await super().xautoclaim_stale_messages(*args, **kwargs)

    async def read_grouped_streams(
        self, group_name: Key, consumer_name: Key, streams: Mapping[Key, Key], count: int = 10, block: int = 2000
    ) -> list[Any]:
        """XREADGROUP on several ``streams`` (name -> start ID) at once; redis-py's reply shape
        ``[[stream, [(id, fields), ...]], ...]``, ``[]`` when nothing came within ``block`` ms.

        A missing group is created from ``0`` on every stream and ``[]`` returned, as before. Cluster mode: the
        streams must share one hash slot.
        """
        if isinstance(block, bool) or block <= 0:
            raise ValueError("block must be > 0 ms")
        names = list(streams)
        if not names:
            return []
        if len(self._slot_groups(names)) > 1:
            raise ValueError("cluster mode: read_grouped_streams's streams must share one hash slot")

        args = ["XREADGROUP", "GROUP", group_name, consumer_name, "COUNT", count, "BLOCK", block, "STREAMS"]
        args += [*names, *streams.values()]

        async def read(r: Commands) -> Any:
            try:
                return await r.execute_command(*args)
            except rex.ResponseError as exc:
                if error_code(exc) != "NOGROUP":
                    raise
            for name in names:
                await create_group(r, name, group_name, "0", True)
            return []

        result = await self._call("XREADGROUP", read, idempotent=True, blocking=block / 1000, key=names[0])
        return list(strip_traceparent(result) or [])  # the fields as written: no trace context field
