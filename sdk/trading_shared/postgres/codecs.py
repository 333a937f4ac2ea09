"""json and jsonb as Python objects, encoded with orjson (what the replaced client used), in binary format.

Binary format: COPY (``copy_upsert``, ``copy_records``) only takes binary codecs; a text-format codec made it fail
with "no binary format encoder for type jsonb". jsonb's binary form is a version byte (1) and the JSON text.

Encoding (:func:`dumps`) is orjson's, so a ``model_dump()`` encodes as it did on the replaced client: ``datetime``,
``date`` and ``time`` as ISO 8601 (RFC 3339) strings, ``UUID`` as its canonical string, enums as their values,
dataclasses as objects, NaN and infinities as ``null``, non-string dict keys as strings (as ``json.dumps`` did).
On top of that, a finite ``Decimal`` is written as the exact JSON number (``Decimal("1.10")`` -> ``1.10``); the
replaced client raised on it. Integers beyond orjson's 64 bits are written exactly (a second, slower pass) and what
only ``json.dumps`` encodes (strings with lone surrogates) goes to it, so everything the SDK encoded before still
encodes. Anything else raises ``TypeError`` (asyncpg reports it as ``asyncpg.DataError``, the caller's error).

Decoding uses orjson too, except for documents with a run of 19 or more digits: orjson reads integers beyond
64 bits as floats, ``json.loads`` keeps them exact, so those documents go to ``json.loads``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def _default(value: Any) -> Any:
    """orjson's hook for the types it lacks: a finite Decimal becomes the exact JSON number."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value).encode())  # str() of a finite Decimal is a valid JSON number
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _wide_ints(value: Any) -> Any:
    """``value`` with integers beyond orjson's 64 bits replaced by their exact JSON numbers (as fragments)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else orjson.Fragment(str(int(value)).encode())
    if isinstance(value, dict):
        return {key: _wide_ints(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_wide_ints(item) for item in value]
    return value


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON bytes (orjson; ``json.dumps`` for what only it can encode). See the module doc."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError as exc:
        try:  # rare: an integer beyond 64 bits (exact, beside datetimes too), or a lone surrogate (json.dumps)
            return orjson.dumps(_wide_ints(value), default=_default, option=_OPTIONS)
        except (TypeError, RecursionError):
            pass
        try:
            return json.dumps(value).encode()
        except (TypeError, ValueError):
            raise exc from None


def _long_number(data: bytes) -> bool:
    """Whether ``data`` has a run of 19 or more digits (two C passes: cheaper than a regex or the parse itself)."""
    return _LONG_RUN in data.translate(_DIGITS_TO_ZERO)


def loads(data: bytes) -> Any:
    """Decode JSON bytes; integers beyond 64 bits stay exact."""
    return json.loads(data) if _long_number(data) else orjson.loads(data)


def _json_bytes(value: Any) -> bytes:
    return dumps(value)


def _jsonb_bytes(value: Any) -> bytes:
    return b"\x01" + dumps(value)


def _jsonb_load(data: bytes) -> Any:
    # the version byte (1) is no digit: scan the whole buffer, parse past it without a copy
    return json.loads(data[1:]) if _long_number(data) else orjson.loads(memoryview(data)[1:])


async def register(conn: asyncpg.Connection) -> None:
    """Install the json and jsonb codecs on a new connection."""
    await conn.set_type_codec("json", encoder=_json_bytes, decoder=loads, schema="pg_catalog", format="binary")
    await conn.set_type_codec("jsonb", encoder=_jsonb_bytes, decoder=_jsonb_load, schema="pg_catalog", format="binary")


__all__ = ["dumps", "loads", "register"]
