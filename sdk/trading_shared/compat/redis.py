"""Private names of redis-py: a connection's stream reader/writer, its TLS connect hooks, ``BaseParser``.

The SDK's :class:`~trading_shared.redis.connection.SSLConnection` overrides redis-py's ``_connect`` and
``_connection_arguments`` hooks (:data:`CONNECT_HOOKS`) to open TCP first and run the TLS handshake after it; the
parent implementations are reached through :func:`parent_connect` and :func:`parent_connection_arguments`.

Fallbacks (docs/dependencies.md): without ``_reader``/``_writer`` the accessors return None, so a transport closed
after the pool's check is found by the write instead of before it (the failure is then a lost connection, not a
connect failure), and a ``-ERR Protocol error`` refusal is reported as a lost connection. Without ``BaseParser``, the
refusal is parsed as a plain ``ResponseError``. Without the connect hooks the TLS connection cannot split TCP from
the handshake: :func:`missing` reports it (the plaintext-port diagnosis needs them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio.connection as rconn
import redis.exceptions as rex

from . import describe_missing

try:
    from redis._parsers.base import BaseParser as _BaseParser
except ImportError:  # pragma: no cover - depends on the installed redis-py
    _BaseParser = None  # type: ignore[assignment,misc]

#: redis-py's private hooks that the SDK's TLS connection overrides.
CONNECT_HOOKS = ("_connect", "_connection_arguments")


def stream_reader(conn: Any) -> asyncio.StreamReader | None:
    """The connection's asyncio stream reader, or None (not connected, or redis-py renamed it)."""
    reader: asyncio.StreamReader | None = getattr(conn, "_reader", None)
    return reader


def stream_writer(conn: Any) -> asyncio.StreamWriter | None:
    """The connection's asyncio stream writer, or None (not connected, or redis-py renamed it)."""
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    return writer


def drop_streams(conn: Any) -> None:
    """Forget the connection's streams after the SDK closed them itself (as redis-py does on disconnect)."""
    conn._reader = conn._writer = None


async def parent_connect(conn: rconn.SSLConnection) -> None:
    """redis-py's own ``_connect`` of a TLS connection (called from the SDK's override)."""
    await rconn.SSLConnection._connect(conn)  # type: ignore[no-untyped-call]


def parent_connection_arguments(conn: rconn.SSLConnection) -> dict[str, Any]:
    """redis-py's own ``_connection_arguments`` of a TLS connection (called from the SDK's override)."""
    return dict(rconn.SSLConnection._connection_arguments(conn))


def parse_error(message: str) -> rex.RedisError:
    """The exception redis-py raises for the error reply ``message`` (without the leading ``-``)."""
    if _BaseParser is None:
        return rex.ResponseError(message)
    error: rex.RedisError = _BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


def missing() -> list[str]:
    """The private names this module uses that the installed redis-py lacks, described (empty: all there)."""
    gone = [f"SSLConnection.{hook}" for hook in CONNECT_HOOKS if not callable(getattr(rconn.SSLConnection, hook, None))]
    if _BaseParser is None or not callable(getattr(_BaseParser, "parse_error", None)):
        gone.append("redis._parsers.base.BaseParser.parse_error")
    probe = rconn.Connection()
    gone += [f"Connection.{name}" for name in ("_reader", "_writer") if not hasattr(probe, name)]
    return describe_missing("redis", gone)
