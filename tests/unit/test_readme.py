"""The README documents every setting and every metric the code has."""

from __future__ import annotations

from pathlib import Path

from trading_shared.settings import BreakerSettings, PostgresSettings, RedisSettings, RetrySettings
from trading_shared.telemetry import names

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_and_its_environment_variable_is_documented() -> None:
    for model, prefix in ((PostgresSettings, "POSTGRES_"), (RedisSettings, "REDIS_")):
        for field in model.model_fields:
            if field in ("retry", "breaker"):
                for nested, sub in (("RETRY__", RetrySettings), ("BREAKER__", BreakerSettings)):
                    if field.upper() + "__" == nested:
                        for name in sub.model_fields:
                            assert f"`{prefix}{nested}{name.upper()}`" in README, name
                continue
            assert f"`{prefix}{field.upper()}`" in README, f"{model.__name__}.{field}"


def test_every_metric_is_in_the_metrics_reference() -> None:
    prefixes = ("db.client.", "trading_shared.client.", "trading_shared.circuit_breaker.", "trading_shared.stream.",
                "trading_shared.redis.")  # fmt: skip
    metrics = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith(prefixes)]
    metrics = [m for m in metrics if m != names.BREAKER_STATE_ATTR]
    for metric in metrics:
        assert f"`{metric}`" in README, metric


def test_no_placeholder_is_left() -> None:
    assert "_PLACEHOLDER" not in README
