"""Endpoints: one Redis server each, with its own pools, circuit breaker and pipeline; routers pick one per call.

In ``sentinel`` and ``cluster`` mode the client talks to several servers over time (the master of the moment, the
node owning a key's slot). Each gets an :class:`Endpoint` the first time it is needed, and keeps it until the
client closes: a failing server opens ITS breaker only, so the others keep serving (and a master that comes back
later finds its own history). A router (:mod:`.sentinel`, :mod:`.cluster`) maps a call to an endpoint;
:class:`Refresher` runs the router's topology look-up once for a burst of failures instead of once per failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.exceptions as rex

from ..resilience.breaker import CircuitBreaker
from ..resilience.pipeline import CallPipeline
from ..settings import RedisSettings, RetrySettings
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from .bracketed import CommandSet, Wait
from .classify import RedisErrors
from .connection import MASTER_CHECK, MasterCheck
from .pool import Pools

_log = logging.getLogger(__name__)

Key = str | bytes

#: Attempts per call in sentinel and cluster mode when ``retry.max_attempts`` is not set: enough that the deadline,
#: not the count, ends a call waiting out a failover (with the default backoff, 5 attempts are spent ~1.7 s into an
#: outage, before sentinels or a cluster have promoted a replica).
FAILOVER_MAX_ATTEMPTS = 100


def failover_retry(retry: RetrySettings) -> RetrySettings:
    """``retry`` for a failover-aware deployment: the deadline bounds the attempts unless the caller set a count."""
    if "max_attempts" in retry.model_fields_set:
        return retry
    return retry.model_copy(update={"max_attempts": FAILOVER_MAX_ATTEMPTS})


class Nudge:
    """A backoff wait that :meth:`wake` cuts short: retries waiting out a failover move on once it is followed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or until the next :meth:`wake`."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()

    def wake(self) -> None:
        """End every wait in progress (later waits are not affected)."""
        self._event.set()
        self._event = asyncio.Event()


class Endpoint:
    """One server: its pools (main and blocking), their runners, its breaker and the pipeline that uses it."""

    def __init__(
        self,
        host: str,
        port: int,
        pools: Pools,
        commands: CommandSet,
        pipeline: CallPipeline,
        *,
        name_server: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.pools = pools
        self.commands = commands
        self.pipeline = pipeline
        self.breaker = pipeline.breaker
        #: True while another server is the master (sentinel mode): failures of calls in flight here mean that
        #: their server was demoted under them.
        self.superseded = False
        #: Set on the span of every attempt this endpoint serves (the node that answered); None where the span
        #: already names the server (standalone).
        self.span_attributes: dict[str, str | int] | None = (
            {names.SERVER_ADDRESS: host, names.SERVER_PORT: port} if name_server else None
        )

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} breaker={self.breaker.state.value}>"


class Endpoints:
    """The endpoints of one client, created on first use and kept until :meth:`close`."""

    def __init__(
        self,
        settings: RedisSettings,
        kwargs: dict[str, Any],
        telemetry: ClientTelemetry,
        wait: Wait | None,
        *,
        master_check: MasterCheck | None = None,
    ) -> None:
        self._settings = settings
        self._kwargs = kwargs if master_check is None else {**kwargs, MASTER_CHECK: master_check}
        self._retry = failover_retry(settings.retry)
        #: Woken by the router when the topology changes (a new master, a moved slot).
        self.nudge = Nudge()
        self._telemetry = telemetry
        #: ``(replicas, timeout ms)`` of the WAIT that confirms writes, or None.
        self.wait = wait
        self._by_address: dict[tuple[str, int], Endpoint] = {}
        self.closed = False

    def get(self, host: str, port: int) -> Endpoint:
        """The endpoint of ``host:port``, created (without I/O) if new."""
        found = self._by_address.get((host, port))
        if found is None:
            if self.closed:
                raise RuntimeError("RedisClient was closed while this call was in flight")
            settings = self._settings
            pools = Pools({**self._kwargs, "host": host, "port": port}, settings, timing=self._telemetry)
            breaker = CircuitBreaker(settings.breaker, f"{settings.name} {host}:{port}")
            pipeline = CallPipeline(
                retry=self._retry,
                breaker=breaker,
                errors=RedisErrors(),
                telemetry=self._telemetry,
                activate_span=True,  # attempts name the server that answered on the span
                backoff=self.nudge.sleep,
            )
            found = Endpoint(host, port, pools, CommandSet(pools, self.wait), pipeline)
            self._by_address[(host, port)] = found
        return found

    def adopt(self, endpoint: Endpoint) -> None:
        """Keep an endpoint built elsewhere (standalone: the client's own pipeline and breaker)."""
        self._by_address[(endpoint.host, endpoint.port)] = endpoint

    def all(self) -> list[Endpoint]:
        """Every endpoint created so far."""
        return list(self._by_address.values())

    def stats(self) -> PoolStats:
        """Pool figures summed over every endpoint."""
        idle = used = cap = 0
        for endpoint in self.all():
            s = endpoint.pools.stats()
            idle, used, cap = idle + s.idle, used + s.used, cap + s.max
        return PoolStats(idle=idle, used=used, max=cap, pending=0)

    def breaker_states(self, pool_attributes: dict[str, str]) -> list[tuple[dict[str, str], str]]:
        """One breaker-state series per endpoint, labelled with its address (few series: one per server)."""
        return [
            (
                {**pool_attributes, names.SERVER_ADDRESS: e.host, names.SERVER_PORT: str(e.port)},
                e.breaker.state.value,
            )
            for e in self.all()
        ]

    async def close(self, timeout: float) -> None:
        """Close every endpoint's pools (within ``timeout`` seconds) and stop their pipelines."""
        self.closed = True
        endpoints = self.all()
        await asyncio.gather(*(e.pools.close(timeout) for e in endpoints), return_exceptions=True)
        for endpoint in endpoints:
            endpoint.pipeline.close()


class Router(Protocol):
    """Maps calls to endpoints and keeps the map current."""

    endpoints: Endpoints

    async def start(self) -> None:
        """Discover the topology and open one connection (raises like a call would)."""

    def route(self, key: Key | None) -> Endpoint:
        """The endpoint to send a command on ``key`` to now (any endpoint for a keyless command). No I/O."""

    async def failed(self, endpoint: Endpoint, since: float) -> None:
        """An attempt on ``endpoint`` started at ``since`` (monotonic) failed on infrastructure: refresh the map.

        Never raises; concurrent failures share one refresh.
        """

    def redirected(self, error: rex.AskError) -> Endpoint:
        """The endpoint a MOVED/ASK reply points to (a MOVED also updates the map); raises ``error`` if unsupported."""

    async def reroute(self, key: Key | None, rejected: Endpoint) -> Endpoint | None:
        """After ``rejected``'s open breaker refused a call: refresh, and return the new owner if it changed."""

    async def close(self, timeout: float) -> None:
        """Close every endpoint and the router's own connections."""


class Refresher:
    """Runs a topology look-up once for a burst of failures: a failure seen before the last look-up finished, or
    within ``min_interval`` seconds of it, is covered by that look-up."""

    def __init__(self, lookup: Callable[[Endpoint | None], Awaitable[None]], min_interval: float = 0.05) -> None:
        self._lookup = lookup
        self._min_interval = min_interval
        self._lock = asyncio.Lock()
        self.done_at = float("-inf")

    async def refresh(self, since: float, avoid: Endpoint | None = None) -> bool:
        """Look the topology up unless a look-up finished after ``since``; False when it was skipped or failed."""
        async with self._lock:
            now = time.monotonic()
            if self.done_at >= since or now - self.done_at < self._min_interval:
                return False
            try:
                await self._lookup(avoid)
            except (rex.RedisError, OSError) as exc:
                _log.debug("redis topology refresh failed: %s", type(exc).__name__)
                return False
            finally:
                self.done_at = time.monotonic()
            return True

    async def refresh_if_older(self, age: float) -> None:
        """Look the topology up if the last look-up finished more than ``age`` seconds ago (no wait otherwise)."""
        if time.monotonic() - self.done_at > age and not self._lock.locked():
            await self.refresh(time.monotonic())
