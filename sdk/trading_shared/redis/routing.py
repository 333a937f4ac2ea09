"""One attempt of a call in sentinel or cluster mode: pick the endpoint, follow redirections, report failures.

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
from typing import TypeVar

import redis.exceptions as rex
from opentelemetry import trace

from ..errors import TradingSharedError
from ..resilience.faults import Fault, PartlyApplied, RequestNotSent
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from .classify import ConnectFailed, MasterChangedError, RedisErrors, TooManyRedirects
from .cluster import MAX_REDIRECTS
from .connection import SENT, not_sent
from .endpoints import Endpoint, Key, Router
from .pool import BLOCK_SECONDS, Commands

T = TypeVar("T")
_ERRORS = RedisErrors()


def routed_attempt(
    router: Router,
    key: Key | None,
    fn: Callable[[Commands], Awaitable[T]],
    *,
    blocking: float | None,
    write: bool,
    telemetry: ClientTelemetry,
    is_open: Callable[[], bool],
    several_requests: bool = False,
) -> Callable[[], Awaitable[T]]:
    """The attempt function for :meth:`CallPipeline.call <trading_shared.resilience.pipeline.CallPipeline.call>`.

    ``several_requests``: ``fn`` may send several requests; once one was sent, later failures come out as
    PartlyApplied."""

    async def attempt() -> T:
        if not is_open():
            raise RuntimeError("RedisClient was closed while this call was in flight")
        sent = [0] if several_requests else None
        counting = SENT.set(sent) if sent is not None else None
        try:
            return await routed()
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

    async def routed() -> T:
        endpoint = router.route(key)
        asking = False
        for _ in range(MAX_REDIRECTS + 1):
            _name_server(endpoint)
            commands = endpoint.commands.get(write=write, asking=asking, blocking=blocking is not None)
            started = time.monotonic()
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
                await router.failed(endpoint, started)
                raise
            except rex.MaxConnectionsError:
                telemetry.pool_timeout()
                raise
            except Exception as exc:
                inner = exc.original if isinstance(exc, PartlyApplied) else exc
                fault = _ERRORS.classify(inner)
                if fault is Fault.INDETERMINATE and endpoint.superseded:
                    _master_changed(endpoint)
                    if isinstance(exc, PartlyApplied):
                        raise
                    raise MasterChangedError(f"{endpoint.name} stopped being the master during the call") from exc
                if fault.infrastructure:
                    await router.failed(endpoint, started)
                raise
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} MOVED/ASK redirections")

    return attempt


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
