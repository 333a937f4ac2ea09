"""Sentinel failovers with Redis's default sentinel timers and the client's default settings, as a service runs them.

One master, one replica, three sentinels (quorum 2, ``down-after-milliseconds`` 1000, ``failover-timeout`` 3000,
INFO every 10 s, PING every 1 s, hello every 2 s). Four writers, ~180 calls/s in all: ``SET`` of a unique key,
``INCR`` of one counter and ``GET`` of a key acknowledged earlier. The old master is then made to disappear in one of
three ways, and the writers go on until the sentinels have turned it into a replica of the new master (their next
INFO round, up to 10 s later) and it has resynced, which discards whatever it took in the meantime:

* SIGKILL, and a supervisor restarts it (empty: no persistence) 0.05 s after the sentinels switched, or 3 s after;
* ``SENTINEL FAILOVER``: it stays up and writable until the sentinels demote it.

A restarted old master answers ``ROLE`` as ``master`` until the sentinels demote it; a client that trusted that
answer went on writing there for ~10 s and lost everything it wrote. Checked afterwards, on the new master, through a
separate connection: every write acknowledged after the sentinels switched is there, no ``INCR`` value was handed out
twice, and no ``GET`` of a key acknowledged after the switch came back empty. Writes acknowledged by the old master
in its last instant before the switch may be lost without ``wait_replicas`` (asynchronous replication), so those are
counted, not asserted, with ``wait_replicas=0``; with ``wait_replicas=1`` nothing acknowledged may be lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis_deployments import SERVICE, SentinelDeployment

from support.otel import Otel
from support.procs import wait_until
from support.redis_server import RedisServer
from trading_shared import RedisClient, RedisSettings, ServiceUnavailableError
from trading_shared.telemetry import names

pytestmark = pytest.mark.slow

#: Seconds a test waits for the old master to be demoted and resynced (INFO every 10 s, then a full sync).
DEMOTION_BOUND = 30.0
#: Seconds from the sentinels switching to the client's first acknowledged write on the new master (measured 0.0-0.6
#: s; the bound leaves room for a loaded machine).
FOLLOW_BOUND = 3.0


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    """A master, one replica and three sentinels with Redis's default INFO, PING and hello periods."""
    d = SentinelDeployment(replicas=1, sentinels=3, fast_timers=False)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


def _client(d: SentinelDeployment, otel: Otel | None = None, **overrides: Any) -> RedisClient:
    """The client with default settings but the deployment: what a service configures from docs/redis-sentinel.md."""
    values = {"mode": "sentinel", "sentinels": d.sentinel_addresses(), "service_name": SERVICE, **overrides}
    return RedisClient(RedisSettings(**values), **(otel.providers() if otel else {}))


@dataclass
class Ledger:
    """What the writers were told: acknowledged keys and counter values (with when), and failures by outcome."""

    sets: dict[str, float] = field(default_factory=dict)  # key -> when its SET returned
    incrs: list[tuple[int, float]] = field(default_factory=list)  # (value, when) of every INCR that returned
    empty_reads: list[tuple[str, float]] = field(default_factory=list)  # (key, when) GET found nothing
    not_applied: int = 0
    unknown: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, ServiceUnavailableError):
            if exc.may_have_been_applied:
                self.unknown += 1
            else:
                self.not_applied += 1
        else:
            self.errors.append(exc)

    def first_ack_after(self, t: float) -> float | None:
        later = [at for at in self.sets.values() if at > t]
        return min(later) if later else None


async def _writer(r: RedisClient, w: int, stop: asyncio.Event, ledger: Ledger) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        key = f"k:{w}:{i}"
        try:
            await r.set(key, b"1")
            ledger.sets[key] = time.monotonic()
            ledger.incrs.append((await r.incr("counter"), time.monotonic()))
            if ledger.sets:
                earlier = f"k:{w}:{max(1, i - 3)}"
                if earlier in ledger.sets and await r.get(earlier) is None:
                    ledger.empty_reads.append((earlier, time.monotonic()))
        except Exception as exc:
            ledger.fail(exc)
        await asyncio.sleep(0.015)


@dataclass
class Run:
    fault: float
    switched: float  # every sentinel names the new master
    first_ack: float  # first SET acknowledged after the switch
    new: RedisServer

    def __str__(self) -> str:
        return (
            f"fault->sentinels switched {self.switched - self.fault:.2f} s, "
            f"switched->first acknowledged write {self.first_ack - self.switched:.2f} s, "
            f"fault->first acknowledged write {self.first_ack - self.fault:.2f} s"
        )


async def _fail_over(
    r: RedisClient,
    d: SentinelDeployment,
    ledger: Ledger,
    *,
    how: str,
    restart_after: float = 0.05,
    ack_bound: float = FOLLOW_BOUND + 5,
) -> Run:
    stop = asyncio.Event()
    writers = [asyncio.create_task(_writer(r, w, stop, ledger)) for w in range(4)]
    old = d.master
    try:
        await asyncio.sleep(1.0)
        assert len(ledger.sets) > 50, f"writes were not flowing before the fault: {ledger.sets.__len__()}"
        fault = time.monotonic()
        await asyncio.to_thread(old.kill if how == "kill" else d.failover)
        new = await asyncio.to_thread(d.wait_new_master, old.port)
        switched = time.monotonic()
        if how == "kill":
            await asyncio.sleep(restart_after)
            await asyncio.to_thread(old.start)  # empty: it comes back calling itself master
        while (first := ledger.first_ack_after(switched)) is None:
            assert time.monotonic() - switched < ack_bound, "no write acknowledged after the switch"
            await asyncio.sleep(0.01)

        def demoted() -> bool:
            try:
                info = old.cli("INFO", "replication", timeout=1.0)
            except Exception:
                return False
            return "role:slave" in info and "master_link_status:up" in info

        assert await asyncio.to_thread(wait_until, demoted, DEMOTION_BOUND, 0.1), "the old master was not demoted"
        await asyncio.sleep(0.3)  # writes go on after the resync too
    finally:
        stop.set()
        await asyncio.gather(*writers)
    return Run(fault, switched, first, new)


def _audit(run: Run, ledger: Ledger, *, strict: bool) -> dict[str, Any]:
    """Check the new master against the ledger; ``strict``: nothing acknowledged at all may be missing."""
    keys = list(ledger.sets)
    present: list[Any] = []
    for i in range(0, len(keys), 500):
        present += run.new.cli("MGET", *keys[i : i + 500], timeout=5)
    missing = {k: ledger.sets[k] for k, v in zip(keys, present, strict=True) if v is None}
    values = [v for v, _ in ledger.incrs]
    twice = sorted({v for v in values if values.count(v) > 1}) if len(values) < 20_000 else []
    figures: dict[str, Any] = {
        "sets_acknowledged": len(keys),
        "lost_before_switch": sum(1 for at in missing.values() if at <= run.switched),
        "lost_after_switch": sum(1 for at in missing.values() if at > run.switched),
        "incr_values_twice": len(twice),
        "empty_reads_after_switch": sum(1 for _, at in ledger.empty_reads if at > run.switched),
        "not_applied": ledger.not_applied,
        "outcome_unknown": ledger.unknown,
    }
    counter = int(run.new.cli("GET", "counter") or 0)
    assert not ledger.errors, f"unexpected errors: {ledger.errors[:3]!r}"
    assert figures["lost_after_switch"] == 0, figures
    assert figures["empty_reads_after_switch"] == 0, figures
    assert max(values) <= counter, (max(values), counter)
    if strict:
        assert not missing, figures
        assert not twice, figures
    else:  # a value handed out twice needs a lost INCR: only one acknowledged in the old master's last instant
        assert all(v <= max(v for v, at in ledger.incrs if at <= run.switched) for v in twice), figures
    return figures


@pytest.mark.parametrize("restart_after", [0.05, 3.0], ids=["restarted-at-once", "restarted-later"])
async def test_killed_master_restarted_empty_is_never_written_after_the_switch(
    deployment: SentinelDeployment, otel: Otel, restart_after: float
) -> None:
    ledger = Ledger()
    async with _client(deployment, otel, wait_replicas=0) as r:
        run = await _fail_over(r, deployment, ledger, how="kill", restart_after=restart_after)
        assert r.connection_pool is not None
        assert r.connection_pool.connection_kwargs["port"] == run.new.port
    figures = _audit(run, ledger, strict=False)
    print(f"\nkill, restart after {restart_after} s: {run}; {figures}")
    assert run.first_ack - run.switched < FOLLOW_BOUND, str(run)


async def test_forced_failover_moves_the_client_before_the_old_master_is_demoted(
    deployment: SentinelDeployment, otel: Otel
) -> None:
    ledger = Ledger()
    async with _client(deployment, otel, wait_replicas=0) as r:
        run = await _fail_over(r, deployment, ledger, how="failover")
    figures = _audit(run, ledger, strict=False)
    print(f"\nSENTINEL FAILOVER: {run}; {figures}")
    assert run.first_ack - run.switched < FOLLOW_BOUND, str(run)
    changes = otel.points(names.MASTER_CHANGES)
    assert sum(v for _, v in changes) >= 1, changes


async def test_with_wait_nothing_acknowledged_is_lost_when_the_master_is_killed(
    deployment: SentinelDeployment,
) -> None:
    """With one replica, the promoted one has none left: WAIT confirms writes again only once the restarted old
    master has been made its replica (the sentinels' next INFO round, up to 10 s) and has synced. Until then every
    write is refused as unconfirmed, and idempotent ones are re-sent until their deadline."""
    ledger = Ledger()
    async with _client(deployment, wait_replicas=1) as r:
        run = await _fail_over(r, deployment, ledger, how="kill", ack_bound=DEMOTION_BOUND)
    figures = _audit(run, ledger, strict=True)
    print(f"\nkill with wait_replicas=1: {run}; {figures}")
