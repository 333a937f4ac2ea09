"""Private PostgreSQL and Redis servers for tests, with fault injection (stop, kill, freeze).

Re-exports the public API of :mod:`support.pg_server`, :mod:`support.redis_server` and the port helper.
"""

from __future__ import annotations

from .pg_server import SECURED_PASSWORD, SECURED_ROLE, PostgresServer, RestartMode, StopMode, find_pg_bindir
from .procs import ServerBinaryMissing, ServerError, cleanup_all, free_port
from .redis_server import RedisReplyError, RedisServer, find_redis_server, resp_command

__all__ = [
    "SECURED_PASSWORD",
    "SECURED_ROLE",
    "PostgresServer",
    "RedisReplyError",
    "RedisServer",
    "RestartMode",
    "ServerBinaryMissing",
    "ServerError",
    "StopMode",
    "cleanup_all",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
    "resp_command",
]
