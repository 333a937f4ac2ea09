"""Telemetry: every name in :mod:`.names`, the shared instruments and per-client spans and metrics."""

from . import names
from .client import ClientTelemetry
from .instruments import PoolStats

__all__ = ["ClientTelemetry", "PoolStats", "names"]
