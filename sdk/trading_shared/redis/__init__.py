"""Redis: :class:`RedisClient` over redis.asyncio, its error classification, streams and bulk appends.

Deployments (``RedisSettings.mode``): standalone, Sentinel (:mod:`.sentinel`) and Cluster (:mod:`.cluster`); see
docs/redis-standalone.md. The errors exported here are the ``__cause__`` of the SDK's errors in those modes.

Imports of the real ``redis`` package in this subpackage are absolute (``import redis.asyncio``), so the name of
this subpackage never shadows it.
"""

from .classify import (
    MasterChangedError,
    MasterNotFoundError,
    NotMasterError,
    NotReplicatedError,
    PlaintextServerError,
    RedisErrors,
    TooManyRedirects,
)
from .client import CustomRedisClient, RedisClient
from .streams import ClaimResult, StreamEntry

__all__ = [
    "ClaimResult",
    "CustomRedisClient",
    "MasterChangedError",
    "MasterNotFoundError",
    "NotMasterError",
    "NotReplicatedError",
    "PlaintextServerError",
    "RedisClient",
    "RedisErrors",
    "StreamEntry",
    "TooManyRedirects",
]
