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
from .lifecycle import ManagedClient, Resources
from .postgres import PostgresClient
from .redis import CustomRedisClient, RedisClient
from .resilience import BreakerState, set_testing
from .service import Service, run_service
from .settings import BreakerSettings, PostgresSettings, RedisSettings, RetrySettings

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "BulkWriteError",
    "CircuitOpenError",
    "ConfigurationError",
    "CustomRedisClient",
    "DeadlineExceededError",
    "ManagedClient",
    "OutcomeUnknownError",
    "PoolExhaustedError",
    "PostgresClient",
    "PostgresSettings",
    "RedisClient",
    "RedisSettings",
    "Resources",
    "RetrySettings",
    "Service",
    "ServiceUnavailableError",
    "TradingSharedError",
    "run_service",
    "set_testing",
]
