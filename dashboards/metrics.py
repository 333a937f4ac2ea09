"""The metric contract as the dashboards and rules see it: Prometheus spellings taken from the SDK's names module.

Every series and label used anywhere in ``dashboards/`` is produced by :func:`series` or :func:`label`, which refuse a
name that ``names.PROMETHEUS_SERIES`` / ``names.PROMETHEUS_LABELS`` do not list: a renamed metric fails generation
instead of producing a panel that silently shows nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

_NAMES_FILE = Path(__file__).resolve().parents[1] / "sdk" / "trading_shared" / "telemetry" / "names.py"


def _load_names() -> ModuleType:
    """``trading_shared.telemetry.names``; straight from the source tree if the package cannot be imported.

    names.py depends on nothing, so the dashboards can be generated while the rest of the SDK is mid-change or
    not installed.
    """
    try:
        from trading_shared.telemetry import names as module
    except ImportError:
        spec = importlib.util.spec_from_file_location("_trading_shared_names", _NAMES_FILE)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


names = _load_names()

__all__ = [
    "BREAKER_REJECTIONS",
    "BREAKER_STATE",
    "BREAKER_TRANSITIONS",
    "CONNECTION_COUNT",
    "CONNECTION_CREATE_TIME",
    "CONNECTION_MAX",
    "CONNECTION_PENDING",
    "CONNECTION_TIMEOUTS",
    "CONNECTION_USE_TIME",
    "CONNECTION_WAIT_TIME",
    "DEAD_LETTERED",
    "MESSAGES_CONSUMED",
    "MESSAGES_SENT",
    "OPERATION_DURATION",
    "QUERY_SUMMARY_OVERFLOW",
    "RETRIES",
    "STREAM_GROUP_LAG",
    "STREAM_GROUP_PENDING",
    "STREAM_MESSAGE_AGE",
    "STREAM_OLDEST_PENDING_AGE",
    "Histogram",
    "L",
    "label",
    "names",
    "series",
]

# Spelling rules of opentelemetry-exporter-prometheus: unit "s" adds "_seconds", a counter adds "_total".
_SECONDS = "_seconds"
_TOTAL = "_total"


def series(metric: str, suffix: str = "") -> str:
    """Return the Prometheus series name of an OpenTelemetry metric, checked against the contract."""
    name = names.prometheus_label(metric) + suffix
    if name not in names.PROMETHEUS_SERIES:
        raise KeyError(f"{name!r} is not in trading_shared.telemetry.names.PROMETHEUS_SERIES")
    return name


def label(attribute: str) -> str:
    """Return the Prometheus label of an attribute (or a scrape label such as ``job``), checked against the contract."""
    name = names.prometheus_label(attribute)
    if name not in names.PROMETHEUS_LABELS:
        raise KeyError(f"{name!r} is not in trading_shared.telemetry.names.PROMETHEUS_LABELS")
    return name


class Histogram:
    """The three series of a seconds histogram."""

    def __init__(self, metric: str) -> None:
        self.bucket = series(metric, _SECONDS + "_bucket")
        self.sum = series(metric, _SECONDS + "_sum")
        self.count = series(metric, _SECONDS + "_count")


OPERATION_DURATION = Histogram(names.OPERATION_DURATION)
CONNECTION_WAIT_TIME = Histogram(names.CONNECTION_WAIT_TIME)
CONNECTION_USE_TIME = Histogram(names.CONNECTION_USE_TIME)
CONNECTION_CREATE_TIME = Histogram(names.CONNECTION_CREATE_TIME)
CONNECTION_COUNT = series(names.CONNECTION_COUNT)
CONNECTION_MAX = series(names.CONNECTION_MAX)
CONNECTION_PENDING = series(names.CONNECTION_PENDING_REQUESTS)
CONNECTION_TIMEOUTS = series(names.CONNECTION_TIMEOUTS, _TOTAL)
RETRIES = series(names.RETRIES, _TOTAL)
BREAKER_STATE = series(names.BREAKER_STATE)
BREAKER_TRANSITIONS = series(names.BREAKER_TRANSITIONS, _TOTAL)
BREAKER_REJECTIONS = series(names.BREAKER_REJECTIONS, _TOTAL)
DEAD_LETTERED = series(names.DEAD_LETTERED, _TOTAL)
QUERY_SUMMARY_OVERFLOW = series(names.QUERY_SUMMARY_OVERFLOW, _TOTAL)
STREAM_GROUP_LAG = series(names.STREAM_GROUP_LAG)
STREAM_GROUP_PENDING = series(names.STREAM_GROUP_PENDING)
STREAM_OLDEST_PENDING_AGE = series(names.STREAM_GROUP_OLDEST_PENDING_AGE, _SECONDS)
STREAM_MESSAGE_AGE = Histogram(names.STREAM_MESSAGE_AGE)
MESSAGES_SENT = series(names.MESSAGING_SENT_MESSAGES, _TOTAL)
MESSAGES_CONSUMED = series(names.MESSAGING_CONSUMED_MESSAGES, _TOTAL)


class L:
    """Prometheus labels, by role."""

    JOB = label("job")
    INSTANCE = label("instance")
    LE = label("le")
    SYSTEM = label(names.DB_SYSTEM_NAME)
    OPERATION = label(names.DB_OPERATION_NAME)
    POOL = label(names.POOL_NAME)
    ERROR = label(names.ERROR_TYPE)
    CONNECTION_STATE = label(names.CONNECTION_STATE)
    BREAKER_STATE = label(names.BREAKER_STATE_ATTR)
    QUERY_SUMMARY = label(names.DB_QUERY_SUMMARY)
    STREAM = label(names.MESSAGING_DESTINATION_NAME)
    GROUP = label(names.MESSAGING_CONSUMER_GROUP_NAME)
