"""The fault scripts (nemeses) shared by the PostgreSQL and Redis history tests, and the evidence that they hit.

A nemesis gets a :class:`Ctx` and injects one kind of fault for about two seconds. The scripts that exist for both
servers (lost replies, resets, latency, blackhole, restarts, freeze, cancelled calls) live here once; the history
tests add their server-specific ones (terminated backends, DEBUG SLEEP, LOADING...). Fault counts are booked under
``<system>.<kind>`` (``pg.reply_lost``).

Evidence: :func:`mark_hits` marks, per write id, the writes a fault demonstrably reached: the SDK span of the call
holds a failed attempt (not a conflict) or a cancellation, the call ended in an infrastructure error, the proxy
dropped the reply to a request that carried the id (:attr:`FaultProxy.lost_requests`), or held such a request back
for at least :data:`SLOW` seconds (:attr:`FaultProxy.delayed_requests`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan

from support.proxy import FaultProxy, ProxyMode
from trading_shared.telemetry import names

from .harness import Workload, count_fault
from .history import LEDGER, History, Ledger, Outcome, Report

#: Call errors that are not the injected fault: a conflict that outlasted the retries happens without any fault.
NOT_A_FAULT = {"SerializationError"}

#: A chunk the proxy held back at least this long counts as a write the latency fault reached (the history tests'
#: latency steps are 0.01 to 0.6 s each way; a round trip on loopback takes well under 1 ms).
SLOW = 0.05

#: Every write id has the form ``<path>-<history serial>-<n>`` (History.new_id): found in request bytes.
_ID = re.compile(rb"(?:pg|redis)\.[a-z_.]+-\d+-\d+")


class Server(Protocol):
    """What the shared scripts need from a test server (PostgresServer and RedisServer both have it)."""

    def restart(self, mode: str = ...) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...


@dataclass
class Ctx:
    """What a nemesis may act on."""

    system: str  # "pg" or "redis": the prefix of the fault counts
    env: Any  # PgEnv or RedisEnv
    proxy: FaultProxy
    client: Any  # PostgresClient or RedisClient
    workload: Workload
    histories: Sequence[History]

    @property
    def server(self) -> Server:
        return self.env.server  # type: ignore[no-any-return]

    def count(self, kind: str, n: int = 1) -> None:
        count_fault(f"{self.system}.{kind}", n)


Nemesis = Callable[[Ctx], Awaitable[None]]


async def lose_replies(ctx: Ctx) -> None:
    """Lose the reply to one write of each path in turn (the proxy arms on a chunk carrying that path's ids), so
    every path has writes whose request the server applied and whose reply never came back."""
    before = len(ctx.proxy.lost_requests)
    for round_ in range(3):
        for history in ctx.histories:
            ctx.proxy.lose_next_reply(match=history.prefix.encode())
            for _ in range(40):  # armed until a write of that path goes out (bounded: 0.4 s)
                await asyncio.sleep(0.01)
                if ctx.proxy.mode is ProxyMode.PASS_THROUGH:
                    break
            await asyncio.sleep(0.03 if round_ else 0.06)
    ctx.proxy.pass_through()
    lost = len(ctx.proxy.lost_requests) - before
    ctx.count("reply_lost", lost)
    assert lost >= len(ctx.histories), f"only {lost} replies lost"


async def resets(ctx: Ctx) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.0  # 8 resets, then more (bounded) while a path has not been reached yet
    for n in itertools.count():
        if n >= 8 and (loop.time() > until or not unreached(ctx)):
            break
        ctx.proxy.reset()
        ctx.count("connection_reset")
        await asyncio.sleep(random.uniform(0.02, 0.08))
        ctx.proxy.pass_through()
        await asyncio.sleep(0.2)


async def latency(ctx: Ctx) -> None:
    for delay in (0.05, 0.3, 0.01, 0.6, 0.1):  # 0.6 s each way is past the 1 s command/socket timeout
        ctx.proxy.latency(delay)
        ctx.count("latency")
        await asyncio.sleep(0.4)
    # A path whose writers waited for a pooled connection through every step was never slowed: keep a 0.1 s
    # latency until each path had a request held back (bounded: 2 s; the test then fails on the missing path).
    ctx.proxy.latency(0.1)
    for _ in range(40):
        slowed = ids_in(data for delay, data in ctx.proxy.delayed_requests if delay >= SLOW)
        if all(any(i.startswith(h.prefix) for i in slowed) for h in ctx.histories):
            break
        await asyncio.sleep(0.05)
    ctx.proxy.pass_through()


async def blackhole(ctx: Ctx) -> None:
    for hold in (0.6, 2.4):  # shorter than the 2 s deadline (calls survive), then longer (deadline exceeded)
        ctx.proxy.blackhole()
        ctx.count("blackhole")
        await asyncio.sleep(hold)
        ctx.proxy.pass_through()
        await asyncio.sleep(0.4)


def restart(mode: str) -> Nemesis:
    async def nemesis(ctx: Ctx) -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            await asyncio.to_thread(ctx.server.restart, mode)  # returns once the server answers again
            ctx.count(f"restart_{mode}")
        await asyncio.sleep(0.4)

    return nemesis


async def freeze(ctx: Ctx) -> None:
    for hold in (0.6, 2.4):
        await asyncio.to_thread(ctx.server.freeze)
        ctx.count("freeze")
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(ctx.server.thaw)
        await asyncio.sleep(0.4)


async def cancel_calls(ctx: Ctx) -> None:
    for _ in range(100):
        await asyncio.sleep(random.uniform(0.005, 0.03))
        if ctx.workload.cancel_random():
            ctx.count("task_cancelled")
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0
    while (missing := unreached(ctx)) and loop.time() < until:  # bounded: then the test fails on the missing path
        await asyncio.sleep(0.005)
        if ctx.workload.cancel_random(missing):
            ctx.count("task_cancelled")


#: The scripts both history tests run.
SHARED: dict[str, Nemesis] = {
    "reply_lost": lose_replies,
    "connection_reset": resets,
    "latency": latency,
    "blackhole": blackhole,
    "freeze": freeze,
    "task_cancelled": cancel_calls,
}


def ids_in(requests: Iterable[bytes]) -> set[str]:
    """The write ids carried by raw request bytes."""
    return {m.decode() for chunk in requests for m in _ID.findall(chunk)}


def mark_hits(spans: Iterable[ReadableSpan], workload: Workload, proxy: FaultProxy | None) -> set[str]:
    """Mark in each history the writes the fault reached; return the ids whose reply the proxy dropped."""
    calls = workload.calls_by_span
    spans = list(spans)
    parents = {s.context.span_id: s.parent for s in spans if s.context is not None}
    for span in spans:
        parent = span.parent
        while parent is not None and parent.span_id not in calls:
            parent = parents.get(parent.span_id)  # an SDK span in between: xadd_bulk's send span over its chunks
        if parent is None:
            continue
        for event in span.events:
            attrs = event.attributes or {}
            if event.name == names.EVENT_CANCELLED or (
                event.name == names.EVENT_ATTEMPT_FAILED and attrs.get(names.FAULT) != "conflict"
            ):
                history, ids = calls[parent.span_id]
                history.hit.update(ids)
                break
    cut = ids_in(proxy.lost_requests) if proxy is not None else set()
    slowed = ids_in(d for delay, d in proxy.delayed_requests if delay >= SLOW) if proxy is not None else set()
    for history in workload.histories:
        for rec in history.records:
            if (rec.error is not None and rec.error not in NOT_A_FAULT) or rec.id in cut or rec.id in slowed:
                history.hit.add(rec.id)
    return cut


def unreached(ctx: Ctx) -> set[str]:
    """The paths none of whose writes the fault has reached so far (by the evidence of the calls ended so far)."""
    mark_hits(ctx.env.otel.spans(), ctx.workload, ctx.proxy)
    return {h.path for h in ctx.histories if not h.hit}


def indeterminate_bound(writers: int, events: int) -> int:
    """The most calls of one path a fault may leave indeterminate: each writer has one call in flight, and one
    fault event (a lost reply, a reset, a restart, a cancellation...) can cut at most the calls then in flight, so
    ``writers * events`` (at least one event). An SDK that calls "may have been applied" what it knows failed, or
    succeeded, exceeds it."""
    return writers * max(events, 1)


def verify(
    reports: Sequence[Report],
    workload: Workload,
    fault: str,
    events: int,
    cut: set[str],
    sdk_errors: set[str],
    ledger: Ledger = LEDGER,
) -> None:
    """Every check of one history run, and the bookkeeping of the hits for the session summary.

    Per path: some write acknowledged; no lost, unexpected or (where observable) duplicated write; the fault reached
    at least one of its writes; for lost replies, the proxy dropped the reply to at least one of its writes; at
    most :func:`indeterminate_bound` indeterminate calls. Over all paths: callers saw only the SDK's errors.
    """
    histories = {h.path: h for h in workload.histories}
    summary = "\n".join(r.summary() for r in reports)
    for report in reports:
        history = histories[report.path]
        ledger.hit(report.path, fault, report.hit)
        assert report.ok > 0, f"{report.path} never succeeded:\n{summary}"
        report.assert_clean()
        assert report.hit > 0, f"fault {fault} reached none of the writes of {report.path}:\n{summary}"
        if fault == "reply_lost":
            mine = {r.id for r in history.records} & cut
            assert mine, f"no reply to a write of {report.path} was lost:\n{summary}"
        calls = history.calls_with(Outcome.INFO)
        bound = indeterminate_bound(workload.writers_of[report.path], events)
        assert calls <= bound, f"{report.path}: {calls} indeterminate calls, more than {bound}:\n{summary}"
    # Under infrastructure faults a caller only ever sees the SDK's errors (all ConnectionErrors), a cancellation
    # it caused, or a conflict that outlasted the retries: never a raw driver error that reads like its own mistake.
    seen = {e for r in reports for e in r.errors}
    assert seen <= sdk_errors, f"callers saw raw driver errors {seen - sdk_errors}:\n{summary}"
