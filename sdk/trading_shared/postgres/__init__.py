"""PostgreSQL: :class:`PostgresClient` over asyncpg, its error classification and bulk paths."""

from .classify import LoginRefusedError, PostgresErrors, ReadOnlyServerError
from .client import PostgresClient

__all__ = ["LoginRefusedError", "PostgresClient", "PostgresErrors", "ReadOnlyServerError"]
