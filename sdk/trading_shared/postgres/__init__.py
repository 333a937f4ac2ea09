"""PostgreSQL: :class:`PostgresClient` over asyncpg, its error classification and bulk paths."""

from .classify import PostgresErrors
from .client import PostgresClient

__all__ = ["PostgresClient", "PostgresErrors"]
