"""Total deadlines for calls, without a timer per call.

``asyncio.timeout`` costs ~8 us per call here (a timer handle and a heap push and pop each time), more than the
whole budget of a fast Redis call. One watchdog per client instead keeps in-flight calls in a dict and, every
``tick`` seconds while calls are in flight, cancels the tasks of the ones past their deadline. A call's deadline is
therefore kept to within one tick (50 ms by default); registering and unregistering cost about 0.2 us.

A caller's call that runs several pipeline calls in turn (a connect on demand, then the operation; a read on the
replica, then its fallback to the primary) must still end within one deadline, not one per inner call. After the
first step it sets :data:`CALL_DEADLINE` (see :func:`enclosing_deadline`), and each later pipeline call ends by then
at the latest. Time a later step loses that way is not the server's fault: it never counts against a breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Iterator

#: The ``time.monotonic`` end of the enclosing call, or None. A pipeline call ends by this (plus the block time of a
#: blocking read) even if its own deadline would let it run longer.
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "trading_shared_call_deadline", default=None
)


@contextlib.contextmanager
def enclosing_deadline(seconds: float, started: float | None = None) -> Iterator[None]:
    """Bound the pipeline calls inside the block by the end of a caller's call that began at ``started``
    (``time.monotonic``; default now) and must end within ``seconds``. An earlier enclosing end stays in force.

    Enter it after the call's first step (which runs under its own deadline), around the steps that follow.
    """
    end = (time.monotonic() if started is None else started) + seconds
    outer = CALL_DEADLINE.get()
    token = CALL_DEADLINE.set(end if outer is None or outer > end else outer)
    try:
        yield
    finally:
        CALL_DEADLINE.reset(token)


class DeadlineWatchdog:
    """Cancels the task of any registered call that outlives its deadline. One per client, bound to one loop."""

    def __init__(self, tick: float = 0.05) -> None:
        self._tick = tick
        self._next = 0
        self._calls: dict[int, tuple[float, asyncio.Task[object], int]] = {}
        self._expired: set[int] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def register(self, deadline: float) -> int:
        """Watch the current task until :meth:`unregister`; ``deadline`` is on the ``time.monotonic`` clock."""
        task = asyncio.current_task()
        self._next += 1
        token = self._next
        if task is None:  # not in a task: nothing to cancel
            return token
        self._calls[token] = (deadline, task, task.cancelling())
        if self._handle is None or task.get_loop() is not self._loop:
            self._start()
        return token

    def unregister(self, token: int) -> None:
        """Stop watching the call."""
        self._calls.pop(token, None)
        self._expired.discard(token)

    def absorb_cancel(self, token: int) -> bool:
        """After a ``CancelledError``: True when the watchdog caused it and nobody else cancelled the task.

        In that case the cancellation is consumed (``uncancel``) and the caller should raise a deadline error;
        otherwise the ``CancelledError`` must propagate.
        """
        if token not in self._expired:
            return False
        entry = self._calls.get(token)
        if entry is None:
            return False
        _, task, baseline = entry
        return task.uncancel() <= baseline

    def close(self) -> None:
        """Stop ticking (calls still registered are no longer watched)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._calls.clear()
        self._expired.clear()

    def _start(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._handle = loop.call_later(self._tick, self._on_tick)

    def _on_tick(self) -> None:
        if not self._calls or self._loop is None or self._loop.is_closed():
            self._handle = None
            return
        now = time.monotonic()
        for token, (deadline, task, _) in self._calls.items():
            if deadline <= now and token not in self._expired and not task.done():
                self._expired.add(token)
                task.cancel()
        self._handle = self._loop.call_later(self._tick, self._on_tick)


class CallSteps:
    """A caller's call made of several pipeline calls run in turn: connect on demand then the operation, a replica
    read then its fallback to the primary. The first step runs under its own deadline; every later step, inside
    :meth:`next`, gets only what is left of the call's ``deadline`` (counted from when this object was made)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._began = time.monotonic()

    @contextlib.contextmanager
    def next(self) -> Iterator[None]:
        """Run a later step: pipeline calls inside end by the call's deadline at the latest."""
        with enclosing_deadline(self._deadline, self._began):
            yield
