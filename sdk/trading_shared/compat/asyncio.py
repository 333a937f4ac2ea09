"""Private names of the standard library's asyncio: what a ``StreamReader`` has received but not yet handed out.

Fallback (docs/dependencies.md): without ``StreamReader._buffer``, :func:`buffered` returns ``b""`` and a request the
Redis server refused as a protocol error while it was being written is reported as a lost connection instead of the
server's ``ResponseError``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def buffered(reader: Any) -> bytes:
    """The bytes ``reader`` (an ``asyncio.StreamReader`` or None) holds unread, without consuming them."""
    return bytes(getattr(reader, "_buffer", b""))


def missing() -> list[str]:
    """The private names this module reads that this Python's asyncio lacks, described (empty: all there)."""
    if hasattr(asyncio.StreamReader(), "_buffer"):
        return []
    return [
        f"Python {sys.version.split()[0]} asyncio.StreamReader has no _buffer: the SDK falls back as "
        "docs/dependencies.md describes (see trading_shared.compat)"
    ]
