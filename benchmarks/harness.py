"""Timing core: interleaved rounds (every variant once per round, order rotated), medians, paired ratios.

A *latency case* runs ``ops`` operations per batch, one at a time or from ``concurrency`` tasks, and records every
operation's latency. A *bulk case* runs one large operation per batch and reports rows per second. In each round
every variant runs one batch; the order rotates from round to round so no variant always follows the same one.
Between batches (untimed): the variant's ``after`` hook (e.g. flush queued spans), then ``gc.collect()``, so one
variant's garbage or export backlog is not charged to the next.

Reported per variant: the median over rounds of the wall time per operation (or rows/s) and its ratio to the
baseline's median; the median process CPU time per operation (all threads, so span and metric export threads count;
another process's burst inflates it much less than wall time) and its ratio to the baseline's; p50 over all
latencies of all rounds; p99 as the median over rounds of each round's p99 (one round hit by another process's
burst does not decide the tail) and its ratio to the baseline's; the spread (min and max of the per-round times
relative to the median).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Hook = Callable[[], Awaitable[None]]


@dataclass
class Variant:
    """One way of doing the operation. ``op(i)`` performs operation number ``i`` (used to pick a key)."""

    key: str
    label: str
    op: Callable[[int], Awaitable[Any]]
    before: Hook | None = None  # untimed, before each batch
    after: Hook | None = None  # untimed, after each batch


@dataclass
class LatencyCase:
    """Operations measured one by one (``concurrency`` 1) or from many tasks at once."""

    group: str
    name: str
    concurrency: int
    ops: int
    variants: list[Variant]
    baseline: str = "raw"
    warmup_ops: int = 200


@dataclass
class BulkVariant:
    """One bulk path. ``run()`` returns the number of rows written; ``prepare()`` resets the table (untimed)."""

    key: str
    label: str
    run: Callable[[], Awaitable[int]]
    prepare: Hook | None = None
    after: Hook | None = None


@dataclass
class BulkCase:
    group: str
    name: str
    variants: list[BulkVariant]
    baseline: str


@dataclass
class Row:
    """One line of the result table."""

    key: str
    label: str
    per_op_us: float  # median over rounds (bulk: microseconds per row)
    cpu_us: float  # process CPU time per op (bulk: per row), median over rounds
    rate: float  # ops/s or rows/s (median over rounds)
    cost_ratio: float  # median time per op / the baseline's (bulk: the same for time per row)
    rate_ratio: float  # 1 / cost_ratio: ops/s (rows/s) relative to the baseline
    cpu_ratio: float = 0.0  # median CPU per op / the baseline's
    p50_us: float | None = None
    p99_us: float | None = None
    p99_ratio: float | None = None
    spread: tuple[float, float] = (0.0, 0.0)  # (min, max) of per-round per_op_us, relative to the median
    rounds: int = 0


@dataclass
class CaseResult:
    group: str
    name: str
    concurrency: int
    rows: list[Row] = field(default_factory=list)
    unit: str = "us/op"

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


async def _batch(
    op: Callable[[int], Awaitable[Any]], ops: int, concurrency: int, start: int
) -> tuple[float, float, list[float]]:
    pc = time.perf_counter
    cpu = time.process_time
    if concurrency == 1:
        lat = [0.0] * ops
        c_start = cpu()
        t_start = pc()
        for i in range(ops):
            t = pc()
            await op(start + i)
            lat[i] = pc() - t
        return pc() - t_start, cpu() - c_start, lat

    lat = []
    keys = iter(range(start, start + ops))
    append = lat.append

    async def worker() -> None:
        for i in keys:  # one shared iterator: the tasks split the work between them
            t = pc()
            await op(i)
            append(pc() - t)

    c_start = cpu()
    t_start = pc()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return pc() - t_start, cpu() - c_start, lat


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def _rotated(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


async def run_latency_case(case: LatencyCase, rounds: int, progress: Callable[[str], None]) -> CaseResult:
    """Warm every variant up, then run ``rounds`` interleaved rounds."""
    for v in case.variants:
        if v.before:
            await v.before()
        await _batch(v.op, min(case.warmup_ops, case.ops), case.concurrency, 0)
        if v.after:
            await v.after()
    per_op: dict[str, list[float]] = {v.key: [] for v in case.variants}
    cpu_op: dict[str, list[float]] = {v.key: [] for v in case.variants}
    p99s: dict[str, list[float]] = {v.key: [] for v in case.variants}
    latencies: dict[str, list[float]] = {v.key: [] for v in case.variants}
    for r in range(rounds):
        for v in _rotated(case.variants, r):
            if v.before:
                await v.before()
            gc.collect()
            elapsed, cpu, lat = await _batch(v.op, case.ops, case.concurrency, r * case.ops)
            if v.after:
                await v.after()
            per_op[v.key].append(elapsed / case.ops)
            cpu_op[v.key].append(cpu / case.ops)
            p99s[v.key].append(_quantile(sorted(lat), 0.99))
            latencies[v.key].extend(lat)
        progress(f"{case.group} {case.name}: round {r + 1}/{rounds}")
    result = CaseResult(case.group, case.name, case.concurrency)
    base = statistics.median(per_op[case.baseline])
    base_cpu = statistics.median(cpu_op[case.baseline])
    base_p99 = statistics.median(p99s[case.baseline])
    for v in case.variants:
        times = per_op[v.key]
        med = statistics.median(times)
        cpu = statistics.median(cpu_op[v.key])
        p99 = statistics.median(p99s[v.key])
        result.rows.append(
            Row(
                key=v.key,
                label=v.label,
                per_op_us=med * 1e6,
                cpu_us=cpu * 1e6,
                rate=1.0 / med,
                cost_ratio=med / base,
                rate_ratio=base / med,
                cpu_ratio=cpu / base_cpu,
                p50_us=_quantile(sorted(latencies[v.key]), 0.5) * 1e6,
                p99_us=p99 * 1e6,
                p99_ratio=p99 / base_p99,
                spread=(min(times) / med - 1, max(times) / med - 1),
                rounds=rounds,
            )
        )
    return result


async def run_bulk_case(case: BulkCase, rounds: int, progress: Callable[[str], None]) -> CaseResult:
    """Each round: every variant once (order rotated), ``prepare`` untimed before each run."""
    seconds: dict[str, list[float]] = {v.key: [] for v in case.variants}
    cpus: dict[str, list[float]] = {v.key: [] for v in case.variants}
    rows: dict[str, int] = {}
    for r in range(rounds):
        for v in _rotated(case.variants, r):
            if v.prepare:
                await v.prepare()
            gc.collect()
            c0 = time.process_time()
            t0 = time.perf_counter()
            n = await v.run()
            elapsed = time.perf_counter() - t0
            cpus[v.key].append(time.process_time() - c0)
            if v.after:
                await v.after()
            seconds[v.key].append(elapsed)
            rows[v.key] = n
            progress(f"{case.group} {case.name}: round {r + 1}/{rounds} {v.key} {n / elapsed:,.0f} rows/s")
    result = CaseResult(case.group, case.name, 1, unit="rows/s")
    base = statistics.median(seconds[case.baseline]) / rows[case.baseline]
    base_cpu = statistics.median(cpus[case.baseline]) / rows[case.baseline]
    for v in case.variants:
        times = seconds[v.key]
        n = rows[v.key]
        med = statistics.median(times)
        cpu = statistics.median(cpus[v.key]) / n
        result.rows.append(
            Row(
                key=v.key,
                label=v.label,
                per_op_us=med / n * 1e6,
                cpu_us=cpu * 1e6,
                rate=n / med,
                cost_ratio=(med / n) / base,
                rate_ratio=base / (med / n),
                cpu_ratio=cpu / base_cpu,
                spread=(min(times) / med - 1, max(times) / med - 1),
                rounds=rounds,
            )
        )
    return result
