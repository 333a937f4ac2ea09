"""Constants shared by the Redis tests (imported as ``redis_testing``: tests/redis is on sys.path under pytest)."""

from __future__ import annotations

from typing import Any

CLIENT_NAME = "ts-test-redis"
SECRET = "hunter2-secret-password"
FAST: dict[str, Any] = {
    "name": CLIENT_NAME,
    "retry": {"max_attempts": 4, "initial_backoff": 0.02, "max_backoff": 0.1, "jitter": 0.01, "deadline": 2.0},
    "breaker": {"fail_max": 3, "reset_timeout": 0.3},
    "socket_timeout": 1.0,
    "socket_connect_timeout": 0.5,
}
