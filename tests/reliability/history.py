"""A Jepsen-style history checker for writes made under faults (pure logic: no I/O, no SDK calls).

How it works
------------
Concurrent writers give every write a unique id and record the outcome of each call that carried it:

* ``OK``: the call returned normally (acknowledged).
* ``FAIL``: a definite failure, the error says the write was NOT applied: a
  :class:`~trading_shared.errors.ServiceUnavailableError` with ``may_have_been_applied is False`` (including
  ``CircuitOpenError`` and ``PoolExhaustedError``), or a caller error (any other exception: the driver's own error
  for a request the server refused, or bad input refused before sending).
* ``INFO``: indeterminate, the write may or may not have been applied: ``may_have_been_applied is True``
  (``OutcomeUnknownError``, ``DeadlineExceededError`` cut mid-attempt...), or the calling task was cancelled.

A :class:`~trading_shared.errors.BulkWriteError` is split per item: ``not_written`` items are ``FAIL``,
``outcome_unknown`` items ``INFO``, every other item of the call ``OK``.

After the faults, the test reads the server's state back as a multiset of ids and :func:`check` computes:

* **lost**: acknowledged (``OK``) but absent;
* **unexpected**: present although recorded as definitely failed (``FAIL``), or present but never written;
* **duplicated**: present more than once (one write applied twice).

``INFO`` writes may be present once or absent: both are legal, and the report counts how many landed.

On a *keyed* path (the read-back holds each id at most once by construction: a primary key, a Redis key, an
explicit stream entry ID) a duplicate cannot be observed; :func:`check` with ``keyed=True`` reports duplicated as
not applicable instead of a 0 that could never be anything else.

Counters (several increments of one key) cannot name their writes. :func:`check_counter` is exact, never a net
count: the caller states how many of the indeterminate increments the server shows (known from other evidence, e.g.
the proxy lost their replies after the server answered), and the value must equal ``ok`` plus that number. A
history run that cannot know it gives every increment its own key instead (then it is a plain :func:`check`).

Evidence: :attr:`History.hit` holds the ids of writes a fault demonstrably reached (a failed attempt, a
cancellation, an infrastructure error, a reply the proxy cut); the report counts them, per fault kind in the
:class:`Ledger`, so a path no fault reached cannot read as "survived".
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from trading_shared.errors import BulkWriteError, ServiceUnavailableError

T = TypeVar("T")


class Outcome(enum.Enum):
    """What a caller can conclude about one write after its call ended."""

    OK = "ok"
    FAIL = "fail"
    INFO = "info"


def outcome_of(exc: BaseException | None) -> Outcome:
    """The outcome of a call that ended with ``exc`` (``None``: it returned). Bulk errors: :func:`item_outcomes`."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.INFO
    if isinstance(exc, ServiceUnavailableError):
        return Outcome.INFO if exc.may_have_been_applied else Outcome.FAIL
    return Outcome.FAIL


def item_outcomes(count: int, exc: BaseException | None) -> list[Outcome]:
    """Per-item outcomes of a call that wrote ``count`` items and ended with ``exc``."""
    if isinstance(exc, BulkWriteError):
        outcomes = [Outcome.OK] * count
        for i in exc.not_written:
            outcomes[i] = Outcome.FAIL
        for i in exc.outcome_unknown:
            outcomes[i] = Outcome.INFO
        return outcomes
    return [outcome_of(exc)] * count


@dataclasses.dataclass(frozen=True)
class Record:
    """One write id and the outcome of the call that carried it."""

    id: str
    outcome: Outcome
    error: str | None
    call: int = 0  # the call's number in its history (the items of one batch share it)


class History:
    """The writes of one write path, in the order their calls ended. Not thread-safe (one event loop)."""

    _serial = itertools.count()

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[Record] = []
        self.hit: set[str] = set()
        self._prefix = f"{path}-{next(self._serial)}-"
        self._next = itertools.count()
        self._calls = itertools.count()

    def new_id(self) -> str:
        """A write id unique across every history of the process."""
        return f"{self._prefix}{next(self._next)}"

    def new_ids(self, count: int) -> list[str]:
        """``count`` fresh ids."""
        return [self.new_id() for _ in range(count)]

    def record(self, ids: Sequence[str], exc: BaseException | None) -> None:
        """Record the call that carried ``ids`` (in its input order) and ended with ``exc``."""
        error = None if exc is None else type(exc).__name__
        call = next(self._calls)
        for write_id, outcome in zip(ids, item_outcomes(len(ids), exc), strict=True):
            self.records.append(Record(write_id, outcome, error, call))

    async def call(self, ids: Sequence[str], make: Callable[[], Awaitable[T]]) -> T | None:
        """Await ``make()`` and record its outcome for ``ids``; errors are recorded, not raised.

        Cancellation is recorded as indeterminate and then re-raised (the writer task stops).
        """
        try:
            result = await make()
        except asyncio.CancelledError as exc:
            self.record(ids, exc)
            raise
        except Exception as exc:
            self.record(ids, exc)
            return None
        self.record(ids, None)
        return result

    @property
    def prefix(self) -> str:
        """The common prefix of this history's ids (it names the path: a proxy can find the writes on the wire)."""
        return self._prefix

    def calls_with(self, outcome: Outcome) -> int:
        """How many calls (not items) had at least one item with ``outcome``: a batch of 20 is one call."""
        return len({r.call for r in self.records if r.outcome is outcome})

    def outcomes(self) -> Counter[Outcome]:
        """How many writes ended in each outcome."""
        return Counter(r.outcome for r in self.records)

    def errors(self) -> Counter[str]:
        """How many writes ended with each error type."""
        return Counter(r.error for r in self.records if r.error is not None)


@dataclasses.dataclass
class Report:
    """The verdict on one history."""

    path: str
    keyed: bool = False
    writes: int = 0
    ok: int = 0
    failed: int = 0
    indeterminate: int = 0
    indeterminate_applied: int = 0
    hit: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    duplicated: list[str] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        """No lost, unexpected or duplicated write."""
        return not (self.lost or self.unexpected or self.duplicated)

    def summary(self) -> str:
        """One line for failure messages and logs."""
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        dup = "n/a (keyed)" if self.keyed else str(len(self.duplicated))
        return (
            f"{self.path}: {self.writes} writes (ok {self.ok}, failed {self.failed}, indeterminate "
            f"{self.indeterminate} of which {self.indeterminate_applied} applied; {self.hit} reached by the fault); "
            f"lost {len(self.lost)}, unexpected {len(self.unexpected)}, duplicated {dup}; errors: {errors}"
        )

    def assert_clean(self) -> None:
        """Raise AssertionError naming a few offending ids unless the history is clean."""
        if not self.clean:
            raise AssertionError(
                self.summary()
                + f"\n  lost e.g. {self.lost[:5]}\n  unexpected e.g. {self.unexpected[:5]}"
                + f"\n  duplicated e.g. {self.duplicated[:5]}"
            )


def check(history: History, observed: Iterable[str], *, keyed: bool = False) -> Report:
    """Compare a history of uniquely identified writes with the ids read back from the server (a multiset).

    ``keyed``: the read-back cannot hold an id twice by construction, so duplicated is reported as not applicable
    (an id seen twice anyway is a broken read-back: ValueError)."""
    by_id: dict[str, Outcome] = {}
    for rec in history.records:
        if rec.id in by_id:
            raise ValueError(f"write id {rec.id!r} recorded twice: ids must be unique (use check_counter)")
        by_id[rec.id] = rec.outcome
    seen = Counter(observed)
    report = _tally(history)
    for write_id, outcome in by_id.items():
        present = seen.get(write_id, 0)
        if outcome is Outcome.OK and present == 0:
            report.lost.append(write_id)
        elif outcome is Outcome.FAIL and present > 0:
            report.unexpected.append(write_id)
        elif outcome is Outcome.INFO and present > 0:
            report.indeterminate_applied += 1
    report.unexpected += sorted(i for i in seen if i not in by_id)  # present but never written
    report.duplicated = sorted(i for i, n in seen.items() if n > 1)
    if keyed:
        if report.duplicated:
            raise ValueError(f"{history.path} is keyed but the read-back holds ids twice: {report.duplicated[:5]}")
        report.keyed = True
    return report


def check_counter(history: History, values: Mapping[str, int], applied: Mapping[str, int]) -> Report:
    """Check counters exactly: each record's id names the counter its call incremented by one.

    ``applied`` says, per counter, how many of its indeterminate increments the server shows (from evidence outside
    the counter: a reply the proxy dropped after the server answered is an applied increment). Then every counter
    must read exactly ``ok + applied``: below is a lost increment (one entry per missing increment), above an
    increment applied twice or a definitely failed one applied (duplicated). Never a net count with slack: a failed
    increment that landed cannot hide behind an indeterminate one that did not.
    """
    report = _tally(history)
    per_key: dict[str, Counter[Outcome]] = {}
    for rec in history.records:
        per_key.setdefault(rec.id, Counter())[rec.outcome] += 1
    for key in sorted(set(per_key) | set(values) | set(applied)):
        tally = per_key.get(key, Counter())
        ok, info = tally[Outcome.OK], tally[Outcome.INFO]
        landed = applied.get(key, 0)
        if not 0 <= landed <= info:
            raise ValueError(f"counter {key!r}: {landed} indeterminate increments said applied, {info} recorded")
        value = values.get(key, 0)
        if value < ok + landed:
            report.lost += [key] * (ok + landed - value)
        elif value > ok + landed:
            report.duplicated += [key] * (value - ok - landed)
        report.indeterminate_applied += landed
    return report


def _tally(history: History) -> Report:
    outcomes = history.outcomes()
    return Report(
        path=history.path,
        hit=len(history.hit),
        writes=len(history.records),
        ok=outcomes[Outcome.OK],
        failed=outcomes[Outcome.FAIL],
        indeterminate=outcomes[Outcome.INFO],
        errors=history.errors(),
    )


@dataclasses.dataclass
class Ledger:
    """Totals for the end-of-session summary: faults injected and every checked report."""

    faults: Counter[str] = dataclasses.field(default_factory=Counter)
    reports: list[Report] = dataclasses.field(default_factory=list)
    #: (path, fault kind) -> writes of that path the fault demonstrably reached, over the history runs.
    hits: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    bounded_calls: int = 0
    worst_overshoot: float = 0.0

    def bounded(self, overshoot: float) -> None:
        """Note one call that had to end by its deadline: ``overshoot`` seconds past it (negative: before)."""
        self.bounded_calls += 1
        self.worst_overshoot = max(self.worst_overshoot, overshoot)

    def fault(self, kind: str, count: int = 1) -> None:
        """Count ``count`` injected faults of ``kind``."""
        self.faults[kind] += count

    def add(self, report: Report) -> Report:
        """Keep a checked report (returned for chaining)."""
        self.reports.append(report)
        return report

    def hit(self, path: str, fault: str, writes: int) -> None:
        """Book ``writes`` writes of ``path`` that ``fault`` reached (0 is booked too: it shows in the summary)."""
        self.hits[(path, fault)] += writes

    def hit_table(self) -> list[str]:
        """One line per path: the writes each fault kind reached, in a fixed fault order."""
        lines = []
        for path in sorted({p for p, _ in self.hits}):
            cells = sorted((f, n) for (p, f), n in self.hits.items() if p == path)
            lines.append(f"{path:<28} " + "  ".join(f"{f} {n}" for f, n in cells))
        return lines

    def summary(self) -> str:
        """The one-line session summary."""
        writes = sum(r.writes for r in self.reports)
        lost = sum(len(r.lost) for r in self.reports)
        dup = sum(len(r.duplicated) for r in self.reports)
        unexpected = sum(len(r.unexpected) for r in self.reports)
        info = sum(r.indeterminate for r in self.reports)
        landed = sum(r.indeterminate_applied for r in self.reports)
        paths = len({".".join(r.path.split(".")[:2]) for r in self.reports})  # pg.transaction.deadlock: pg.transaction
        return (
            f"{sum(self.faults.values())} faults injected, {writes} writes checked over {paths} write paths "
            f"({len(self.reports)} histories): lost {lost}, duplicated {dup}, unexpected {unexpected} "
            f"(indeterminate {info}, of which {landed} applied)"
        )

    def fault_breakdown(self) -> str:
        """Faults by kind, most frequent first."""
        return ", ".join(f"{kind} {n}" for kind, n in self.faults.most_common())


#: The session's ledger, read by ``pytest_terminal_summary`` in this package's conftest.
LEDGER = Ledger()
