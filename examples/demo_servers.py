"""Private PostgreSQL, Redis and Prometheus for the demo, on free loopback ports; no pytest needed.

Reuses the test suite's server helpers (``tests/support``, ``tests/dashboards/prometheus_server.py``): the same
code that starts, stops and cleans up the servers for the tests. Every server lives in a temporary directory that is
removed on exit, even when the demo is interrupted.

Run it on its own to get servers for trying the examples by hand::

    .venv/bin/python examples/demo_servers.py     # prints export lines, keeps running until Ctrl-C
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests", ROOT / "tests" / "dashboards"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from prometheus_server import PrometheusServer  # noqa: E402  (tests/dashboards)

from support.servers import PostgresServer, RedisServer, free_port  # noqa: E402  (tests/support)

__all__ = ["DemoServers", "PostgresServer", "PrometheusServer", "RedisServer", "free_port", "private_servers"]

DEMO_DB = "demo"


@dataclass
class DemoServers:
    """The private servers (None for one the user provides) and how to reach them."""

    postgres: PostgresServer | None
    redis: RedisServer | None
    postgres_dsn: str
    redis_url: str

    def env(self) -> dict[str, str]:
        """Environment variables the examples read their settings from."""
        return {"POSTGRES_DSN": self.postgres_dsn, "REDIS_URL": self.redis_url}


@contextlib.contextmanager
def private_servers(
    *, postgres_dsn: str | None = None, redis_url: str | None = None, redis_persistent: bool = True
) -> Iterator[DemoServers]:
    """Start PostgreSQL and Redis unless a DSN / URL is given, and remove them afterwards.

    ``redis_persistent`` turns on Redis's append-only file, so a stopped and restarted Redis keeps its streams and
    consumer groups (as a production Redis with persistence would).
    """
    pg = None if postgres_dsn else PostgresServer()
    redis_args = ("--appendonly", "yes", "--appendfsync", "everysec") if redis_persistent else ()
    redis = None if redis_url else RedisServer(extra_args=redis_args)
    try:
        if pg is not None:
            pg.start()
            pg.create_database(DEMO_DB)
            postgres_dsn = pg.dsn(db=DEMO_DB)
        if redis is not None:
            redis.start()
            redis_url = redis.url()
        assert postgres_dsn is not None
        assert redis_url is not None
        yield DemoServers(pg, redis, postgres_dsn, redis_url)
    finally:
        for server in (redis, pg):
            if server is not None:
                server.cleanup()


def prometheus(targets: Sequence[str], job: str, rule_files: Sequence[Path]) -> PrometheusServer:
    """A started private Prometheus scraping ``targets`` every second with ``rule_files`` loaded."""
    return PrometheusServer(targets, job=job, rule_files=rule_files).start()


def main() -> int:
    """Start the servers, print how to use them, wait for Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with private_servers() as servers:
        for key, value in servers.env().items():
            print(f"export {key}={value}")
        print("# servers are running; Ctrl-C stops and removes them", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
