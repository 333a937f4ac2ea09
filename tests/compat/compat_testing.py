"""Settings shared by the contract tests (imported as ``compat_testing``: tests/compat is on sys.path)."""

from __future__ import annotations

from typing import Any

FAST: dict[str, Any] = {
    "name": "ts-test-compat",
    "retry": {"max_attempts": 3, "initial_backoff": 0.02, "max_backoff": 0.1, "jitter": 0.01, "deadline": 2.0},
    "breaker": {"fail_max": 50, "reset_timeout": 0.3},
    "socket_timeout": 1.0,
    "socket_connect_timeout": 0.5,
}
