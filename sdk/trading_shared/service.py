"""Run a daemon: signals, tasks, clients and an exit code, in one documented order.

::

    async def consume() -> None:
        while True:
            ...                       # uses pg and redis

    if __name__ == "__main__":
        pg, redis = PostgresClient(), RedisClient()
        sys.exit(run_service(consume, pg, redis, name="market-data"))

What :class:`Service` does, in order:

1. installs SIGTERM and SIGINT handlers (a signal asks for a clean shutdown; a second one is logged);
2. connects the clients (:class:`~trading_shared.lifecycle.Resources`: concurrently, all-or-nothing);
3. runs each service coroutine function as a task;
4. stops when a signal arrives, when :meth:`Service.stop` is called, when every task has returned, or when one
   raises (a failure);
5. cancels the tasks that are still running and waits for them (up to ``shutdown_timeout``) BEFORE
6. closing the clients in reverse order, then restores the previous signal handlers.

The exit code is 0 for a clean shutdown (a signal, ``stop()``, or every task returned) and 1 for a failure: a
task raised, a client failed to connect, or a task ignored cancellation past ``shutdown_timeout``. The reason is
logged on the ``trading_shared.service`` logger. :func:`run_service` runs all of it on uvloop when it is
installed (``pip install trading-shared[fast]``), else on asyncio's default loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from .lifecycle import ManagedClient, Resources, _settle

_log = logging.getLogger(__name__)

#: A service coroutine function: called once, with no arguments, inside the running loop.
Main = Callable[[], Coroutine[Any, Any, object]]

EXIT_OK = 0
EXIT_FAILURE = 1


class Service:
    """A daemon: coroutine functions run as tasks, with the clients they use, under signal handling. Runs once.

    Args:
        mains: the service's coroutine functions (one task each).
        clients: the clients the tasks use, connected before they start and closed after they end.
        name: names the service in log lines.
        signals: signals that ask for a clean shutdown; ``()`` installs none (e.g. when embedded in a test).
        shutdown_timeout: seconds the cancelled tasks get to finish before the clients are closed anyway.
        close_timeout: seconds one client's ``close()`` may take.
    """

    def __init__(
        self,
        mains: Main | Sequence[Main],
        *clients: ManagedClient,
        name: str = "service",
        signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
        shutdown_timeout: float = 30.0,
        close_timeout: float | None = 30.0,
    ) -> None:
        self.mains: tuple[Main, ...] = (mains,) if callable(mains) else tuple(mains)
        if not self.mains:
            raise ValueError("a service needs at least one coroutine function")
        self.resources = Resources(*clients, close_timeout=close_timeout)
        self.name = name
        self.signals = tuple(signals)
        self.shutdown_timeout = shutdown_timeout
        self.reason: str | None = None
        self.failure: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def stop(self, reason: str = "stop requested") -> None:
        """Ask for a clean shutdown (from the loop's thread), as a signal would. Later calls are ignored."""
        if self.reason is None:
            self.reason = reason
            _log.info("%s stopping: %s", self.name, reason)
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> int:
        """Run the service to its end and return its exit code (0 clean, 1 failure). Never raises but cancellation."""
        self._stop = asyncio.Event()
        if self.reason is not None:  # stop() before run()
            self._stop.set()
        restore = self._install_signal_handlers()
        try:
            return await self._run()
        finally:
            restore()

    async def _run(self) -> int:
        if not await self._connect():
            return EXIT_FAILURE if self.failure is not None else EXIT_OK
        tasks: list[asyncio.Task[object]] = []
        try:
            if self.reason is None:  # a stop that raced the connect: do not start the tasks
                tasks = [asyncio.create_task(m(), name=f"{self.name}:{_fn_name(m)}") for m in self.mains]
                await self._until_done(tasks)
        finally:
            await _settle(self._cancel(tasks))  # the tasks end BEFORE their clients close, even if run() is cancelled
            await self.resources.close()
        code = EXIT_FAILURE if self.failure is not None else EXIT_OK
        log = _log.error if code else _log.info
        log("%s stopped (exit code %d): %s", self.name, code, self.reason)
        return code

    async def _connect(self) -> bool:
        """Connect the clients unless a stop comes first; False when the service must not start."""
        assert self._stop is not None
        connecting = asyncio.create_task(self.resources.connect(), name=f"{self.name}:connect")
        stopper = asyncio.create_task(self._stop.wait(), name=f"{self.name}:stop")
        try:
            await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not connecting.done():
                connecting.cancel()  # Resources.connect() closes whatever it had opened
            await asyncio.gather(connecting, stopper, return_exceptions=True)
        if connecting.cancelled():
            _log.info("%s stopped during start-up (exit code %d): %s", self.name, EXIT_OK, self.reason)
            return False
        exc = connecting.exception()
        if exc is not None:
            self._failed("a client failed to connect", exc)
            return False
        return True

    async def _until_done(self, tasks: list[asyncio.Task[object]]) -> None:
        assert self._stop is not None
        stopper = asyncio.create_task(self._stop.wait(), name=f"{self.name}:stop")
        pending: set[asyncio.Future[Any]] = {stopper, *tasks}
        try:
            while self.reason is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task in done and not task.cancelled() and task.exception() is not None:
                        exc = task.exception()
                        assert exc is not None
                        self._failed(f"task {task.get_name()} failed", exc)
                        break
                    if task in done:
                        _log.info("%s: task %s finished", self.name, task.get_name())
                if self.reason is None and all(t.done() for t in tasks):
                    self.stop("every task finished")
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)

    async def _cancel(self, tasks: list[asyncio.Task[object]]) -> None:
        running = [t for t in tasks if not t.done()]
        for task in running:
            task.cancel()
        if not running:
            return
        done, stuck = await asyncio.wait(running, timeout=self.shutdown_timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                _log.error(
                    "%s: task %s raised while being cancelled (%s)",
                    self.name,
                    task.get_name(),
                    _describe(task.exception()),
                )
        if stuck:
            names = ", ".join(t.get_name() for t in stuck)
            self._failed(f"task(s) {names} ignored cancellation for {self.shutdown_timeout}s", None)

    def _failed(self, reason: str, exc: BaseException | None) -> int:
        if self.failure is None:
            self.failure = exc if exc is not None else RuntimeError(reason)
        self.reason = reason if self.reason is None else f"{self.reason}; {reason}"
        # The exception's type and code only: driver messages can quote query parameters or keys. The exception
        # itself (message, traceback) stays on ``self.failure`` for the application to inspect.
        _log.error("%s: %s%s", self.name, reason, f" ({_describe(exc)})" if exc is not None else "")
        if self._stop is not None:
            self._stop.set()
        return EXIT_FAILURE

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.reason is not None:
            _log.warning("%s: %s received while stopping (%s): still shutting down", self.name, sig.name, self.reason)
            return
        self.stop(f"received {sig.name}")

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        previous: dict[signal.Signals, Any] = {}
        for sig in self.signals:
            try:
                previous[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread, or no support
                previous.pop(sig, None)
                _log.warning("%s: cannot handle %s here (%s): not installed", self.name, sig.name, exc)

        def restore() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)

        return restore


def _fn_name(fn: Main) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def run_service(
    mains: Main | Sequence[Main],
    *clients: ManagedClient,
    name: str = "service",
    use_uvloop: bool | None = None,
    shutdown_timeout: float = 30.0,
    close_timeout: float | None = 30.0,
) -> int:
    """Run a daemon in a new event loop until it ends and return its exit code: ``sys.exit(run_service(...))``.

    See :class:`Service` for the order of events. ``use_uvloop``: ``None`` (default) uses uvloop when it is
    installed, ``True`` requires it, ``False`` uses asyncio's default loop. Handles SIGTERM and SIGINT.
    """
    service = Service(mains, *clients, name=name, shutdown_timeout=shutdown_timeout, close_timeout=close_timeout)
    factory = _loop_factory(use_uvloop)
    _log.info("%s starting on %s", name, "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(service.run())


def _loop_factory(use_uvloop: bool | None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if use_uvloop is False:
        return None
    try:
        import uvloop
    except ImportError:
        if use_uvloop:
            raise
        return None
    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


__all__ = ["EXIT_FAILURE", "EXIT_OK", "Main", "Service", "run_service"]


def _describe(exc: BaseException | None) -> str:
    """``Type`` or ``Type SQLSTATE``: what a log line may say about an exception without quoting its message."""
    if exc is None:
        return "no exception"
    code = getattr(exc, "sqlstate", None)
    return f"{type(exc).__qualname__} {code}" if isinstance(code, str) else type(exc).__qualname__
