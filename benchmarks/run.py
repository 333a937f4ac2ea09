"""Run the benchmarks and print the tables and target verdicts.

    .venv/bin/python -m benchmarks.run [--quick] [--loop asyncio|uvloop|both] [--only redis,postgres,bulk]

Starts a private PostgreSQL and redis-server on free loopback ports (tests/support/servers.py; never the
system services), runs every selected case under each selected event loop in THIS process, and removes the
servers at exit. ``--markdown FILE`` also writes the tables as Markdown (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/support: the private server classes

from support.servers import PostgresServer, RedisServer, cleanup_all  # noqa: E402

from . import report  # noqa: E402
from .harness import BulkCase, CaseResult, LatencyCase, run_bulk_case, run_latency_case  # noqa: E402
from .otel import Otel, configured  # noqa: E402

GROUPS = ("redis", "postgres", "bulk")


@dataclass
class Plan:
    quick: bool
    groups: tuple[str, ...]
    rounds: int
    ops: int  # per batch, one-at-a-time cases (concurrent cases run twice as many)
    concurrency: int
    bulk_rows: int
    bulk_rounds: int
    bulk_modes: tuple[str, ...]
    xadd_messages: int
    verbose: bool = True
    case_filter: str = ""

    def wants(self, name: str) -> bool:
        return self.case_filter.lower() in name.lower()


@dataclass
class Env:
    plan: Plan
    otel: Otel
    pg_dsn: str | None = None
    redis_url: str | None = None
    notes: list[str] = field(default_factory=list)


def _progress(verbose: bool) -> Callable[[str], None]:
    started = time.monotonic()

    def say(msg: str) -> None:
        if verbose:
            print(f"  [{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


async def suite(env: Env, loop_name: str) -> list[CaseResult]:
    """Every selected case on the running loop."""
    plan = env.plan
    say = _progress(plan.verbose)
    results: list[CaseResult] = []
    if "redis" in plan.groups or ("bulk" in plan.groups and env.redis_url):
        from . import redis_bench

        assert env.redis_url is not None
        rb = redis_bench.RedisBench(env.redis_url, env.otel)
        if not rb.available:
            env.notes.append(rb.unavailable_reason)
        await rb.open()
        try:
            if "redis" in plan.groups:
                for case in rb.latency_cases(plan.ops, plan.concurrency):
                    if plan.wants(case.name):
                        results.append(await run_latency_case(case, plan.rounds, say))
            if "bulk" in plan.groups:
                for bcase in rb.bulk_cases(plan.xadd_messages):
                    if plan.wants(bcase.name):
                        results.append(await run_bulk_case(bcase, plan.bulk_rounds, say))
        finally:
            await rb.close()
    if ("postgres" in plan.groups or "bulk" in plan.groups) and env.pg_dsn:
        from .postgres import PostgresBench

        pb = PostgresBench(env.pg_dsn, env.otel)
        await pb.open()
        try:
            if "postgres" in plan.groups:
                env.notes.append(f"[{loop_name}] " + await pb.verify_no_session_leak())
                lcases: list[LatencyCase] = pb.latency_cases(plan.ops // 2, plan.concurrency)
                for case in lcases:
                    if plan.wants(case.name):
                        results.append(await run_latency_case(case, plan.rounds, say))
            if "bulk" in plan.groups:
                bcases: list[BulkCase] = pb.bulk_cases(plan.bulk_rows, plan.bulk_modes)
                for bcase in bcases:
                    if plan.wants(bcase.name):
                        results.append(await run_bulk_case(bcase, plan.bulk_rounds, say))
        finally:
            await pb.close()
    return results


def _run_on(loop_name: str, coro_fn: Callable[[], Coroutine[Any, Any, list[CaseResult]]]) -> list[CaseResult]:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches (~1-2 minutes)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument(
        "--only", default=",".join(GROUPS), help="comma-separated subset of: redis, postgres, bulk (default: all)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per latency case (default 9, quick 3)")
    parser.add_argument("--case", default="", help="only cases whose name contains this text (e.g. 'fetchrow')")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; choose from {GROUPS}")
    quick = bool(args.quick)
    plan = Plan(
        quick=quick,
        groups=groups,
        rounds=args.rounds or (3 if quick else 9),
        ops=300 if quick else 600,
        concurrency=64,
        bulk_rows=20_000 if quick else 100_000,
        bulk_rounds=1 if quick else 3,
        bulk_modes=("update",) if quick else ("insert", "update"),
        xadd_messages=20_000 if quick else 100_000,
        verbose=not args.quiet,
        case_filter=args.case,
    )
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)

    env = Env(plan=plan, otel=configured())
    pg: PostgresServer | None = None
    rs: RedisServer | None = None
    started = time.monotonic()
    try:
        if "postgres" in groups or "bulk" in groups:
            pg = PostgresServer()
            pg.start()
            env.pg_dsn = pg.dsn()
        if "redis" in groups or "bulk" in groups:
            rs = RedisServer()
            rs.start()
            env.redis_url = rs.url()
        header = report.header(plan_text(plan, loops), interpreter())
        print(header)
        all_results: dict[str, list[CaseResult]] = {}
        for loop_name in loops:
            print(f"\n== event loop: {loop_name} ==", flush=True)
            load_before = os.getloadavg()[0]
            results = _run_on(loop_name, lambda ln=loop_name: suite(env, ln))  # type: ignore[misc]
            load = (
                f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)"
            )
            print(load)
            env.notes.append(f"[{loop_name}] {load}")
            all_results[loop_name] = results
            print(report.text_tables(results))
            print(report.text_verdicts(report.verdicts(results)))
        for note in dict.fromkeys(env.notes):
            print(f"note: {note}")
        print(f"\ntotal time {time.monotonic() - started:.0f} s")
        if args.markdown:
            args.markdown.write_text(report.markdown(header, all_results, list(dict.fromkeys(env.notes))))
            print(f"markdown written to {args.markdown}")
    finally:
        env.otel.shutdown()
        for server in (rs, pg):
            if server is not None:
                server.cleanup()
        cleanup_all()
    return 0


def plan_text(plan: Plan, loops: tuple[str, ...]) -> str:
    return (
        f"groups={','.join(plan.groups)} loops={','.join(loops)} quick={plan.quick} rounds={plan.rounds} "
        f"ops/batch={plan.ops} (redis) {plan.ops // 2} (postgres), x2 when concurrent; concurrency={plan.concurrency}; "
        f"bulk rows={plan.bulk_rows:,} rounds={plan.bulk_rounds} modes={','.join(plan.bulk_modes)}; "
        f"xadd messages={plan.xadd_messages:,}"
    )


def interpreter() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()} ({sys.executable}), "
        f"{os.cpu_count()} CPUs, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
