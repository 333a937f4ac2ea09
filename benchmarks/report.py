"""Tables and target verdicts, as plain text (terminal) and Markdown (docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .harness import CaseResult, Row


@dataclass
class Verdict:
    target: str
    measured: str
    ok: bool | None  # None: not measured


def header(plan: str, interpreter: str) -> str:
    return f"trading-shared benchmarks\ninterpreter: {interpreter}\nplan: {plan}"


def _spread(row: Row) -> str:
    lo, hi = row.spread
    return f"{lo * 100:+.0f}%/{hi * 100:+.0f}%"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cells(result: CaseResult, row: Row) -> list[str]:
    if result.unit == "rows/s":
        return [
            row.label,
            f"{row.rate:,.0f}",
            f"{row.rate_ratio:.2f}",
            f"{row.per_op_us:.2f}",
            f"{row.cpu_us:.2f}",
            f"{row.cpu_ratio:.2f}",
            _spread(row),
        ]
    return [
        row.label,
        f"{row.per_op_us:.1f}",
        f"{row.cost_ratio:.2f}",
        f"{row.rate:,.0f}",
        f"{row.cpu_us:.1f}",
        f"{row.cpu_ratio:.2f}",
        _num(row.p50_us, ".0f"),
        _num(row.p99_us, ".0f"),
        _num(row.p99_ratio, ".2f"),
        _spread(row),
    ]


def _columns(result: CaseResult) -> list[str]:
    if result.unit == "rows/s":
        return ["variant", "rows/s", "rows/s x base", "us/row", "cpu us/row", "cpu x base", "spread"]
    return ["variant", "us/op", "x raw", "ops/s", "cpu us/op", "cpu x raw", "p50 us", "p99 us", "p99 x raw",
            "spread"]  # fmt: skip


def _title(result: CaseResult) -> str:
    rounds = result.rows[0].rounds if result.rows else 0
    return f"{result.group}: {result.name} ({rounds} rounds, medians; ratios to the first line)"


def text_tables(results: Iterable[CaseResult]) -> str:
    out = []
    for result in results:
        cols = _columns(result)
        body = [_cells(result, row) for row in result.rows]
        widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(cols)]
        lines = [_title(result)]
        for cells in (cols, *body):
            pairs = enumerate(zip(cells, widths, strict=True))
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def markdown_tables(results: Iterable[CaseResult]) -> str:
    out = []
    for result in results:
        cols = _columns(result)
        lines = [f"**{_title(result)}**", "", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
        for row in result.rows:
            lines.append("| " + " | ".join(_cells(result, row)) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _find(results: list[CaseResult], group: str, name_start: str) -> CaseResult | None:
    return next((r for r in results if r.group == group and r.name.startswith(name_start)), None)


def _check(
    out: list[Verdict], result: CaseResult | None, key: str, what: str, attr: str, limit: float, at_most: bool
) -> None:
    row = result.row(key) if result is not None else None
    sign = "<=" if at_most else ">="
    target = f"{what} {sign} {limit:g}x"
    if row is None or getattr(row, attr) is None:
        out.append(Verdict(target, "not measured", None))
        return
    value: float = getattr(row, attr)
    ok = value <= limit if at_most else value >= limit
    measured = f"{value:.2f}x"
    if attr in ("cost_ratio", "rate_ratio") and row.cpu_ratio:
        by_cpu = row.cpu_ratio if attr == "cost_ratio" else 1 / row.cpu_ratio
        measured += f" (by CPU time {by_cpu:.2f}x)"
    out.append(Verdict(target, measured, ok))


def verdicts(results: list[CaseResult]) -> list[Verdict]:
    """Every target line of issue 6 against one loop's results."""
    v: list[Verdict] = []
    get1 = _find(results, "redis", "GET, one at a time")
    get64 = _find(results, "redis", "GET, 64")
    fetchrow1 = _find(results, "postgres", "fetchrow by key, one at a time")
    _check(v, get1, "sdk_otel", "Redis GET x1, SDK spans+metrics, time vs raw", "cost_ratio", 1.35, True)
    _check(v, get1, "sdk", "Redis GET x1, SDK without OTel SDK, time vs raw", "cost_ratio", 1.10, True)
    _check(v, get64, "sdk_otel", "Redis GET 64 tasks, SDK spans+metrics, throughput vs raw", "rate_ratio", 0.5, False)
    _check(v, get64, "sdk", "Redis GET 64 tasks, SDK without OTel SDK, throughput vs raw", "rate_ratio", 0.5, False)
    _check(v, fetchrow1, "sdk_otel", "PG fetchrow x1, SDK spans+metrics, time vs raw pool.fetchrow", "cost_ratio", 1.0,
           True)  # fmt: skip
    for bulk in (r for r in results if r.group == "bulk" and r.name.startswith("upsert")):
        mode = "insert" if "empty" in bulk.name else "update"
        _check(v, bulk, "sdk_legacy", f"bulk_upsert_instruments ({mode}) rate vs COPY staging", "rate_ratio", 0.8,
               False)  # fmt: skip
        _check(v, bulk, "sdk_copy", f"SDK copy_upsert ({mode}) rate vs COPY staging", "rate_ratio", 0.8, False)
    xadd = _find(results, "bulk", "xadd")
    _check(v, xadd, "sdk", "xadd_bulk rate vs hand-written pipeline", "rate_ratio", 0.9, False)
    for result in results:
        if result.group in ("redis", "postgres") and result.concurrency == 1:
            short = f"{'Redis' if result.group == 'redis' else 'PG'} {result.name.split(',')[0]} x1"
            _check(v, result, "sdk_otel", f"{short} p99, SDK spans+metrics, vs raw p99", "p99_ratio", 1.5, True)
            _check(v, result, "sdk", f"{short} p99, SDK without OTel SDK, vs raw p99", "p99_ratio", 1.2, True)
    return v


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def text_verdicts(vs: list[Verdict]) -> str:
    width = max((len(x.target) for x in vs), default=10)
    lines = ["targets:"]
    lines += [f"  {_mark(x.ok):4}  {x.target.ljust(width)}  {x.measured}" for x in vs]
    return "\n".join(lines)


def markdown(head: str, by_loop: dict[str, list[CaseResult]], notes: list[str]) -> str:
    parts = ["```", head, "```"]
    for loop_name, results in by_loop.items():
        parts += ["", f"### Event loop: {loop_name}", "", markdown_tables(results), ""]
        parts += ["| verdict | target | measured |", "|---|---|---:|"]
        parts += [f"| {_mark(x.ok)} | {x.target} | {x.measured} |" for x in verdicts(results)]
    if notes:
        parts += [""] + [f"- note: {n}" for n in notes]
    return "\n".join(parts) + "\n"
