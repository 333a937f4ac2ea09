"""trading-shared: resilient, observable async clients for PostgreSQL and Redis.

Every call goes through one pipeline (circuit breaker, retries with backoff and a total deadline, error
classification by type and code) and emits OpenTelemetry spans and metrics through the application's providers.
"""

from .errors import (
    BulkWriteError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PoolExhaustedError,
    ServiceUnavailableError,
    TradingSharedError,
)
from .postgres import PostgresClient
from .redis import CustomRedisClient, RedisClient
from .resilience import BreakerState, set_testing
from .settings import BreakerSettings, PostgresSettings, RedisSettings, RetrySettings

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "BulkWriteError",
    "CircuitOpenError",
    "ConfigurationError",
    "CustomRedisClient",
    "DeadlineExceededError",
    "OutcomeUnknownError",
    "PoolExhaustedError",
    "PostgresClient",
    "PostgresSettings",
    "RedisClient",
    "RedisSettings",
    "RetrySettings",
    "ServiceUnavailableError",
    "TradingSharedError",
    "set_testing",
]
