"""Helpers about one asyncpg connection: lost-connection errors, read-only checks, the release hook."""

from __future__ import annotations

import asyncpg

from ..compat.asyncpg import connected_address
from ..telemetry.client import ClientTelemetry


def lost(cause: BaseException) -> BaseException:
    """The error to report for a statement refused because its connection was already closed."""
    if isinstance(cause, asyncpg.PostgresConnectionError | OSError):
        return cause
    error: BaseException = asyncpg.ConnectionDoesNotExistError("connection was closed before the request was sent")
    error.__cause__ = cause
    return error


def name_server(telemetry: ClientTelemetry, conn: asyncpg.Connection) -> None:
    """Point telemetry's ``server.address``/``server.port`` at the host a multi-host DSN's connect reached."""
    address = connected_address(conn)  # asyncpg keeps it private (trading_shared.compat.asyncpg)
    if address is not None:
        telemetry.set_server(*address)


def is_closed(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is unusable (asyncpg detaches the proxy of a connection the server closed)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def server_is_read_only(conn: asyncpg.Connection) -> bool:
    """After a 25006: whether the server refuses writes itself (standby, fenced primary), not the caller's own
    read-only transaction. A transaction the caller left open cannot be checked: the error stays the caller's.
    A check lost with the connection counts as read-only: the retry, on a new connection, checks again."""
    if conn.is_in_transaction():
        return False
    try:
        return bool(await conn.fetchval("SELECT current_setting('transaction_read_only') = 'on'"))
    except asyncpg.PostgresError:
        return False
    except Exception:
        return True


async def no_session_reset(conn: asyncpg.Connection) -> None:
    """The pool's release hook behind a transaction pooler: nothing beyond asyncpg's own rollback."""
