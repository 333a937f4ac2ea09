"""Profile one benchmark variant, and summarise a py-spy profile by component.

Run a workload long enough for a sampling profiler, then group the samples::

    .venv/bin/py-spy record --nonblocking --full-filenames -r 250 --format raw -o /tmp/get.txt -- \\
        .venv/bin/python -m benchmarks.profile redis-get --variant sdk_otel --tasks 64 --seconds 15
    .venv/bin/python -m benchmarks.profile --summarize /tmp/get.txt

Workloads: ``redis-get``, ``redis-set``, ``pg-fetchrow``, ``pg-fetchval``; variants as in the tables
(``raw``, ``contrib``, ``sdk_otel``, ``sdk``, ``healthcheck``, ``redress``, ``stamina``). The summary counts
samples on the event loop's thread by the file of the innermost frame (the OpenTelemetry SDK, this SDK, the
driver, asyncio, other) and lists the heaviest functions, inclusive and self. Time inside the socket ``send``
and the ``epoll`` wait gets its own lines: on a loaded 2-core machine a send on loopback often includes the
server's turn on the CPU (the wake-up preempts the sender), so it is not Python work.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_COMPONENTS = (
    ("_SelectorSocketTransport.write", "kernel: socket send (with the server's wake-up)"),
    ("UVStream.write", "kernel: socket send (with the server's wake-up)"),
    ("EpollSelector.select", "kernel: epoll wait (idle)"),
    ("opentelemetry/", "OpenTelemetry SDK/API"),
    ("trading_shared/", "trading_shared (this SDK)"),
    ("redis/", "driver (redis-py)"),
    ("asyncpg/", "driver (asyncpg)"),
    ("pybreaker/", "pybreaker"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("uvloop", "asyncio"),
)
# Without --full-filenames py-spy prints paths relative to site-packages' package dirs: recognise OpenTelemetry's.
_SHORT_OTEL = re.compile(r"\((trace|metrics|attributes|context|util|_shared_internal|sdk|baggage|propagate)/")


def _component(frame: str) -> str:
    for needle, name in _COMPONENTS:
        if needle in frame:
            return name
    if _SHORT_OTEL.search(frame):
        return "OpenTelemetry SDK/API"
    return "other"


def summarize(path: Path, top: int = 25) -> str:
    """Group py-spy ``--format raw`` samples of the event loop's thread by component and function."""
    incl: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    comp: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "run_forever" not in stack and "uvloop" not in stack:
            continue  # other threads (span and metric exporters) and start-up
        if "importlib._bootstrap" in stack or "Bench.open" in stack or "Bench.close" in stack:
            continue  # imports, populating and closing: not the measured loop
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += n
        for f in set(frames):
            incl[f] += n
        leaf[frames[-1]] += n
        comp[_component(frames[-1])] += n
    if not total:
        return "no event-loop samples found"
    out = [f"{total} samples on the event loop's thread", "", "self time by component:"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in comp.most_common()]
    out += ["", "inclusive (top):"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in incl.most_common(top + 8)[8:]]
    out += ["", "self (top):"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in leaf.most_common(top)]
    return "\n".join(out)


async def _workload(kind: str, variant: str, tasks: int, seconds: float, url: str) -> None:
    from .otel import configured

    otel = configured()
    system, _, command = kind.partition("-")
    if system == "redis":
        from .redis_bench import RedisBench

        rb = RedisBench(url, otel)
        await rb.open()
        variants = {v.key: v for v in rb.latency_variants(command.upper())}
        closer = rb.close
    else:
        from .postgres import FETCHROW_SQL, FETCHVAL_SQL, PostgresBench

        pb = PostgresBench(url, otel)
        await pb.open()
        sql = FETCHROW_SQL if command == "fetchrow" else FETCHVAL_SQL
        variants = {v.key: v for v in pb.latency_variants(command, sql)}
        closer = pb.close
    v = variants[variant]
    if v.before:
        await v.before()
    end = time.monotonic() + seconds
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < end:
            await v.op(i)
            i += tasks
            done += 1

    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(tasks)))
    elapsed = time.perf_counter() - started
    cpu_us = (time.process_time() - cpu) / done * 1e6
    print(f"{kind} {variant} x{tasks}: {done / elapsed:,.0f} ops/s, {cpu_us:.1f} us CPU/op")
    if v.after:
        await v.after()
    await closer()
    otel.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", nargs="?", choices=("redis-get", "redis-set", "pg-fetchrow", "pg-fetchval"))
    parser.add_argument("--variant", default="sdk_otel")
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--summarize", type=Path, help="summarise a py-spy --format raw file instead")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not args.workload:
        parser.error("give a workload or --summarize FILE")
    from support.servers import PostgresServer, RedisServer

    server: PostgresServer | RedisServer = RedisServer() if args.workload.startswith("redis") else PostgresServer()
    try:
        server.start()
        url = server.url() if isinstance(server, RedisServer) else server.dsn()
        coro = _workload(args.workload, args.variant, args.tasks, args.seconds, url)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
