"""How every RedisClient call reaches a server: lifecycle, the router of the deployment, and one call path.

The client always holds a router once connected (:mod:`.standalone`, :mod:`.sentinel`, :mod:`.cluster`): a call
asks it for the endpoint serving its key, runs through that endpoint's pipeline (breaker, retries, deadline, span)
with :class:`~.routing.RoutedCall` as the attempt, and, when an open breaker refused it before any attempt, asks
the router once whether another server now serves the key. The command methods (:mod:`.client`,
:mod:`.stream_commands`) only describe commands: what to send, on which key, and whether it may be re-sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ..errors import CircuitOpenError
from ..resilience.breaker import CircuitBreaker
from ..resilience.deadline import CallSteps
from ..resilience.faults import RequestNotSent
from ..resilience.pipeline import CallPipeline
from ..settings import RedisSettings
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from .bracketed import Wait
from .classify import ConnectFailed, RedisErrors
from .cluster import ClusterRouter, slot_of
from .endpoints import Endpoints, Key, Router
from .pool import Commands, Pools, QueuedCommand, connection_kwargs
from .routing import RoutedCall
from .sentinel import SentinelRouter
from .slot_batches import run_by_slot
from .standalone import StandaloneRouter

T = TypeVar("T")


class RedisBase:
    """Lifecycle and dispatch of :class:`~trading_shared.RedisClient` (see the module docstring)."""

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
        self._pipeline = CallPipeline(
            retry=self.settings.retry, breaker=self.breaker, errors=RedisErrors(), telemetry=self._telemetry
        )
        s = self.settings
        self._wait: Wait | None = (s.wait_replicas, round(s.wait_timeout * 1000)) if s.wait_replicas else None
        self._router: Router | None = None
        self._lock = asyncio.Lock()
        self._write_slots = asyncio.Semaphore(self.settings.write_concurrency_limit)
        self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)

    def __repr__(self) -> str:
        host, port, db = self.settings.target()
        state = "connected" if self._router is not None else "not connected"
        mode = "" if self.settings.mode == "standalone" else f" {self.settings.mode}"
        return f"<{type(self).__name__} {self.settings.name!r}{mode} {host}:{port}/{db} {state}>"

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    async def connect(self) -> Self:
        """Set the deployment up if it is not (concurrent callers share one set-up) and open one connection.

        In sentinel mode this finds the master; in cluster mode it reads the slot map.
        """
        if self._router is None:
            async with self._lock:
                if self._router is None:
                    await self._start_router()
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Disconnect every pooled connection within ``timeout`` seconds. Idempotent.

        Calls still in flight fail (their connections are closed under them) and are not re-sent: a retry of one
        raises RuntimeError. Any later call, or ``connect()``, opens a new pool.
        """
        async with self._lock:
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
        router = self._router
        if router is None or isinstance(router, ClusterRouter):
            return None
        return router.route(None).pools.main.connection_pool

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every server's breaker by ``host:port``: one in standalone mode, one per master (sentinel) or node
        (cluster) the client has talked to. A failing server opens its own breaker only."""
        if self._router is not None:
            return {e.name: e.breaker for e in self._router.endpoints.all()}
        host, port, _ = self.settings.target()
        return {f"{host}:{port}": self.breaker}

    # -- the call path -----------------------------------------------------------------------------------------------
    async def _call(
        self,
        operation: str,
        fn: Callable[[Commands], Awaitable[T]],
        *,
        idempotent: bool,
        blocking: float | None = None,
        key: Key | None = None,
        write: bool = False,
        several_requests: bool = False,
    ) -> T:
        """Run ``fn`` on the endpoint serving ``key`` through that endpoint's pipeline.

        ``several_requests``: ``fn`` may send several requests (a caller's ``run``), so once one of them has been
        sent, a later failure is read as :class:`~trading_shared.resilience.faults.PartlyApplied`.
        """
        router = self._router
        if router is None:
            steps = CallSteps(self.settings.retry.deadline)  # connect on demand: one deadline for both steps
            router = await self._connected()
            with steps.next():
                return await self._call(
                    operation,
                    fn,
                    idempotent=idempotent,
                    blocking=blocking,
                    key=key,
                    write=write,
                    several_requests=several_requests,
                )
        endpoint = router.route(key)
        endpoints = router.endpoints
        routed = RoutedCall(
            router,
            key,
            fn,
            blocking=blocking,
            write=write,
            telemetry=self._telemetry,
            is_open=lambda: not endpoints.closed,
            several_requests=several_requests,
        )
        attempt, failed, extra = routed.attempt, routed.failed, blocking or 0.0
        try:
            return await endpoint.pipeline.call(
                operation, attempt, idempotent=idempotent, extra_time=extra, on_failure=failed
            )
        except CircuitOpenError as rejected:
            if rejected.attempts:
                raise  # rejected after attempts on this endpoint: its outcome stands
            other = await router.reroute(key, endpoint)  # the slot or the master may have moved meanwhile
            if other is None:
                raise
        return await other.pipeline.call(operation, attempt, idempotent=idempotent, extra_time=extra, on_failure=failed)

    async def _run_stack(
        self,
        stack: list[QueuedCommand],
        send: Callable[[Commands], Awaitable[list[Any]]],
        *,
        operation: str,
        transaction: bool,
        idempotent: bool,
        raise_on_error: bool,
        write: bool,
    ) -> list[Any]:
        """Send queued commands (a Redis pipeline): with ``send`` in one round trip, or grouped by slot (cluster)."""
        router = self._router
        if isinstance(router, ClusterRouter):
            return await run_by_slot(
                self._call,
                router,
                stack,
                operation=operation,
                transaction=transaction,
                idempotent=idempotent,
                raise_on_error=raise_on_error,
                write=write,
            )
        replies: list[Any] = await self._call(operation, send, idempotent=idempotent, write=write)
        return replies

    def _slot_groups(self, keys: Sequence[Key]) -> list[list[Key]]:
        """``keys`` grouped so that each group can go in one command: by hash slot in cluster mode, else one group."""
        if self.settings.mode != "cluster":
            return [list(keys)]
        groups: dict[int, list[Key]] = {}
        for k in keys:
            groups.setdefault(slot_of(k), []).append(k)
        return list(groups.values())

    async def _connected(self) -> Router:
        """The router, connecting first if needed."""
        await self.connect()
        router = self._router
        if router is None:  # closed again by a concurrent close()
            raise RuntimeError("RedisClient was closed during connect()")
        return router

    async def _start_router(self) -> None:
        """Set up the deployment (sentinel: find the master; cluster: read the slot map) through the connect
        pipeline, and open one connection."""
        settings = self.settings
        router: Router
        if settings.mode == "sentinel":
            router = SentinelRouter(
                settings,
                self._kwargs,
                self._telemetry,
                lambda check: Endpoints(settings, self._kwargs, self._telemetry, self._wait, master_check=check),
            )
        elif settings.mode == "cluster":
            router = ClusterRouter(settings, Endpoints(settings, self._kwargs, self._telemetry, self._wait))
        else:
            host, port, _ = settings.target()
            pools = Pools(self._kwargs, settings, timing=self._telemetry)
            endpoints = Endpoints(settings, self._kwargs, self._telemetry, self._wait)
            router = StandaloneRouter(endpoints, host, port, pools, self._pipeline)

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

    def _pool_stats(self) -> PoolStats | None:
        router = self._router
        return router.endpoints.stats() if router is not None else None

    def _breaker_states(self) -> list[tuple[dict[str, str], str]]:
        router = self._router
        if router is None or isinstance(router, StandaloneRouter):  # one server: the series keeps no address
            return [(self._telemetry.pool_attributes, self.breaker.state.value)]
        return router.endpoints.breaker_states(self._telemetry.pool_attributes)
