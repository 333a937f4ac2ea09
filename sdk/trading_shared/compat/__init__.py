"""Every use of a dependency's private API, one module per dependency (docs/dependencies.md).

The SDK reads a few private names of its dependencies where no public one exists. Each is read here and only here,
defensively: when a release renames or removes one, the accessor falls back to the documented behaviour instead of
raising, and the module's ``missing()`` (run by ``tests/unit/test_dependency_compat.py`` on every CI pass) names
the dependency, its installed version and the private name that is gone.

- :mod:`.otel`: opentelemetry-api (provider globals, ``_ProxyMeterProvider``).
- :mod:`.otel_asyncpg`: opentelemetry-instrumentation-asyncpg (``_do_execute``, the ``_semconv`` helpers).
- :mod:`.redis`: redis-py (a connection's stream reader and writer, its TLS connect hooks, ``BaseParser``).
- :mod:`.asyncpg`: asyncpg (the address a connection reached).
- :mod:`.asyncio`: the standard library's ``StreamReader`` buffer.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def describe_missing(distribution: str, names: list[str]) -> list[str]:
    """One message per private name missing from ``distribution``: dependency, version, name, where to look."""
    found = installed_version(distribution)
    return [
        f"{distribution} {found} has no {name}: the SDK falls back as docs/dependencies.md describes "
        f"(see trading_shared.compat)"
        for name in names
    ]
