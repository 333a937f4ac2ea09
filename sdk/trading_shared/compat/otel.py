"""Private names of opentelemetry-api: the provider globals and the proxy meter provider's class.

Fallbacks (docs/dependencies.md): without the module globals, :func:`tracer_provider_unset` and
:func:`meter_provider_unset` answer False and the SDK makes the public ``get_*_provider()`` call on every operation
(correct, ~1.3 us slower each); without ``_ProxyMeterProvider``, the proxy is recognised by its class name.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from . import describe_missing

try:
    from opentelemetry.metrics import _internal as _metrics_internal
except ImportError:  # pragma: no cover - depends on the installed API
    _metrics_internal = None  # type: ignore[assignment]

_UNSET = object()
_PROXY_METER_PROVIDER_NAME = "_ProxyMeterProvider"

#: The API's placeholder meter provider class while the application has set none (None if the API lacks it).
PROXY_METER_PROVIDER: type[MeterProvider] | None = getattr(_metrics_internal, _PROXY_METER_PROVIDER_NAME, None)


def tracer_provider_unset() -> bool:
    """True when the API's global tracer provider is known to be unset; False when set or unknown."""
    return getattr(trace, "_TRACER_PROVIDER", _UNSET) is None


def meter_provider_unset() -> bool:
    """True when the API's global meter provider is known to be unset; False when set or unknown."""
    return getattr(_metrics_internal, "_METER_PROVIDER", _UNSET) is None


def is_proxy_meter_provider(provider: Any) -> bool:
    """Whether ``provider`` is the API's placeholder meter provider (none set yet)."""
    if PROXY_METER_PROVIDER is not None:
        return isinstance(provider, PROXY_METER_PROVIDER)
    return type(provider).__name__ == _PROXY_METER_PROVIDER_NAME


def missing() -> list[str]:
    """The private names this module reads that the installed opentelemetry-api lacks, described (empty: all there)."""
    gone = []
    if not hasattr(trace, "_TRACER_PROVIDER"):
        gone.append("opentelemetry.trace._TRACER_PROVIDER")
    if _metrics_internal is None or not hasattr(_metrics_internal, "_METER_PROVIDER"):
        gone.append("opentelemetry.metrics._internal._METER_PROVIDER")
    if PROXY_METER_PROVIDER is None:
        gone.append("opentelemetry.metrics._internal._ProxyMeterProvider")
    return describe_missing("opentelemetry-api", gone)
