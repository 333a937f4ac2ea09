"""Private names of asyncpg: the address a connection reached.

Fallback (docs/dependencies.md): without ``Connection._addr``, :func:`connected_address` returns None and a client
with a multi-host DSN keeps reporting the first host as ``server.address``/``server.port``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from . import describe_missing


def connected_address(conn: Any) -> tuple[str, int] | None:
    """``(host, port)`` that ``conn`` connected to, or None (a Unix socket, or asyncpg renamed the attribute)."""
    address = getattr(conn, "_addr", None)  # asyncpg keeps it on the connection; no public accessor
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def missing() -> list[str]:
    """The private names this module reads that the installed asyncpg lacks, described (empty: all there)."""
    slots = {name for klass in asyncpg.Connection.__mro__ for name in getattr(klass, "__slots__", ())}
    return [] if "_addr" in slots else describe_missing("asyncpg", ["Connection._addr"])
