"""A small daemon for the signal tests, run as ``python daemon_app.py JOURNAL MODE``.

It owns a recording client (and a real PostgresClient when ``POSTGRES_DSN`` is set) through ``run_service`` and
writes every lifecycle event, one per line, to JOURNAL. MODE ``serve`` runs until a signal; ``fail`` raises in the
task once it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from trading_shared import ManagedClient, PostgresClient, run_service

journal_path = Path(sys.argv[1])
mode = sys.argv[2]


def note(event: str) -> None:
    with journal_path.open("a") as f:
        f.write(event + "\n")


class Recorder:
    """Records connect/close in the journal."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def connect(self) -> None:
        note(f"connect {self.name}")

    async def close(self) -> None:
        note(f"close {self.name}")


class RecordedPostgres(PostgresClient):
    """A real PostgresClient that also records its close."""

    async def close(self, timeout: float = 10.0) -> None:
        await super().close(timeout)
        note("close postgres")


clients: list[ManagedClient] = [Recorder("first")]
pg = RecordedPostgres() if os.environ.get("POSTGRES_DSN") else None
if pg is not None:
    clients.append(pg)
clients.append(Recorder("last"))


async def main() -> None:
    note(f"loop {type(asyncio.get_running_loop()).__module__}")
    if pg is not None:
        note(f"select {await pg.fetchval('SELECT 1')}")
    note("ready")
    if mode == "fail":
        raise RuntimeError("the service broke")
    try:
        while True:
            if pg is not None:
                await pg.fetchval("SELECT 1")
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        note("task cancelled")
        raise


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_service(main, *clients, name="daemon-app"))
