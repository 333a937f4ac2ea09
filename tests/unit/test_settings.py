"""Settings: validation that names the field, secrets that never show, environment loading."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from trading_shared import BulkWriteError, PostgresSettings, RedisSettings, RetrySettings, ServiceUnavailableError


def test_parts_build_a_dsn_with_quoted_credentials() -> None:
    s = PostgresSettings(user="svc", password="p@ss:w/rd", host="db", port=6432, db="trading")
    assert s.resolved_dsn().get_secret_value() == "postgresql://svc:p%40ss%3Aw%2Frd@db:6432/trading"
    assert s.target() == ("db", 6432, "trading")


def test_dsn_target_has_no_credentials() -> None:
    s = PostgresSettings(dsn="postgresql://u:hunter2@h1:5433,h2:5434/prices?target_session_attrs=read-write")
    assert s.target() == ("h1", 5433, "prices")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 0}, "port"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": 9, "max_size": 2}, "min_size"),
        ({"dsn": "mysql://u:hunter2@h/db"}, "dsn"),
        ({"dsn": "postgresql://u:hunter2@h:99999/db"}, "port"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"retry": {"initial_backoff": 5, "max_backoff": 1}}, "max_backoff"),
        ({"breaker": {"fail_max": 0}}, "fail_max"),
        ({"command_timeout": -1}, "command_timeout"),
        ({"ssl": "sometimes"}, "ssl"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_field_never_the_secret(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        PostgresSettings(password="hunter2", **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert field in message
    assert "hunter2" not in message


def test_secrets_never_appear_in_repr() -> None:
    s = PostgresSettings(password="hunter2", dsn="postgresql://u:hunter2@h/db")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    r = RedisSettings(url="redis://:hunter2@h:6379/0", password="hunter2")
    assert "hunter2" not in repr(r)


def test_environment_loading_with_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "pg.internal")
    monkeypatch.setenv("POSTGRES_PASSWORD", "hunter2")
    monkeypatch.setenv("POSTGRES_RETRY__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("REDIS_WRITE_CONCURRENCY_LIMIT", "8")
    pg = PostgresSettings()
    assert pg.host == "pg.internal"
    assert pg.password is not None and pg.password.get_secret_value() == "hunter2"
    assert pg.retry.max_attempts == 7
    redis = RedisSettings()
    assert redis.target() == ("cache", 6380, 2)
    assert redis.write_concurrency_limit == 8


@pytest.mark.parametrize("url", ["http://h:6379", "redis://h:notaport/0", "redis://h:6379/abc"])
def test_malformed_redis_url_fails_at_construction(url: str) -> None:
    with pytest.raises(ValidationError, match="url"):
        RedisSettings(url=url)


def test_retry_defaults_are_bounded() -> None:
    r = RetrySettings()
    assert r.max_attempts >= 1 and r.deadline > 0 and r.max_backoff >= r.initial_backoff


def test_errors_survive_pickling() -> None:
    err = ServiceUnavailableError("x", operation="GET", attempts=3, may_have_been_applied=False)
    back = pickle.loads(pickle.dumps(err))
    assert (back.operation, back.attempts, back.may_have_been_applied) == ("GET", 3, False)
    bulk = BulkWriteError("y", operation="XADD", attempts=2, not_written=[3, 4], dead_lettered=[3])
    back_bulk = pickle.loads(pickle.dumps(bulk))
    assert back_bulk.not_written == (3, 4) and back_bulk.dead_lettered == (3,)
