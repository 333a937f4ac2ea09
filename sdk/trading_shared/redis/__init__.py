"""Redis: :class:`RedisClient` over redis.asyncio, its error classification, streams and bulk appends.

Imports of the real ``redis`` package in this subpackage are absolute (``import redis.asyncio``), so the name of
this subpackage never shadows it.
"""

from .classify import RedisErrors
from .client import CustomRedisClient, RedisClient
from .streams import ClaimResult, StreamEntry

__all__ = ["ClaimResult", "CustomRedisClient", "RedisClient", "RedisErrors", "StreamEntry"]
