"""Private names of opentelemetry-instrumentation-asyncpg (the ``statement-spans`` extra) and its ``_semconv`` helpers.

The contrib instrumentor patches ``asyncpg.Connection`` for the whole process; the SDK instead borrows its private
``_do_execute`` wrapper for a connection subclass of its own (:mod:`trading_shared.postgres.statement_spans`), after
setting the instrumentor's tracer and semantic-convention mode the way ``instrument()`` would.

Fallback (docs/dependencies.md): when a name is gone, :func:`statement_executor` raises ``ImportError`` naming the
package, its version and the name, so ``statement_spans=True`` fails at connect instead of tracing wrongly;
``statement_spans=False`` (the default) never imports this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import describe_missing, installed_version

DISTRIBUTION = "opentelemetry-instrumentation-asyncpg"

#: ``do_execute(call, connection, args, kwargs)``: runs ``call(*args, **kwargs)`` inside a statement span.
StatementExecutor = Callable[[Callable[..., Awaitable[Any]], Any, Any, Any], Awaitable[Any]]


def _import() -> tuple[Any, Any, Any, Any]:
    from opentelemetry import trace
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability,
        _OpenTelemetryStabilitySignalType,
    )
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    return trace, _OpenTelemetrySemanticConventionStability, _OpenTelemetryStabilitySignalType, AsyncPGInstrumentor


def statement_executor(tracer_provider: Any | None) -> StatementExecutor:
    """The instrumentor's statement wrapper, tracing to ``tracer_provider`` (or the global one) without parameters.

    Raises ImportError with an install hint when the instrumentation package is missing, and naming the version when
    a private name it relies on is gone.
    """
    try:
        trace, stability, signal_type, instrumentor_class = _import()
    except ImportError as exc:
        if installed_version(DISTRIBUTION) == "not installed":
            raise ImportError(
                "statement_spans=True needs opentelemetry-instrumentation-asyncpg: "
                "pip install 'trading-shared[statement-spans]'"
            ) from exc
        raise ImportError(f"{describe_missing(DISTRIBUTION, [str(exc)])[0]}; set statement_spans=False") from exc
    gone = missing()
    if gone:
        raise ImportError(f"{gone[0]}; set statement_spans=False")
    instrumentor = instrumentor_class(capture_parameters=False)
    stability._initialize()
    instrumentor._semconv_opt_in_mode = stability._get_opentelemetry_stability_opt_in_mode(signal_type.DATABASE)
    instrumentor._tracer = trace.get_tracer("opentelemetry.instrumentation.asyncpg", tracer_provider=tracer_provider)
    executor: StatementExecutor = instrumentor._do_execute
    return executor


def missing() -> list[str]:
    """The private names used here that the installed instrumentation lacks, described (empty: all there)."""
    try:
        _, stability, signal_type, instrumentor_class = _import()
    except ImportError as exc:
        return describe_missing(DISTRIBUTION, [f"an importable module ({exc})"])
    required = {
        "_OpenTelemetrySemanticConventionStability._initialize": getattr(stability, "_initialize", None),
        "_OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode": getattr(
            stability, "_get_opentelemetry_stability_opt_in_mode", None
        ),
        "_OpenTelemetryStabilitySignalType.DATABASE": getattr(signal_type, "DATABASE", None),
        "AsyncPGInstrumentor._do_execute": getattr(instrumentor_class, "_do_execute", None),
    }
    return describe_missing(DISTRIBUTION, [name for name, found in required.items() if found is None])
