"""The history checks, shown to fail: each mutant is a deliberately broken write path (in this file, never in the
SDK) that loses, duplicates or mislabels a write, and the same :func:`faults.verify` the history runs use must
reject it on every path, with the message naming the defect. Pure logic: an in-memory store stands for the server.

Mutants (``i`` is the call's number; call 0 always fails cleanly, so every run has a write the "fault" reached):

* ``lose``: call 3 is acknowledged but never stored -> lost;
* ``duplicate``: call 3 is stored twice (a re-send of a non-idempotent write) -> duplicated; on keyed paths the
  read-back cannot hold an id twice, which is why those report duplicated as not applicable;
* ``mislabel_failed``: call 3 is stored, then reported as certainly not applied -> unexpected;
* ``mislabel_indeterminate``: every call from 3 on is reported "may have been applied" and not stored (an SDK that
  hides all its failures behind "indeterminate") -> over the indeterminate bound;
* ``untouched``: nothing fails at all (a fault that never reached the path) -> "reached none of the writes";
* ``reply_not_lost``: a reply_lost run in which no reply of the path's writes was dropped.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from support.leaks import eventually
from trading_shared import OutcomeUnknownError, ServiceUnavailableError

from . import faults
from .harness import Workload
from .history import History, Ledger, check
from .test_pg_history import PATHS as PG_PATHS
from .test_pg_history import SDK_ERRORS as PG_ERRORS
from .test_redis_history import PATHS as REDIS_PATHS

#: path -> keyed (a duplicate cannot be observed in its read-back)
PATHS = {p.name: p.keyed for p in PG_PATHS} | {p.name: p.keyed for p in REDIS_PATHS}
CALLS = 6


def _mutant(mode: str, store: Counter[str], keyed: bool) -> Callable[[list[str]], Awaitable[object]]:
    calls = itertools.count()

    def put(ids: list[str]) -> None:
        for i in ids:
            store[i] = 1 if keyed else store[i] + 1

    async def write(ids: list[str]) -> object:
        i = next(calls)
        await asyncio.sleep(0)
        if i == 0 and mode != "untouched":  # a fault reached this call; nothing was applied
            raise ServiceUnavailableError("down", operation="w", attempts=1, may_have_been_applied=False)
        if mode == "mislabel_indeterminate" and i >= 3:
            raise OutcomeUnknownError("cut", operation="w", attempts=1, may_have_been_applied=True)
        if i == 3 and mode == "lose":
            return None
        put(ids)
        if i == 3 and mode == "duplicate":
            put(ids)
        if i == 3 and mode == "mislabel_failed":
            raise ServiceUnavailableError("down", operation="w", attempts=1, may_have_been_applied=False)
        return None

    return write


async def _run(path: str, mode: str, fault: str = "mutant") -> None:
    """One writer on ``path`` through the mutant for CALLS calls, then the history runs' own verification."""
    keyed = PATHS[path]
    store: Counter[str] = Counter()
    history = History(path)
    workload = Workload()
    workload.add(history, _mutant(mode, store, keyed), batch=3, pause=0.0)

    async def enough() -> bool:
        return workload.calls >= CALLS

    try:
        assert await eventually(enough, timeout=10, interval=0.001)
    finally:
        await workload.stop()
    faults.mark_hits([], workload, None)
    report = check(history, list(store.elements()), keyed=keyed)
    faults.verify([report], workload, fault, 1, set(), PG_ERRORS, ledger=Ledger())  # not the session's ledger


EXPECTED = {
    "lose": r"lost [1-9]",
    "duplicate": r"duplicated [1-9]",
    "mislabel_failed": r"unexpected [1-9]",
    "mislabel_indeterminate": r"indeterminate calls, more than 1",
    "untouched": r"reached none of the writes",
}


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_clean_path_passes_the_checks_it_is_compared_with(path: str) -> None:
    await _run(path, "clean")  # the baseline: the mutants below differ from it in one write only


@pytest.mark.parametrize("mode", list(EXPECTED))
@pytest.mark.parametrize("path", sorted(PATHS))
async def test_every_check_fails_against_its_mutant_on_every_path(path: str, mode: str) -> None:
    if mode == "duplicate" and PATHS[path]:
        await _run(path, mode)  # keyed: the duplicate is invisible by construction, hence "duplicated n/a"
        return
    with pytest.raises(AssertionError, match=EXPECTED[mode]):
        await _run(path, mode)


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_reply_lost_run_fails_when_no_reply_of_the_path_was_lost(path: str) -> None:
    with pytest.raises(AssertionError, match=f"no reply to a write of {path} was lost"):
        await _run(path, "clean", fault="reply_lost")
