"""The curated public face: the export list, docstrings, the typed marker, and small modules."""

from __future__ import annotations

import importlib.resources
import inspect
from pathlib import Path

import trading_shared

EXPECTED = {
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
}


def test_export_list_is_exactly_the_curated_set() -> None:
    assert set(trading_shared.__all__) == EXPECTED
    assert sorted(trading_shared.__all__) == trading_shared.__all__
    for name in trading_shared.__all__:
        assert hasattr(trading_shared, name), name


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in trading_shared.__all__:
        obj = getattr(trading_shared, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def test_package_is_typed() -> None:
    assert importlib.resources.files("trading_shared").joinpath("py.typed").is_file()


def test_sdk_errors_are_connection_errors_for_services_that_catch_those() -> None:
    for name in ("ServiceUnavailableError", "CircuitOpenError", "OutcomeUnknownError", "DeadlineExceededError",
                 "PoolExhaustedError", "BulkWriteError"):  # fmt: skip
        assert issubclass(getattr(trading_shared, name), ConnectionError), name
    assert issubclass(trading_shared.DeadlineExceededError, TimeoutError)
    assert issubclass(trading_shared.ConfigurationError, ValueError)


def test_every_sdk_module_stays_small() -> None:
    """Modules of a few hundred lines, each with one job: a module past 400 lines is split, not grown."""
    sdk = Path(trading_shared.__file__).parent
    sizes = {str(p.relative_to(sdk)): len(p.read_text().splitlines()) for p in sdk.rglob("*.py")}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n >= 400} == {}
