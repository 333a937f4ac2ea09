"""Unit tests of the history checker (pure logic, no servers)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from trading_shared import (
    BulkWriteError,
    CircuitOpenError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PoolExhaustedError,
    ServiceUnavailableError,
)

from .history import History, Ledger, Outcome, check, check_counter, item_outcomes, outcome_of


def _unavailable(cls: type[ServiceUnavailableError], applied: bool) -> ServiceUnavailableError:
    return cls("x", operation="op", attempts=1, may_have_been_applied=applied)


def test_outcomes_follow_may_have_been_applied_and_caller_errors_are_definite() -> None:
    assert outcome_of(None) is Outcome.OK
    assert outcome_of(_unavailable(ServiceUnavailableError, False)) is Outcome.FAIL
    assert outcome_of(_unavailable(ServiceUnavailableError, True)) is Outcome.INFO
    assert outcome_of(_unavailable(OutcomeUnknownError, True)) is Outcome.INFO
    assert outcome_of(_unavailable(DeadlineExceededError, True)) is Outcome.INFO
    assert outcome_of(_unavailable(DeadlineExceededError, False)) is Outcome.FAIL
    assert outcome_of(_unavailable(CircuitOpenError, False)) is Outcome.FAIL
    assert outcome_of(_unavailable(PoolExhaustedError, False)) is Outcome.FAIL
    assert outcome_of(asyncpg.UniqueViolationError("dup")) is Outcome.FAIL  # caller error: the server refused it
    assert outcome_of(ValueError("bad input")) is Outcome.FAIL
    assert outcome_of(asyncio.CancelledError()) is Outcome.INFO


def test_bulk_errors_are_split_per_item() -> None:
    err = BulkWriteError("x", operation="xadd_bulk", attempts=2, not_written=[1, 3], outcome_unknown=[2])
    assert item_outcomes(5, err) == [Outcome.OK, Outcome.FAIL, Outcome.INFO, Outcome.FAIL, Outcome.OK]
    assert item_outcomes(2, None) == [Outcome.OK, Outcome.OK]
    assert item_outcomes(2, _unavailable(OutcomeUnknownError, True)) == [Outcome.INFO, Outcome.INFO]


def test_clean_history_with_indeterminate_writes_either_way() -> None:
    h = History("p")
    a, b, c, d = h.new_ids(4)
    h.record([a], None)
    h.record([b], _unavailable(ServiceUnavailableError, False))
    h.record([c, d], _unavailable(OutcomeUnknownError, True))
    report = check(h, [a, c])  # c landed, d did not: both legal
    assert report.clean
    assert (report.writes, report.ok, report.failed, report.indeterminate) == (4, 1, 1, 2)
    assert report.indeterminate_applied == 1
    assert report.errors == {"ServiceUnavailableError": 1, "OutcomeUnknownError": 2}
    report.assert_clean()


def test_lost_unexpected_duplicated_and_phantom_writes_are_found() -> None:
    h = History("p")
    ok_missing, failed_present, ok_twice, info_twice = h.new_ids(4)
    h.record([ok_missing, ok_twice], None)
    h.record([failed_present], asyncpg.SerializationError("40001"))
    h.record([info_twice], _unavailable(DeadlineExceededError, True))
    report = check(h, [failed_present, ok_twice, ok_twice, info_twice, info_twice, "never-written"])
    assert report.lost == [ok_missing]
    assert sorted(report.unexpected) == sorted([failed_present, "never-written"])
    assert report.duplicated == sorted([ok_twice, info_twice])
    assert not report.clean
    with pytest.raises(AssertionError, match="lost 1, unexpected 2, duplicated 2"):
        report.assert_clean()


def test_ids_are_unique_across_histories_and_must_not_be_reused() -> None:
    h1, h2 = History("p"), History("p")
    assert len({*h1.new_ids(100), *h2.new_ids(100)}) == 200
    write_id = h1.new_id()
    h1.record([write_id], None)
    h1.record([write_id], None)
    with pytest.raises(ValueError, match="recorded twice"):
        check(h1, [write_id])


def test_counters_reconcile_exactly_and_cannot_offset() -> None:
    h = History("incr")
    for exc in (None, None, None, _unavailable(OutcomeUnknownError, True), _unavailable(CircuitOpenError, False)):
        h.record(["k1"], exc)
    h.record(["k2"], None)
    # applied = acknowledged + the indeterminate increments the server shows: exact, no slack either way
    assert check_counter(h, {"k1": 3, "k2": 1}, applied={}).clean
    assert check_counter(h, {"k1": 4, "k2": 1}, applied={"k1": 1}).clean
    assert check_counter(h, {"k1": 4, "k2": 1}, applied={"k1": 1}).indeterminate_applied == 1
    # The offset a net count hides: the failed increment landed and the indeterminate one did not (value 4, the
    # same as "indeterminate one landed"). Told that the indeterminate one did not land, the check sees the extra.
    assert check_counter(h, {"k1": 4, "k2": 1}, applied={}).duplicated == ["k1"]
    assert check_counter(h, {"k1": 3, "k2": 1}, applied={"k1": 1}).lost == ["k1"]
    assert check_counter(h, {"k1": 2, "k2": 1}, applied={}).lost == ["k1"]
    assert check_counter(h, {"k1": 6, "k2": 1}, applied={"k1": 1}).duplicated == ["k1", "k1"]
    assert check_counter(h, {"k1": 3, "k2": 0}, applied={}).lost == ["k2"]
    assert check_counter(h, {"k1": 3, "k2": 1, "k3": 1}, applied={}).duplicated == ["k3"]  # never incremented
    with pytest.raises(ValueError, match="said applied"):
        check_counter(h, {"k1": 5, "k2": 1}, applied={"k1": 2})  # only one indeterminate increment exists


def test_keyed_paths_report_duplicates_as_not_applicable() -> None:
    h = History("p")
    a, b = h.new_ids(2)
    h.record([a, b], None)
    report = check(h, [a, b], keyed=True)
    assert report.clean and report.keyed and "duplicated n/a (keyed)" in report.summary()
    with pytest.raises(ValueError, match="keyed but the read-back holds ids twice"):
        check(h, [a, a, b], keyed=True)


def test_calls_with_counts_calls_not_items() -> None:
    h = History("p")
    h.record(h.new_ids(20), _unavailable(OutcomeUnknownError, True))
    h.record(h.new_ids(20), _unavailable(OutcomeUnknownError, True))
    h.record(h.new_ids(3), BulkWriteError("x", operation="b", attempts=1, not_written=[0], outcome_unknown=[1]))
    assert h.calls_with(Outcome.INFO) == 3
    assert h.calls_with(Outcome.FAIL) == 1
    assert h.calls_with(Outcome.OK) == 1


async def test_call_records_results_errors_and_cancellation() -> None:
    h = History("p")

    async def ok() -> int:
        return 7

    async def refused() -> None:
        raise _unavailable(CircuitOpenError, False)

    async def hang() -> None:
        await asyncio.sleep(10)

    assert await h.call(["a"], ok) == 7
    assert await h.call(["b", "c"], refused) is None
    task = asyncio.create_task(h.call(["d"], hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(r.id, r.outcome) for r in h.records] == [
        ("a", Outcome.OK),
        ("b", Outcome.FAIL),
        ("c", Outcome.FAIL),
        ("d", Outcome.INFO),
    ]


def test_ledger_summary_totals() -> None:
    ledger = Ledger()
    ledger.fault("reset", 3)
    ledger.fault("kill")
    h = History("p")
    ids = h.new_ids(3)
    h.record(ids, None)
    ledger.add(check(h, ids[:2]))
    line = ledger.summary()
    assert line.startswith("4 faults injected, 3 writes checked over 1 write paths")
    assert "lost 1, duplicated 0, unexpected 0" in line
    assert ledger.fault_breakdown() == "reset 3, kill 1"
