"""The replaced clients' settings names: deprecated aliases, conflicts, environment variables."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import pytest
from pydantic import ValidationError

from trading_shared import ConfigurationError, PostgresSettings, RedisSettings, RetrySettings

# How the replaced models were built by the services (config/models.py): every field by its old name.
OLD_POSTGRES: dict[str, Any] = {
    "user": "svc",
    "password": "p@ss",
    "host": "db.internal",
    "port": 6432,
    "db": "trading",
    "pool_min_size": 2,
    "pool_max_size": 8,
    "command_timeout": 30,
    "max_retries": 3,
    "initial_retry_delay_s": 0.5,
}
OLD_REDIS: dict[str, Any] = {
    "url": "redis://cache:6379",
    "db": 2,
    "password": "secret",
    "write_concurrency_limit": 4,
    "socket_connect_timeout": 2,
    "max_connections": 30,
    "pubsub_max_connections": 50,
    "max_retries": 3,
    "initial_retry_delay_s": 0.5,
}


def test_every_old_postgres_field_is_accepted_with_a_warning_naming_the_new_spelling() -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        s = PostgresSettings(**OLD_POSTGRES)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "PostgresSettings.initial_retry_delay_s is deprecated; use retry.initial_backoff",
        "PostgresSettings.max_retries is deprecated; use retry.max_attempts",
        "PostgresSettings.pool_max_size is deprecated; use max_size",
        "PostgresSettings.pool_min_size is deprecated; use min_size",
    ]
    assert all(w.filename == __file__ for w in caught)  # points at the code that built the settings
    assert (s.min_size, s.max_size, s.command_timeout) == (2, 8, 30.0)
    # max_retries counted attempts: the replaced client ran `for attempt in range(max_retries)`
    assert s.retry.max_attempts == 3
    assert s.retry.initial_backoff == 0.5
    assert s.resolved_dsn().get_secret_value() == "postgresql://svc:p%40ss@db.internal:6432/trading"


def test_every_old_redis_field_is_accepted_pubsub_max_connections_ignored() -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        s = RedisSettings(**OLD_REDIS)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "RedisSettings.initial_retry_delay_s is deprecated; use retry.initial_backoff",
        "RedisSettings.max_retries is deprecated; use retry.max_attempts",
        "RedisSettings.pubsub_max_connections is deprecated and ignored: pub/sub connections come from the one "
        "pool, sized by max_connections",
    ]
    assert (s.retry.max_attempts, s.retry.initial_backoff, s.max_connections, s.db) == (3, 0.5, 30, 2)
    assert "pubsub_max_connections" not in s.model_dump()


def test_old_names_read_as_deprecated_properties() -> None:
    s = PostgresSettings(min_size=2, max_size=9, retry=RetrySettings(max_attempts=4, initial_backoff=0.2))
    with pytest.warns(DeprecationWarning, match=r"pool_min_size is deprecated; use min_size"):
        assert s.pool_min_size == 2
    with pytest.warns(DeprecationWarning, match=r"pool_max_size is deprecated; use max_size"):
        assert s.pool_max_size == 9
    with pytest.warns(DeprecationWarning, match=r"max_retries is deprecated; use retry.max_attempts"):
        assert s.max_retries == 4
    r = RedisSettings(retry=RetrySettings(initial_backoff=0.3))
    with pytest.warns(DeprecationWarning, match=r"initial_retry_delay_s is deprecated; use retry.initial_backoff"):
        assert r.initial_retry_delay_s == 0.3


@pytest.mark.parametrize(
    ("model", "old", "new"),
    [
        (PostgresSettings, {"pool_min_size": 2}, {"min_size": 3}),
        (PostgresSettings, {"pool_max_size": 4}, {"max_size": 5}),
        (PostgresSettings, {"max_retries": 3}, {"retry": {"max_attempts": 4}}),
        (PostgresSettings, {"initial_retry_delay_s": 0.5}, {"retry": RetrySettings(initial_backoff=0.2)}),
        (RedisSettings, {"max_retries": 2}, {"retry": {"max_attempts": 5}}),
    ],
)
def test_a_conflicting_pair_is_a_configuration_error_naming_both(
    model: type[PostgresSettings | RedisSettings], old: dict[str, Any], new: dict[str, Any]
) -> None:
    (old_name,) = old
    with pytest.warns(DeprecationWarning, match="is deprecated"), pytest.raises(ConfigurationError) as info:
        model(**old, **new)
    message = str(info.value)
    assert f"{model.__name__}.{old_name} and {model.__name__}." in message
    assert "different values" in message
    assert isinstance(info.value, ValueError)
    # model_validate() (e.g. settings nested in a service's own model): pydantic wraps it in a ValidationError
    with pytest.warns(DeprecationWarning, match="is deprecated"), pytest.raises(ValidationError) as validated:
        model.model_validate({**old, **new})
    assert isinstance(validated.value.errors()[0]["ctx"]["error"], ConfigurationError)


def test_the_same_value_under_both_names_is_not_a_conflict() -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        s = PostgresSettings(pool_min_size=2, min_size=2, max_retries="4", retry={"max_attempts": 4})
    assert (s.min_size, s.retry.max_attempts) == (2, 4)


def test_old_values_keep_the_new_fields_validation() -> None:
    with (
        pytest.warns(DeprecationWarning, match="is deprecated"),
        pytest.raises(ValidationError, match="min_size must be <= max_size"),
    ):
        PostgresSettings(pool_min_size=6, pool_max_size=5)
    with pytest.warns(DeprecationWarning, match="is deprecated"), pytest.raises(ValidationError, match="max_attempts"):
        PostgresSettings(max_retries=0)
    with pytest.raises(ValidationError, match=r"pool_min_size: must be an integer \(deprecated alias of min_size\)"):
        PostgresSettings(pool_min_size="two")
    with pytest.raises(ValidationError, match="extra"):
        PostgresSettings(pool_size=3)  # anything else is still rejected


def test_old_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("POSTGRES_POOL_MAX_SIZE", "6")
    monkeypatch.setenv("POSTGRES_MAX_RETRIES", "3")
    monkeypatch.setenv("postgres_initial_retry_delay_s", "0.25")
    monkeypatch.setenv("REDIS_PUBSUB_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("REDIS_MAX_RETRIES", "2")
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        s = PostgresSettings()
    assert (s.min_size, s.max_size, s.retry.max_attempts, s.retry.initial_backoff) == (2, 6, 3, 0.25)
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        assert RedisSettings().retry.max_attempts == 2
    monkeypatch.setenv("POSTGRES_MIN_SIZE", "3")  # the new spelling too, differently: a conflict
    with (
        pytest.warns(DeprecationWarning, match="is deprecated"),
        pytest.raises(ConfigurationError, match=r"pool_min_size and .*min_size"),
    ):
        PostgresSettings()
    monkeypatch.setenv("POSTGRES_RETRY__MAX_ATTEMPTS", "3")  # nested new spelling, same value: fine
    monkeypatch.setenv("POSTGRES_MIN_SIZE", "2")
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        assert PostgresSettings().retry.max_attempts == 3


def test_old_settings_import_path_is_the_sdk_classes_and_warns_once() -> None:
    sys.modules.pop("trading_shared.config.models", None)
    with pytest.warns(DeprecationWarning, match=r"from trading_shared import PostgresSettings, RedisSettings"):
        old = importlib.import_module("trading_shared.config.models")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("trading_shared.config.models")  # a second import: no second warning
    assert old.PostgresSettings is PostgresSettings
    assert old.RedisSettings is RedisSettings
    # the replaced health-check script's call
    assert old.RedisSettings(url="redis://redis-stack:6379", password=None, db=0).target() == ("redis-stack", 6379, 0)
