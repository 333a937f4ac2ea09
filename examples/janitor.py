"""Run-once task: upsert the instruments listed in a JSON file, then exit.

    POSTGRES_DSN=postgresql://user:pass@host:5432/db python examples/janitor.py examples/data/instruments.json

The file is ``{"exchange": "deribit", "instruments": [{"symbol": ..., "tick_size": ..., "meta": {...}}, ...]}``
(or just the list, with ``--exchange``). The rows go through the services' ``bulk_upsert_instruments(jsonb[])``
database function; ``--init-schema`` first creates it (and the table) from ``examples/data/schema.sql``.

Configuration comes from the environment (``POSTGRES_DSN`` or ``POSTGRES_HOST``/``_PORT``/``_USER``/``_PASSWORD``/
``_DB``, ``POSTGRES_RETRY__DEADLINE``, ...). OpenTelemetry is configured from OTEL_* when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (see telemetry_setup.py).

Exit codes: 0 done; 1 the database failed (unreachable after retries, or an SQL error); 2 bad file or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from trading_shared import PostgresClient, Resources, ServiceUnavailableError

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "data" / "schema.sql"
_log = logging.getLogger("janitor")


class BadInput(ValueError):
    """The instruments file cannot be used."""


def load_instruments(path: Path, exchange: str | None) -> tuple[str, list[dict[str, Any]]]:
    """``(exchange, instruments)`` from the file; raises BadInput with a readable reason."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        exchange = exchange or data.get("exchange")
        data = data.get("instruments")
    if not isinstance(data, list) or not all(isinstance(i, dict) and isinstance(i.get("symbol"), str) for i in data):
        raise BadInput(f"{path}: expected a list of objects with a 'symbol' each")
    if not exchange:
        raise BadInput("no exchange: give --exchange or an 'exchange' key in the file")
    return exchange, data


async def upsert(instruments: list[dict[str, Any]], exchange: str, init_schema: bool) -> int:
    """Connect, optionally create the schema, upsert, close. Returns how many instruments were sent."""
    async with Resources(PostgresClient()) as (pg,):
        if init_schema:
            await pg.execute(SCHEMA.read_text(), idempotent=True)
        count = await pg.bulk_upsert_instruments(instruments, exchange)
        total = await pg.fetchval("SELECT count(*) FROM instruments WHERE exchange = $1", exchange)
        _log.info("upserted %d instruments for %s (%d in the table for it)", count, exchange, total)
        return count


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, upsert, return the exit code."""
    parser = argparse.ArgumentParser(description="Upsert instruments from a JSON file, then exit.")
    parser.add_argument("file", nargs="?", type=Path, default=HERE / "data" / "instruments.json")
    parser.add_argument("--exchange", help="exchange name (default: the file's 'exchange')")
    parser.add_argument("--init-schema", action="store_true", help=f"apply {SCHEMA.name} first (idempotent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        exchange, instruments = load_instruments(args.file, args.exchange)
    except BadInput as exc:
        _log.error("%s", exc)
        return 2
    telemetry = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from telemetry_setup import setup_telemetry

        telemetry = setup_telemetry("janitor")
    started = time.monotonic()
    try:
        run(upsert(instruments, exchange, args.init_schema))
    except ServiceUnavailableError as exc:  # a ConnectionError: the database stayed unreachable
        _log.error("database unavailable after %d attempt(s): %s (cause: %r)", exc.attempts, exc, exc.__cause__)
        return 1
    except asyncpg.PostgresError as exc:
        _log.error("database error %s: %s", exc.sqlstate, exc)
        return 1
    except ValueError as exc:  # e.g. invalid POSTGRES_* settings (never echoes the DSN)
        _log.error("configuration error: %s", exc)
        return 2
    finally:
        if telemetry is not None:
            telemetry.shutdown()
    _log.info("done in %.2fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
