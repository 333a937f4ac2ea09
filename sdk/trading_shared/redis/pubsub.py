"""Pub/sub: the replaced client's ``pubsub()`` context manager, and a subscription that survives an outage.

:class:`Subscription` (``RedisClient.subscribe(...)``) holds one connection of the client's pool, subscribed to its
channels and patterns, and yields the messages published to them. When the connection drops (Redis restarted,
network cut) or goes silent (no reply to a PING within ``health_interval`` seconds), it connects again with
backoff and re-subscribes to everything, then records the gap: ``trading_shared.redis.resubscribes`` counts it and
a ``SUBSCRIBE`` span carries a ``trading_shared.resubscribed`` event with the gap in seconds. Pub/sub keeps no
history: messages published during the gap are not delivered (use a stream when every message matters).

Each (re)subscription first sends a PING through the client's call path (breaker, retries, deadline; in sentinel
mode this finds the new master after a failover), then subscribes on the server the client now routes to.

It never hangs a consumer silently: if it cannot re-subscribe within ``max_outage`` seconds (plus at most one
call's ``retry.deadline``), the waiting ``__anext__`` raises :class:`~trading_shared.errors.ServiceUnavailableError`
(a ``ConnectionError``) chained from the last failure; iterating again starts a new outage window.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import redis.asyncio.client as rclient
import redis.exceptions as rex

from ..errors import ServiceUnavailableError
from ..settings import RedisSettings
from ..telemetry.client import ClientTelemetry
from .endpoints import Key

#: Errors that mean the subscription's connection is gone (anything else is raised to the consumer as is).
_LOST = (rex.ConnectionError, rex.TimeoutError, ConnectionError, TimeoutError, OSError)

#: ``() -> a new PubSub`` on the client's pool (connecting the client first when needed).
NewPubSub = Callable[[], Awaitable[rclient.PubSub]]


class Subscription:
    """Messages of ``channels`` and ``patterns``, re-subscribed after connection loss (see the module docstring).

    Use ``async with client.subscribe("a", patterns=["p:*"]) as sub: async for message in sub: ...``. A message is
    redis-py's dict: ``type`` (``message`` or ``pmessage``), ``channel``, ``pattern``, ``data`` (bytes).
    :attr:`reconnects` counts the re-subscriptions so far.
    """

    def __init__(
        self,
        new_pubsub: NewPubSub,
        settings: RedisSettings,
        telemetry: ClientTelemetry,
        channels: Sequence[Key],
        patterns: Sequence[Key],
        *,
        health_interval: float = 5.0,
        max_outage: float = 30.0,
    ) -> None:
        if not channels and not patterns:
            raise ValueError("subscribe needs at least one channel or pattern")
        if health_interval <= 0 or max_outage <= 0:
            raise ValueError("health_interval and max_outage must be > 0")
        self._new_pubsub = new_pubsub
        self._settings = settings
        self._telemetry = telemetry
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.health_interval = health_interval
        self.max_outage = max_outage
        #: Re-subscriptions after a lost connection, since this subscription was made.
        self.reconnects = 0
        self._pubsub: rclient.PubSub | None = None
        self._lost_at: float | None = None  # when the connection was lost (None: never, or back since)
        self._ping_pending = False
        self._closed = False

    async def __aenter__(self) -> Self:
        await self._ensure()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next published message; re-subscribes after connection loss (raises after ``max_outage``)."""
        while not self._closed:
            pubsub = await self._ensure()
            try:
                message = await pubsub.get_message(timeout=self.health_interval)  # None: nothing came
            except _LOST as exc:
                await self._lost(exc)
                continue
            if message is None:
                if self._ping_pending:  # no reply to the last PING within health_interval: a dead connection
                    await self._lost(TimeoutError("no reply to PING on the pub/sub connection"))
                    continue
                try:
                    await pubsub.ping()
                except _LOST as exc:
                    await self._lost(exc)
                    continue
                self._ping_pending = True
                continue
            self._ping_pending = False
            if message.get("type") in ("message", "pmessage"):
                return dict(message)
        raise StopAsyncIteration

    async def close(self) -> None:
        """Unsubscribe and give the connection back. Idempotent; iterating afterwards ends at once."""
        self._closed = True
        await self._drop()

    async def _ensure(self) -> rclient.PubSub:
        """The subscribed PubSub, (re)subscribing with backoff; ServiceUnavailableError after ``max_outage``."""
        if self._pubsub is not None:
            return self._pubsub
        retry = self._settings.retry
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                pubsub = await self._new_pubsub()
                try:
                    if self.channels:
                        await pubsub.subscribe(*self.channels)
                    if self.patterns:
                        await pubsub.psubscribe(*self.patterns)
                except BaseException:
                    await _close_quietly(pubsub)
                    raise
            except _LOST as exc:
                waited = time.monotonic() - started
                if waited >= self.max_outage:
                    raise ServiceUnavailableError(
                        f"could not re-subscribe within {self.max_outage:g}s",
                        operation="SUBSCRIBE",
                        attempts=attempts,
                        may_have_been_applied=False,
                    ) from exc
                delay = min(retry.max_backoff, retry.initial_backoff * 2 ** min(attempts - 1, 20))
                delay += random.uniform(0, retry.jitter)
                await asyncio.sleep(max(0.0, min(delay, self.max_outage - waited)))
                continue
            self._pubsub = pubsub
            self._ping_pending = False
            if self._lost_at is not None:
                self.reconnects += 1
                self._telemetry.resubscribed(time.monotonic() - self._lost_at, attempts)
                self._lost_at = None
            return pubsub

    async def _lost(self, exc: BaseException) -> None:
        """The connection is gone: drop it; :meth:`_ensure` re-subscribes."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        await self._drop()

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close_quietly(pubsub)


async def _close_quietly(pubsub: rclient.PubSub) -> None:
    """Close a PubSub whose connection may already be dead (its errors carry nothing the caller can act on)."""
    close: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped before redis-py 8.2: typed here for both
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), 2.0)


@contextlib.asynccontextmanager
async def managed_pubsub(new_pubsub: NewPubSub) -> AsyncIterator[rclient.PubSub]:
    """The replaced client's ``pubsub()``: a redis-py PubSub on the client's pool, closed on exit.

    Not re-subscribed after a lost connection (redis-py raises ``ConnectionError``): use
    :meth:`~trading_shared.RedisClient.subscribe` for that.
    """
    pubsub = await new_pubsub()
    try:
        yield pubsub
    finally:
        await _close_quietly(pubsub)
