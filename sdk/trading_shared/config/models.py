"""Deprecated import path of the replaced settings models: use ``from trading_shared import PostgresSettings``.

``PostgresSettings`` and ``RedisSettings`` here are the SDK's classes, which accept the old field names as deprecated
aliases (see :mod:`trading_shared.settings_aliases`). The replaced module's other models (exchange, Telegram) belong
to the services, not to this SDK. Importing this module warns once per process.
"""

from __future__ import annotations

import warnings

from ..settings import PostgresSettings, RedisSettings

__all__ = ["PostgresSettings", "RedisSettings"]

warnings.warn(
    "trading_shared.config.models is deprecated; import the settings from trading_shared "
    "(from trading_shared import PostgresSettings, RedisSettings)",
    DeprecationWarning,
    stacklevel=2,
)
