"""The replaced client's PostgreSQL surface, kept so the services' code runs unchanged (see docs/migration.md).

Every method here is a deprecated alias that warns (``DeprecationWarning`` naming the new spelling) and goes
through the same pipeline as the SDK's own methods: circuit breaker, retries under the idempotency rules, spans
and metrics. None of them catches an error: infrastructure failures end in the SDK's typed errors (builtin
``ConnectionError`` subclasses, as the replaced client raised), the caller's own errors in asyncpg's exception.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

if TYPE_CHECKING:
    from ..settings import PostgresSettings

T = TypeVar("T")

#: The telemetry operation of :meth:`LegacyMethods.execute_resiliently` (the caller's label is not used: unbounded).
EXECUTE_RESILIENTLY = "execute_resiliently"


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"PostgresClient.{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


class LegacyMethods:
    """Deprecated methods and attributes of the replaced ``PostgresClient``, with their old call and return shapes."""

    if TYPE_CHECKING:
        settings: PostgresSettings

        async def connect(self) -> Any:
            """Provided by PostgresClient."""
            ...

        async def run(self, operation: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], idempotent: bool) -> T:
            """Provided by PostgresClient."""
            ...

        @property
        def pool(self) -> asyncpg.Pool | None:
            """Provided by PostgresClient."""
            ...

    async def execute_resiliently(
        self,
        command_func: Callable[[asyncpg.Connection], Awaitable[T]],
        command_name_for_logging: str,
        *,
        idempotent: bool = False,
    ) -> T:
        """Deprecated: use :meth:`run`. Run ``command_func(connection)`` through the pipeline; return its result.

        The replaced client re-ran the callback after any connection error, even when it wrote. Here it is re-run
        only when ``idempotent=True`` (or the failure happened before it was called, e.g. connecting); otherwise a
        failure after its requests may have reached the server raises
        :class:`~trading_shared.errors.OutcomeUnknownError`. ``command_name_for_logging`` is accepted and not used:
        spans and metrics name the operation ``execute_resiliently`` (a caller-made label would be unbounded).
        """
        _deprecated("execute_resiliently()", "run(operation, fn, idempotent=...)")
        del command_name_for_logging
        return await self.run(EXECUTE_RESILIENTLY, command_func, idempotent)

    async def ensure_pool_is_ready(self) -> asyncpg.Pool:
        """Deprecated: use :meth:`connect`. Create the pool if there is none (through the pipeline) and return it.

        The raw ``asyncpg.Pool`` it returns bypasses retries, the breaker and telemetry, as :attr:`pool` does.
        """
        _deprecated("ensure_pool_is_ready()", "connect()")
        return await self._raw_pool()

    async def start_pool(self) -> asyncpg.Pool:
        """Deprecated: use :meth:`connect`. Same as :meth:`ensure_pool_is_ready`."""
        _deprecated("start_pool()", "connect()")
        return await self._raw_pool()

    @property
    def postgres_settings(self) -> PostgresSettings:
        """Deprecated: use :attr:`settings`."""
        _deprecated("postgres_settings", "settings")
        return self.settings

    @property
    def dsn(self) -> str:
        """Deprecated: use ``settings.resolved_dsn()`` (a ``SecretStr``). The DSN as a plain string, password included.

        Never log it.
        """
        _deprecated("dsn", "settings.resolved_dsn().get_secret_value()")
        return self.settings.resolved_dsn().get_secret_value()

    async def _raw_pool(self) -> asyncpg.Pool:
        await self.connect()
        pool = self.pool
        if pool is None:
            raise RuntimeError("PostgresClient was closed during connect()")
        return pool


__all__ = ["EXECUTE_RESILIENTLY", "LegacyMethods"]
