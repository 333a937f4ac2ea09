"""A call's attempts in sentinel or cluster mode: pick the endpoint, follow redirections, report failures.

The pipeline (breaker, retries, deadline, span) is the one of the endpoint chosen when the call started; each
attempt asks the router again, so a retry after a failover or a resharding goes to the new owner. The span of the
call is made current during attempts, and each attempt sets ``server.address`` / ``server.port`` on it to the
server that is asked: the last one set is the server that answered (or failed last).

A MOVED/ASK reply re-runs the call's whole ``fn`` on the node named. Every ``fn`` of the client sends one command on
one key, or commands that are safe to repeat; a ``fn`` given to :meth:`~trading_shared.RedisClient.run` in cluster
mode should do the same (one key, or idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import redis.exceptions as rex
from opentelemetry import trace

from ..errors import TradingSharedError
from ..resilience.faults import Fault, PartlyApplied, RequestNotSent
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from .classify import ConnectFailed, MasterChangedError, TooManyRedirects
from .cluster import MAX_REDIRECTS
from .connection import SENT, not_sent
from .endpoints import Endpoint, Key, Router
from .pool import BLOCK_SECONDS, Commands

T = TypeVar("T")


class RoutedCall(Generic[T]):
    """One call in sentinel or cluster mode: :attr:`attempt` for the pipeline, and :meth:`failed`, its
    ``on_failure``, through which the router learns of the pipeline's classification of each failed attempt."""

    __slots__ = ("_blocking", "_connect_failed", "_endpoint", "_fn", "_is_open", "_key", "_router", "_sent",
                 "_started", "_telemetry", "_write")  # fmt: skip

    def __init__(
        self,
        router: Router,
        key: Key | None,
        fn: Callable[[Commands], Awaitable[T]],
        *,
        blocking: float | None,
        write: bool,
        telemetry: ClientTelemetry,
        is_open: Callable[[], bool],
        several_requests: bool = False,
    ) -> None:
        """``several_requests``: ``fn`` may send several requests; once one was sent, later failures come out as
        PartlyApplied."""
        self._router = router
        self._key = key
        self._fn = fn
        self._blocking = blocking
        self._write = write
        self._telemetry = telemetry
        self._is_open = is_open
        self._sent = several_requests
        #: The endpoint the last request of the attempt went to, when it started, and whether its connect failed.
        self._endpoint: Endpoint | None = None
        self._started = 0.0
        self._connect_failed = False

    async def attempt(self) -> T:
        """One attempt: route, send, follow MOVED/ASK; connect failures come out as not sent."""
        if not self._is_open():
            raise RuntimeError("RedisClient was closed while this call was in flight")
        self._endpoint = None
        sent = [0] if self._sent else None
        counting = SENT.set(sent) if sent is not None else None
        try:
            return await self._routed()
        except ConnectFailed as exc:
            raise not_sent(exc, sent) from exc.original
        except PartlyApplied:
            raise
        except Exception as exc:
            if sent is not None and sent[0] > 1 and not isinstance(exc, TradingSharedError | RequestNotSent):
                raise PartlyApplied(exc) from exc  # an earlier request of this attempt was sent
            raise
        finally:
            if counting is not None:
                SENT.reset(counting)

    async def failed(self, error: BaseException, fault: Fault) -> BaseException | None:
        """The pipeline's ``on_failure``: a master that changed during the request turns an unknown outcome into
        :class:`MasterChangedError`; an infrastructure failure (or a failed connect) makes the router look again."""
        endpoint = self._endpoint
        if endpoint is None:  # failed before a request was routed (closed client, too many redirections)
            return None
        if fault is Fault.INDETERMINATE and endpoint.superseded:
            _master_changed(endpoint)
            replacement = MasterChangedError(f"{endpoint.name} stopped being the master during the call")
            replacement.__cause__ = error
            return replacement
        if fault.infrastructure or self._connect_failed:
            await self._router.failed(endpoint, self._started)
        return None

    async def _routed(self) -> T:
        router, fn, blocking = self._router, self._fn, self._blocking
        endpoint = router.route(self._key)
        asking = False
        for _ in range(MAX_REDIRECTS + 1):
            _name_server(endpoint)
            commands = endpoint.commands.get(write=self._write, asking=asking, blocking=blocking is not None)
            self._endpoint, self._started, self._connect_failed = endpoint, time.monotonic(), False
            try:
                if blocking is None:
                    return await fn(commands)
                token = BLOCK_SECONDS.set(blocking)
                try:
                    return await fn(commands)
                finally:
                    BLOCK_SECONDS.reset(token)
            except rex.AskError as redirect:  # MOVED (a subclass) or ASK: not executed, re-send to the node named
                endpoint = router.redirected(redirect)
                asking = not isinstance(redirect, rex.MovedError)
            except ConnectFailed:  # the connection could not be opened: this request was not sent
                self._connect_failed = True
                raise
            except rex.MaxConnectionsError:
                self._telemetry.pool_timeout()
                raise
        self._endpoint = None
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} MOVED/ASK redirections")


def _master_changed(endpoint: Endpoint) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            names.EVENT_MASTER_CHANGED, {names.SERVER_ADDRESS: endpoint.host, names.SERVER_PORT: endpoint.port}
        )


def _name_server(endpoint: Endpoint) -> None:
    attributes = endpoint.span_attributes
    if attributes is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
