"""Client settings: pydantic models, loadable from the environment, with secrets kept as ``SecretStr``.

``PostgresSettings()`` reads ``POSTGRES_*`` variables and ``RedisSettings()`` reads ``REDIS_*``; nested settings use a
double underscore (``POSTGRES_RETRY__MAX_ATTEMPTS=5``). Invalid values fail at construction with a
``pydantic.ValidationError`` (a ``ValueError``) that names the field and never echoes the input, so a typo cannot
print a password.

The replaced clients' field names (``pool_min_size``, ``max_retries``, ...) are accepted as deprecated aliases, as
keywords and environment variables: see :mod:`trading_shared.settings_aliases` and docs/migration.md.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import settings_aliases
from .policy_settings import BreakerSettings, RetrySettings
from .settings_aliases import PostgresOldNames, RedisOldNames

__all__ = ["BreakerSettings", "PostgresSettings", "RedisSettings", "RetrySettings"]

_SSL_MODES = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresSettings(PostgresOldNames, BaseSettings):
    """Settings for :class:`~trading_shared.PostgresClient` (environment prefix ``POSTGRES_``).

    Give either ``dsn`` or the parts (``user``, ``password``, ``host``, ``port``, ``db``) the replaced client used.
    """

    model_config = SettingsConfigDict(
        env_prefix="POSTGRES_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    name: str = Field(default="postgres", min_length=1, max_length=64, description="Pool name in telemetry.")
    dsn: SecretStr | None = Field(default=None, description="postgresql://user:pass@host:port/db (overrides parts).")
    user: str = Field(default="postgres", min_length=1)
    password: SecretStr | None = None
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    db: str = Field(default="postgres", min_length=1)
    min_size: int = Field(default=1, ge=0, le=1000, description="Connections the pool keeps open.")
    max_size: int = Field(default=5, ge=1, le=1000, description="Pool cap; keep it small behind PgBouncer.")
    command_timeout: float | None = Field(default=10.0, gt=0, description="Seconds one statement may run.")
    connect_timeout: float = Field(default=5.0, gt=0, le=600, description="Seconds to open one connection.")
    acquire_timeout: float = Field(default=5.0, gt=0, le=600, description="Seconds to wait for a pooled connection.")
    statement_cache_size: int = Field(
        default=100, ge=0, description="Prepared statements cached per connection; forced to 0 by pooler='transaction'."
    )
    pooler: Literal["none", "transaction"] = Field(
        default="none",
        description="'transaction' when the DSN points at a transaction-pooling proxy (PgBouncer pool_mode="
        "transaction): no prepared-statement cache and no session reset query on release.",
    )
    application_name: str = Field(default="trading-shared", max_length=63)
    ssl: _SSL_MODES | None = Field(default=None, description="libpq sslmode; None leaves the DSN's choice.")
    statement_spans: bool = Field(default=False, description="Child span per SQL statement (instrumentation-asyncpg).")
    query_text: bool = Field(
        default=True,
        description="Put db.query.text on spans: the statement with every literal replaced by ? and comments "
        "removed (parameters are never recorded). False leaves only the query summary.",
    )
    query_summary_cap: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Distinct db.query.summary values the client's metrics may carry; later ones are recorded as "
        "_OTHER and counted by trading_shared.db.query_summary.overflow.",
    )
    pool_timing_metrics: bool = Field(
        default=True,
        description="Record the pool's wait_time and use_time per call. False saves two histogram points per call "
        "(about 40% of a small query's telemetry cost, by the profile); the acquire-wait panels then stay empty.",
    )
    replica_dsn: SecretStr | None = Field(
        default=None,
        description="DSN of a read replica (or a host list with target_session_attrs=prefer-standby) for reads "
        "sent with replica=True; it gets its own pool and breaker. None: those reads go to the primary.",
    )
    replica_fallback: bool = Field(
        default=True, description="Send a replica read to the primary when the replica cannot serve it."
    )
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return settings_aliases.apply(data, settings_aliases.POSTGRES_ALIASES, "PostgresSettings")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_size > self.max_size:
            raise ValueError("min_size must be <= max_size")
        if self.dsn is not None:
            _parse_postgres_dsn(self.dsn.get_secret_value())
        if self.replica_dsn is not None:
            _parse_postgres_dsn(self.replica_dsn.get_secret_value())
        explicit_cache = "statement_cache_size" in self.model_fields_set and self.statement_cache_size > 0
        if self.pooler == "transaction" and explicit_cache:
            raise ValueError("statement_cache_size must be 0 behind a transaction pooler (pooler='transaction')")
        return self

    def effective_statement_cache_size(self) -> int:
        """The prepared-statement cache size asyncpg gets: 0 behind a transaction pooler."""
        return 0 if self.pooler == "transaction" else self.statement_cache_size

    def resolved_dsn(self) -> SecretStr:
        """The DSN asyncpg connects with: ``dsn`` when given, else one built from the parts."""
        if self.dsn is not None:
            return self.dsn
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password.get_secret_value(), safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return SecretStr(f"postgresql://{auth}@{host}:{self.port}/{quote(self.db, safe='')}")

    def target(self) -> tuple[str, int, str]:
        """``(server.address, server.port, db.namespace)`` for telemetry: no user name, no password."""
        if self.dsn is None:
            return self.host, self.port, self.db
        return _parse_postgres_dsn(self.dsn.get_secret_value())


def _parse_postgres_dsn(dsn: str) -> tuple[str, int, str]:
    """Check a DSN's shape and return its first host, port and database, without echoing it (it has a password)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        raise ValueError("dsn is not a valid URL") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("dsn must start with postgresql:// or postgres://")
    hostlist = parts.netloc.rpartition("@")[2]
    first = hostlist.split(",")[0]
    host, port = first, 5432
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif ":" in first:
        host, _, p = first.rpartition(":")
        port = _port(p)
    database = unquote(parts.path.lstrip("/")) or "postgres"
    return host or "localhost", port, database


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("dsn has an invalid port")
    return int(text)


class RedisSettings(RedisOldNames, BaseSettings):
    """Settings for :class:`~trading_shared.RedisClient` (environment prefix ``REDIS_``).

    ``mode`` picks the deployment (docs/redis-standalone.md): ``standalone`` (the url's server), ``sentinel``
    (``sentinels`` + ``service_name``; the url gives scheme, credentials and db, its host is not used) or
    ``cluster`` (``cluster_nodes``, or the url's host and port, as startup nodes). Settings of another mode are
    rejected, naming the field.
    """

    model_config = SettingsConfigDict(
        env_prefix="REDIS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    name: str = Field(default="redis", min_length=1, max_length=64, description="Pool name in telemetry.")
    url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), description="redis:// or rediss:// URL.")
    db: int | None = Field(default=None, ge=0, le=15, description="Database index; overrides the URL's.")
    password: SecretStr | None = Field(default=None, description="Overrides the URL's password.")
    max_connections: int = Field(default=50, ge=1, le=10_000)
    socket_timeout: float = Field(default=5.0, gt=0, le=600, description="Seconds to wait for one reply.")
    socket_connect_timeout: float = Field(default=2.0, gt=0, le=600)
    write_concurrency_limit: int = Field(default=4, ge=1, le=1000, description="Concurrent bulk-write chunks.")
    mode: Literal["standalone", "sentinel", "cluster"] = Field(
        default="standalone",
        description="standalone: the url's server. sentinel: the master of service_name, found through sentinels. "
        "cluster: a Redis Cluster, discovered from cluster_nodes (or the url's host and port).",
    )
    sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="mode=sentinel: the sentinels as host:port (env: comma-separated or a JSON list).",
    )
    service_name: str | None = Field(
        default=None, min_length=1, max_length=256, description="mode=sentinel: the master name the sentinels monitor."
    )
    sentinel_password: SecretStr | None = Field(
        default=None, description="mode=sentinel: the sentinels' own password (requirepass), if they have one."
    )
    sentinel_check_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="mode=sentinel: seconds between checks of the sentinels' view of the master while no failover "
        "event arrives; a sentinel silent for 3 of them is replaced as the source of events.",
    )
    cluster_nodes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="mode=cluster: startup nodes as host:port (env: comma-separated or a JSON list); default: the "
        "url's host and port. Any one reachable node is enough to discover the others.",
    )
    wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas that must confirm each write (WAIT) before it counts as done; 0: no WAIT. A write "
        "confirmed by fewer fails as outcome-unknown (see docs/redis-sentinel.md).",
    )
    wait_timeout: float = Field(
        default=0.5, gt=0, le=60, description="Seconds WAIT may take; must be below socket_timeout."
    )
    stream_trace_context: bool = Field(
        default=True,
        description="Write the W3C trace context into each appended stream entry as one extra field, traceparent "
        "(read back and removed from the fields by this SDK). False for streams foreign consumers read "
        "(docs/stream-telemetry.md).",
    )
    telemetry_streams: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Streams named in telemetry: 'stream' (named), or 'stream=group' (named, and the group's lag, "
        "pending and oldest-pending age observed). Other streams appear as _undeclared (env: comma-separated or "
        "a JSON list).",
    )
    stream_health_timeout: float = Field(
        default=2.0, gt=0, le=60, description="Seconds one refresh of a stream's health figures may take."
    )
    stream_health_max_age: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Seconds a stream's health figures are exported after they were read; older ones are dropped "
        "(the series go absent while the server cannot be read).",
    )
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return settings_aliases.apply(data, settings_aliases.REDIS_ALIASES, "RedisSettings")

    @field_validator("telemetry_streams", mode="before")
    @classmethod
    def _split_streams(cls, value: object) -> object:
        return _split_list(value, "stream or stream=group items")

    def stream_declarations(self) -> list[tuple[str, str | None]]:
        """:attr:`telemetry_streams` as ``(stream, group or None)`` pairs (``a=b`` splits at the last ``=``)."""
        out: list[tuple[str, str | None]] = []
        for item in self.telemetry_streams:
            stream, sep, group = item.rpartition("=")
            out.append((stream, group) if sep and stream and group else (item, None))
        return out

    @field_validator("sentinels", "cluster_nodes", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        return _split_list(value, "host:port items")

    @model_validator(mode="after")
    def _check(self) -> Self:
        scheme = _parse_redis_url(self.url.get_secret_value())[3]
        for field in ("sentinels", "cluster_nodes"):
            for address in getattr(self, field):
                _parse_address(address, field)
        if self.mode != "sentinel":
            if self.sentinels:
                raise ValueError(f"sentinels: only used with mode='sentinel' (mode is {self.mode!r})")
            if self.service_name is not None:
                raise ValueError(f"service_name: only used with mode='sentinel' (mode is {self.mode!r})")
            if self.sentinel_password is not None:
                raise ValueError(f"sentinel_password: only used with mode='sentinel' (mode is {self.mode!r})")
            if "sentinel_check_interval" in self.model_fields_set:
                raise ValueError(f"sentinel_check_interval: only used with mode='sentinel' (mode is {self.mode!r})")
        if self.mode != "cluster" and self.cluster_nodes:
            raise ValueError(f"cluster_nodes: only used with mode='cluster' (mode is {self.mode!r})")
        if self.mode == "sentinel":
            if not self.sentinels:
                raise ValueError("sentinels: mode='sentinel' needs at least one sentinel host:port")
            if self.service_name is None:
                raise ValueError("service_name: mode='sentinel' needs the master name the sentinels monitor")
        if self.mode == "cluster" and self.target()[2] != 0:
            raise ValueError("db: a Redis Cluster has database 0 only (url path and db must be 0 or absent)")
        if self.mode != "standalone" and scheme == "unix":
            raise ValueError(f"url: mode={self.mode!r} needs a redis:// or rediss:// url, not unix://")
        if self.wait_replicas and self.wait_timeout >= self.socket_timeout:
            raise ValueError("wait_timeout: must be below socket_timeout (WAIT blocks for up to wait_timeout)")
        return self

    def target(self) -> tuple[str, int, int]:
        """``(server.address, server.port, db index)`` for telemetry: the configured endpoint, never a password.

        standalone: the url's host and port; sentinel: the first sentinel; cluster: the first startup node. Spans of
        sentinel and cluster calls then name the server that answered (see docs/metrics.md).
        """
        host, port, db, _ = _parse_redis_url(self.url.get_secret_value())
        db = self.db if self.db is not None else db
        if self.mode == "sentinel" and self.sentinels:
            host, port = _parse_address(self.sentinels[0], "sentinels")
        elif self.mode == "cluster" and self.cluster_nodes:
            host, port = _parse_address(self.cluster_nodes[0], "cluster_nodes")
        return host, port, db

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels as ``(host, port)`` pairs."""
        return [_parse_address(a, "sentinels") for a in self.sentinels]

    def cluster_addresses(self) -> list[tuple[str, int]]:
        """The cluster's startup nodes as ``(host, port)`` pairs (the url's host and port if none are listed)."""
        if self.cluster_nodes:
            return [_parse_address(a, "cluster_nodes") for a in self.cluster_nodes]
        host, port, _, _ = _parse_redis_url(self.url.get_secret_value())
        return [(host, port)]


def _split_list(value: object, items: str) -> object:
    """A list setting given as text (an environment variable): comma-separated, or a JSON list."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"must be {items}, comma-separated or as a JSON list") from None
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_redis_url(url: str) -> tuple[str, int, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise ValueError("url is not a valid redis URL (bad host or port)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("url must start with redis://, rediss:// or unix://")
    path = parts.path.lstrip("/")
    if parts.scheme != "unix" and path and not path.isdigit():
        raise ValueError("url path must be a database number")
    db = int(path) if parts.scheme != "unix" and path else 0
    return parts.hostname or "localhost", port, db, parts.scheme


def _parse_address(address: str, field: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> ``(host, port)``; the error names ``field``, never a password."""
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "@" in host or "/" in host:
        raise ValueError(f"{field}: each item must be host:port")
    return host, int(port)


__all__ = ["BreakerSettings", "PostgresSettings", "RedisSettings", "RetrySettings"]
