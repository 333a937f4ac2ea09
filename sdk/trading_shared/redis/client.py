"""RedisClient: the commands. Each says what to send, on which key, and whether it may be re-sent after its request
may have reached the server; :mod:`.dispatch` takes every call to a server through the resilient pipeline."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.asyncio.client as rclient
import redis.exceptions as rex
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ..resilience.deadline import CallSteps
from ..resilience.faults import PartlyApplied
from ..settings import RedisSettings
from .commands_table import READ_ONLY as _READ_ONLY
from .endpoints import Key
from .legacy import LegacyCommands
from .pool import Commands

T = TypeVar("T")
Value = bytes | str | int | float


class RedisClient(LegacyCommands):
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

    ``settings.mode`` picks the deployment (docs/redis-standalone.md and the pages it links). ``sentinel``: every
    command goes to the master the sentinels name, and a failover is followed. ``cluster``: every command goes to the
    master owning its key's hash slot (MOVED/ASK followed). In both, each server gets its own pools and breaker
    (:attr:`breakers`), and spans name the server that answered. With ``wait_replicas`` set, writes are confirmed
    with WAIT.
    """

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
        groups = self._slot_groups(keys)
        if len(groups) > 1:
            outcomes = await asyncio.gather(*(self.delete(*g) for g in groups), return_exceptions=True)
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
        lists = [keys] if isinstance(keys, str | bytes) else list(keys)
        if not lists:
            raise ValueError("brpop needs at least one key")
        if len(self._slot_groups(lists)) > 1:
            raise ValueError("cluster mode: brpop's keys must share one hash slot (give them the same {hash tag})")
        result = await self._call(
            "BRPOP",
            lambda r: r.execute_command("BRPOP", *lists, timeout),
            idempotent=False,
            blocking=timeout,
            key=lists[0],
        )
        return (result[0], result[1]) if result else None

    async def publish(self, channel: Key, message: Value) -> int:
        """PUBLISH: how many subscribers received it. Never re-sent (that would deliver it twice)."""
        return int(
            await self._call(
                "PUBLISH", lambda r: r.execute_command("PUBLISH", channel, message), idempotent=False, key=channel
            )
        )

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

        Cluster mode (:mod:`trading_shared.redis.slot_batches`): commands are grouped by hash slot, one round trip per
        group, groups concurrently; not atomic across slots. A transaction must keep every key in one slot
        (ValueError otherwise, before anything is sent).
        """
        router = self._router
        if router is None:  # connect on demand: the connect and the call share one deadline
            steps = CallSteps(self.settings.retry.deadline)
            await self._connected()
            with steps.next():
                return await self.run_pipeline(
                    build, transaction=transaction, idempotent=idempotent, raise_on_error=raise_on_error
                )
        recorder = router.route(None).pools.main.pipeline(transaction=False)  # records commands, sends nothing
        build(recorder)
        stack = [(tuple(args), dict(options)) for args, options in recorder.command_stack]
        if not stack:
            return []
        prefix = "MULTI" if transaction else "PIPELINE"
        commands = {_command_name(args[0]) for args, _ in stack}
        operation = f"{prefix} {next(iter(commands))}" if len(commands) == 1 else prefix

        async def send(r: Commands) -> list[Any]:
            replies = await r.execute_stack(stack, transaction=transaction, raise_on_error=False)
            if raise_on_error:
                raise_first_error_partly(replies)
            return replies

        return await self._run_stack(
            stack,
            send,
            operation=operation,
            transaction=transaction,
            idempotent=idempotent,
            raise_on_error=raise_on_error,
            write=not commands <= _READ_ONLY,
        )

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
            operation, fn, idempotent=idempotent, blocking=blocking, key=key, write=write, several_requests=True
        )


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
