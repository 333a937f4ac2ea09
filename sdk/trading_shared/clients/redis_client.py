"""Deprecated import path of the replaced Redis client: use ``from trading_shared import RedisClient``.

``CustomRedisClient`` and ``RedisClient`` here are the SDK's classes (``CustomRedisClient`` warns when built).
Importing this module warns once per process.
"""

from __future__ import annotations

import warnings

from ..redis.client import CustomRedisClient, RedisClient

__all__ = ["CustomRedisClient", "RedisClient"]

warnings.warn(
    "trading_shared.clients.redis_client is deprecated; import RedisClient from trading_shared "
    "(from trading_shared import RedisClient)",
    DeprecationWarning,
    stacklevel=2,
)
