"""Fixtures for PostgresClient tests: short fault timeouts and in-memory telemetry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.otel import Otel
from trading_shared import PostgresClient, PostgresSettings

FAST = {
    "retry": {"max_attempts": 4, "initial_backoff": 0.02, "max_backoff": 0.1, "jitter": 0.01, "deadline": 3.0},
    "breaker": {"fail_max": 3, "reset_timeout": 0.5},
    "connect_timeout": 1.0,
    "acquire_timeout": 1.0,
    "command_timeout": 5.0,
    "application_name": "ts-test",
}


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


@pytest.fixture
def make_pg(pg_dsn: str, otel: Otel) -> Callable[..., PostgresClient]:
    """Build a client on this test's database with fast fault settings; extra kwargs override settings."""

    def make(**overrides: Any) -> PostgresClient:
        values: dict[str, Any] = {"dsn": pg_dsn, **FAST, **overrides}
        return PostgresClient(PostgresSettings(**values), **otel.providers())

    return make
