"""Opt-in statement-level child spans from opentelemetry-instrumentation-asyncpg, scoped to this SDK's pools.

The contrib instrumentor patches ``asyncpg.Connection`` for the whole process, traces the pool's release-time reset
query and records full SQL for every connection in the app. Instead, its ``_do_execute`` wrapper (borrowed in
:mod:`trading_shared.compat.otel_asyncpg`) is applied only to a private ``Connection`` subclass that the SDK's
pool uses, and only while an SDK operation runs its statements (a context variable), so there is no reset-query
span and nothing at all when ``statement_spans`` is off. Parameters are never captured.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

_IN_OPERATION: contextvars.ContextVar[bool] = contextvars.ContextVar("trading_shared_statement_scope", default=False)
_TRACED_METHODS = ("execute", "executemany", "fetch", "fetchval", "fetchrow")


def statement_scope(active: bool) -> contextvars.Token[bool]:
    """Enter (or leave, with the returned token reset) the region where statements are traced."""
    return _IN_OPERATION.set(active)


def end_statement_scope(token: contextvars.Token[bool]) -> None:
    """Leave the region entered with :func:`statement_scope`."""
    _IN_OPERATION.reset(token)


def traced_connection_class(tracer_provider: Any | None) -> type[asyncpg.Connection]:
    """A ``Connection`` subclass whose statement methods open child spans inside SDK operations.

    Raises ImportError with an install hint when the instrumentation package is missing.
    """
    from ..compat.otel_asyncpg import statement_executor

    do_execute = statement_executor(tracer_provider)

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def traced(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
            if not _IN_OPERATION.get():
                return await method(self, *args, **kwargs)

            async def call(*a: Any, **kw: Any) -> Any:
                return await method(self, *a, **kw)

            return await do_execute(call, self, args, kwargs)

        traced.__name__ = method.__name__
        traced.__doc__ = method.__doc__
        return traced

    namespace = {name: wrap(getattr(asyncpg.Connection, name)) for name in _TRACED_METHODS}
    return type("StatementTracedConnection", (asyncpg.Connection,), namespace)
