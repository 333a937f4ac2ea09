"""Multi-host DSNs (``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write``): one host at a time.

asyncpg applies its connect ``timeout`` to the whole host list. A host that hangs instead of refusing (a frozen
server, a machine gone from the network: no RST, the SYN or the start-up reply never comes back) uses it all up,
and the hosts after it are never tried: a failover to a standby listed second would never be followed. The client
therefore connects host by host, each with the full ``connect_timeout``, keeping asyncpg's rules: hosts in the
DSN's order; a host that is unreachable, hangs, is starting up or shutting down, or does not match
``target_session_attrs`` is skipped; any other error (bad password, unknown database) is raised at once.
``prefer-standby`` tries every host for a standby first, then takes the first host that answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.exceptions import TargetServerAttributeNotMatched

Connect = Callable[..., Awaitable[asyncpg.Connection]]

#: Errors after which the next host is tried (asyncpg's own loop moves on after OSError and "cannot connect now").
_NEXT_HOST = (OSError, TargetServerAttributeNotMatched, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError)


def split_hosts(dsn: str) -> list[str]:
    """One DSN per host of a multi-host URL DSN, in order (same credentials, database and parameters)."""
    parts = urlsplit(dsn)
    auth, at, hostlist = parts.netloc.rpartition("@")
    hosts = [h for h in hostlist.split(",") if h]
    if len(hosts) < 2:
        return [dsn]
    return [urlunsplit(parts._replace(netloc=f"{auth}{at}{host}")) for host in hosts]


def _with_attrs(dsn: str, attrs: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "target_session_attrs"]
    query.append(("target_session_attrs", attrs))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def connect_each_host(dsn: str, *args: Any, connect: Connect = asyncpg.connect, **kwargs: Any) -> Any:
    """Connect to the first usable host of ``dsn``, giving each host the whole ``timeout`` of ``kwargs``."""
    hosts = split_hosts(dsn)
    if len(hosts) == 1:
        return await connect(dsn, *args, **kwargs)
    attrs = dict(parse_qsl(urlsplit(dsn).query)).get("target_session_attrs")
    last: BaseException | None = None
    answered: list[str] = []
    for host in hosts:
        try:
            return await connect(_with_attrs(host, "standby") if attrs == "prefer-standby" else host, *args, **kwargs)
        except TargetServerAttributeNotMatched as exc:
            last = exc
            if attrs == "prefer-standby":
                answered.append(host)
        except _NEXT_HOST as exc:
            last = exc
    # Only prefer-standby may fall back. Any other target that no host matched is an error: accepting whatever
    # answered sent writes to a standby still in recovery while the primary was down (25006 to the caller).
    for host in answered:
        try:
            return await connect(_with_attrs(host, "any"), *args, **kwargs)
        except _NEXT_HOST as exc:
            last = exc
    assert last is not None
    raise last
