"""Deprecated import path of the replaced PostgreSQL client: use ``from trading_shared import PostgresClient``.

``PostgresClient`` here is the SDK's class: the replaced client's methods (``execute_resiliently``,
``ensure_pool_is_ready``, ...) work on it as deprecated aliases (docs/migration.md). Importing this module warns
once per process.
"""

from __future__ import annotations

import warnings

from ..postgres.client import PostgresClient

__all__ = ["PostgresClient"]

warnings.warn(
    "trading_shared.clients.postgres_client is deprecated; import PostgresClient from trading_shared "
    "(from trading_shared import PostgresClient)",
    DeprecationWarning,
    stacklevel=2,
)
