"""RedisClient in sentinel mode against a real master, replica(s) and sentinels (Debian redis-sentinel).

Each test starts its own deployment on free 127.0.0.1 ports (see ``redis_deployments.py``). The failover tests keep
four writers busy while the master goes away: two append with ``xadd_bulk`` (unique ``uid`` per message), two with
``xadd`` and explicit entry ids. Every message's outcome is recorded as the SDK reported it: acknowledged, definitely
not applied, or unknown. Afterwards, on the new master: no acknowledged message is missing, none is there twice,
none the SDK called "not applied" is there.

Acknowledged writes survive a failover only if a replica had them: the client runs with ``wait_replicas=1`` (every
write confirmed by WAIT; the deployments have one replica, so the replica the sentinels promote has every
acknowledged write). ``test_without_wait_a_forced_failover_loses_acknowledged_writes`` shows what happens without.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.exceptions as rex
from redis_deployments import SERVICE, SentinelDeployment

from support.otel import Otel
from support.procs import free_port
from support.redis_server import RedisServer
from trading_shared import (
    BulkWriteError,
    OutcomeUnknownError,
    RedisClient,
    RedisSettings,
    ServiceUnavailableError,
)
from trading_shared.redis.classify import (
    MasterChangedError,
    MasterNotFoundError,
    NotMasterError,
    NotReplicatedError,
    RedisErrors,
)
from trading_shared.resilience import Fault
from trading_shared.telemetry import names

SECRET = "s3ntinel-test-secret"
#: Seconds from the sentinels naming the new master to the client sending its commands there (measured: < 1 s).
FOLLOW_BOUND = 5.0
#: Seconds from the fault to the first write acknowledged (WAIT-confirmed) by the new master. It needs the old
#: master back as a replica of the new one: demoted by the sentinels (forced failover) or restarted (crash).
#: Measured: 3-6 s.
ACK_BOUND = 25.0

CLIENT: dict[str, Any] = {
    "name": "ts-sentinel",
    "socket_timeout": 1.0,
    "socket_connect_timeout": 0.5,
    "retry": {"max_attempts": 100, "initial_backoff": 0.05, "max_backoff": 0.3, "jitter": 0.05, "deadline": 6.0},
    "breaker": {"fail_max": 5, "reset_timeout": 0.5},
    "wait_replicas": 1,
    "wait_timeout": 0.25,
}


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    """A master, one replica and three sentinels (quorum 2)."""
    d = SentinelDeployment(replicas=1, sentinels=3)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def _client(d: SentinelDeployment, otel: Otel | None = None, **overrides: Any) -> RedisClient:
    values = {**CLIENT, "mode": "sentinel", "sentinels": d.sentinel_addresses(), "service_name": SERVICE, **overrides}
    return RedisClient(RedisSettings(**values), **(otel.providers() if otel else {}))


# ------------------------------------------------------------------------------------------------ the write book


@dataclass
class Book:
    """Every message's uid and the outcome the SDK reported for it."""

    acked: dict[str, float] = field(default_factory=dict)  # uid -> when its call returned
    failed: set[str] = field(default_factory=set)  # the SDK said: certainly not applied
    unknown: set[str] = field(default_factory=set)  # the SDK said: may have been applied
    errors: list[BaseException] = field(default_factory=list)

    def acked_after(self, t: float) -> bool:
        return any(at > t for at in self.acked.values())

    def record(self, uids: list[str], exc: BaseException | None) -> None:
        now = time.monotonic()
        if exc is None:
            self.acked.update(dict.fromkeys(uids, now))
        elif isinstance(exc, BulkWriteError):
            not_written, unknown = set(exc.not_written), set(exc.outcome_unknown)
            for i, uid in enumerate(uids):
                if i in unknown:
                    self.unknown.add(uid)
                elif i in not_written:
                    self.failed.add(uid)
                else:
                    self.acked[uid] = now  # chunks written before the failing one
        elif isinstance(exc, ServiceUnavailableError):
            (self.unknown if exc.may_have_been_applied else self.failed).update(uids)
        else:  # a caller error here would be a misclassified failover fault
            self.errors.append(exc)
            self.unknown.update(uids)

    def __repr__(self) -> str:
        errors = sorted({type(e).__name__ for e in self.errors})
        return (
            f"<Book acked={len(self.acked)} not_applied={len(self.failed)} unknown={len(self.unknown)} "
            f"unexpected={len(self.errors)} {errors}>"
        )


async def _bulk_writer(r: RedisClient, w: int, stop: asyncio.Event, book: Book) -> None:
    i = 0
    while not stop.is_set():
        uids = [f"b{w}-{i + k}" for k in range(12)]
        i += len(uids)
        try:
            await r.xadd_bulk("bulk", [{"uid": u} for u in uids], chunk_size=4, dead_letter=False)
        except Exception as exc:
            book.record(uids, exc)
            await asyncio.sleep(0.02)
        else:
            book.record(uids, None)
        await asyncio.sleep(0.003)


async def _id_writer(r: RedisClient, w: int, stop: asyncio.Event, book: Book) -> None:
    base = int(time.time() * 1000)
    seq = 0
    while not stop.is_set():
        seq += 1
        uid = f"x{w}-{seq}"
        try:
            await r.xadd(f"ids:{w}", {"uid": uid}, id=f"{base}-{seq}")
        except Exception as exc:
            book.record([uid], exc)
            await asyncio.sleep(0.02)
        else:
            book.record([uid], None)
        await asyncio.sleep(0.003)


@dataclass
class Timings:
    fault: float
    switched: float  # every sentinel names the new master
    followed: float  # the client's commands go to the new master
    first_ack: float  # first write acknowledged by the new master

    def __str__(self) -> str:
        return (
            f"fault->sentinels switched {self.switched - self.fault:.2f} s, "
            f"switched->client follows {self.followed - self.switched:.2f} s, "
            f"fault->first acknowledged write {self.first_ack - self.fault:.2f} s"
        )


async def _fail_over(r: RedisClient, d: SentinelDeployment, book: Book, *, crash: bool) -> tuple[Timings, RedisServer]:
    stop = asyncio.Event()
    writers = [asyncio.create_task(_bulk_writer(r, w, stop, book)) for w in range(2)]
    writers += [asyncio.create_task(_id_writer(r, w, stop, book)) for w in range(2)]
    old = d.master
    try:
        await asyncio.sleep(0.6)
        assert len(book.acked) > 20, f"writes were not flowing before the fault: {book}"
        t_fault = time.monotonic()
        await asyncio.to_thread(old.kill if crash else d.failover)
        new = await asyncio.to_thread(d.wait_new_master, old.port)
        t_switched = time.monotonic()
        while r.connection_pool is None or r.connection_pool.connection_kwargs["port"] != new.port:
            assert time.monotonic() - t_switched < FOLLOW_BOUND, f"the client did not follow the new master: {book}"
            await asyncio.sleep(0.01)
        t_followed = time.monotonic()
        if crash:  # restarted empty: the sentinels make it a replica of the new master
            await asyncio.to_thread(old.start)
        while not book.acked_after(t_switched):
            assert time.monotonic() - t_fault < ACK_BOUND, f"no write acknowledged by the new master: {book}"
            await asyncio.sleep(0.01)
        t_first = time.monotonic()
        await asyncio.sleep(0.5)  # more writes on the new master
    finally:
        stop.set()
        await asyncio.gather(*writers)
    return Timings(t_fault, t_switched, t_followed, t_first), new


def _audit(master: RedisServer, book: Book) -> dict[str, Any]:
    uids: list[str] = []
    for stream in ("bulk", "ids:0", "ids:1"):
        for _, fields in master.cli("XRANGE", stream, "-", "+", timeout=5):
            uids.append(dict(zip(fields[::2], fields[1::2], strict=True))["uid"])
    present = set(uids)
    figures: dict[str, Any] = {
        "acknowledged": len(book.acked),
        "not_applied": len(book.failed),
        "unknown": len(book.unknown),
        "unknown_present": len(book.unknown & present),
        "lost": sorted(set(book.acked) - present),
        "duplicated": sorted({u for u in uids if uids.count(u) > 1}),
        "said_not_applied_but_present": sorted(book.failed & present),
    }
    assert not book.errors, f"unexpected errors: {book!r} {book.errors[:3]!r}"
    assert figures["lost"] == [], figures
    assert figures["duplicated"] == [], figures
    assert figures["said_not_applied_but_present"] == [], figures
    return figures


# ------------------------------------------------------------------------------------------------------ failovers


async def test_forced_failover_is_followed_without_losing_or_duplicating_stream_writes(
    deployment: SentinelDeployment, otel: Otel
) -> None:
    """``SENTINEL FAILOVER``: the replica is promoted while the old master keeps running (and accepting writes)
    until the sentinels demote it. Writes it takes meanwhile cannot be confirmed by a replica (WAIT falls short):
    the SDK reports them as unknown, looks the master up again and re-sends the idempotent ones to the new one."""
    book = Book()
    async with _client(deployment, otel) as r:
        timings, new = await _fail_over(r, deployment, book, crash=False)
        assert r.breakers[f"{new.host}:{new.port}"].state.value == "closed"
    figures = _audit(new, book)
    print(f"\nforced failover: {timings}; {figures}")
    retried = {a.get(names.ERROR_TYPE) for a, _ in otel.points(names.RETRIES)}
    assert "NotReplicatedError" in retried or "ReadOnlyError" in retried, retried
    ports = {(s.attributes or {}).get(names.SERVER_PORT) for s in otel.spans("PIPELINE XADD")}
    assert {deployment.master.port, new.port} <= ports  # spans name the master that answered


async def test_master_crash_is_followed_without_losing_or_duplicating_stream_writes(
    deployment: SentinelDeployment,
) -> None:
    """The master is SIGKILLed; the sentinels agree it is down (quorum 2 of 3) and promote the replica. Writes are
    confirmed again once the old master, restarted, has become a replica of the new one. The deadline is short
    here, so that calls fail during the failover and their reported outcomes are checked too."""
    book = Book()
    short = {**CLIENT["retry"], "deadline": 1.0}
    async with _client(deployment, retry=short) as r:
        timings, new = await _fail_over(r, deployment, book, crash=True)
    figures = _audit(new, book)
    print(f"\nmaster crash: {timings}; {figures}")


async def test_a_forced_failover_moves_the_client_at_the_switch_before_the_old_master_is_demoted(
    deployment: SentinelDeployment, otel: Otel
) -> None:
    """The sentinels announce the end of a failover (``+switch-master``) at once, but reconfigure a still-running old
    master only on their next INFO round. The client follows the announcement: its pooled connection to the old
    master is closed, and the next write goes to the new master on its first attempt, while the old one may still
    call itself master (what it took now would be discarded when it resyncs)."""
    async with _client(deployment, otel, wait_replicas=0) as r:
        old = deployment.master
        assert await r.incr("n") == 1  # a pooled connection to the old master
        await asyncio.to_thread(deployment.failover)
        new = await asyncio.to_thread(deployment.wait_new_master, old.port)
        await _followed(r, new)
        assert await r.incr("n") == 2  # the failover's own replication carried the first INCR across
        assert all(b.state.value == "closed" for b in r.breakers.values())
        await asyncio.to_thread(deployment.wait_synced, old)  # demoted by the sentinels now
    assert new.cli("GET", "n") == "2"
    assert old.cli("GET", "n") == "2"  # a replica of the new master: nothing of its own was kept
    assert [a.get(names.ERROR_TYPE) for a, _ in otel.points(names.RETRIES)] == []
    last = otel.spans("INCR")[-1]
    assert (last.attributes or {})[names.SERVER_PORT] == new.port
    assert (last.attributes or {}).get(names.ATTEMPTS, 1) == 1
    assert sum(v for _, v in otel.points(names.MASTER_CHANGES)) == 1


async def test_a_call_cut_by_the_failover_is_reported_as_master_changed(
    deployment: SentinelDeployment, otel: Otel
) -> None:
    """A blocking stream read in flight on the old master when a failover starts: its connection is closed (a reply
    from a demoted master cannot be trusted), its span says why, and the read, safe to repeat, is re-sent to the new
    master, where it gets the entry added there."""
    async with _client(deployment, otel, wait_replicas=0) as r:
        old = deployment.master
        await r.xadd("s", {"i": 0})
        assert await r.read_stream_messages("s", "g", "c", start_id="0", recreate_from="$") == []  # group at the end
        waiting = asyncio.create_task(r.read_stream_messages("s", "g", "c", block_ms=8000))
        await asyncio.sleep(0.3)  # blocked on the old master
        await asyncio.to_thread(deployment.failover)
        new = await asyncio.to_thread(deployment.wait_new_master, old.port)
        await _followed(r, new)
        await asyncio.sleep(0.3)  # the re-sent read is blocked on the new master
        new.cli("XADD", "s", "*", "i", "1")
        entries = await asyncio.wait_for(waiting, 8)
    assert [e.fields for e in entries] == [{b"i": b"1"}]
    span = otel.spans("XREADGROUP")[-1]
    events = [e for e in span.events if e.name == names.EVENT_MASTER_CHANGED]
    assert [(e.attributes or {})[names.SERVER_PORT] for e in events] == [old.port]
    retried = [a.get(names.ERROR_TYPE) for a, _ in otel.points(names.RETRIES)]
    # Cut when the promotion started; then refused by the held old master until the switch (never sent). On a loaded
    # machine the sentinels may demote the old master before the client has read +switch-master: the old master
    # then drops its clients itself, a plain ConnectionError on a server the client still takes for the master.
    assert retried[0] == "MasterChangedError" and set(retried[1:]) <= {"NotMasterError", "ConnectionError"}, retried
    assert (span.attributes or {})[names.SERVER_PORT] == new.port


async def _followed(r: RedisClient, new: RedisServer) -> None:
    deadline = time.monotonic() + FOLLOW_BOUND
    while r.connection_pool is None or r.connection_pool.connection_kwargs["port"] != new.port:
        assert time.monotonic() < deadline, "the client did not follow the switch"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------- discovery and breakers


async def test_operations_go_to_the_master_and_a_dead_sentinel_is_skipped(
    deployment: SentinelDeployment, otel: Otel
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with _client(deployment, otel, sentinels=[dead, *deployment.sentinel_addresses()], wait_replicas=0) as r:
        assert await r.set("k", b"v") is True
        assert await r.get("k") == b"v"
        await r.xadd_bulk("s", [{"i": i} for i in range(10)])
        assert await r.run_pipeline(lambda p: p.incr("c").incr("c")) == [1, 2]
        states = otel.points(names.BREAKER_STATE)  # one series per master the client talked to
        assert {(a[names.SERVER_PORT], a[names.BREAKER_STATE_ATTR]) for a, v in states if v} == {
            (str(deployment.master.port), "closed")
        }
    master = deployment.master
    assert master.cli("GET", "k") == "v"
    spans = [s for s in otel.spans() if names.DB_OPERATION_NAME in (s.attributes or {})]  # not xadd_bulk's send span
    assert spans and all((s.attributes or {})[names.SERVER_PORT] == master.port for s in spans if s.name != "connect 0")
    durations = otel.points(names.OPERATION_DURATION)
    first_sentinel = int(dead.rsplit(":", 1)[1])  # metrics carry the configured endpoint: low cardinality
    assert durations and {a[names.SERVER_PORT] for a, _ in durations} == {first_sentinel}


async def test_a_dead_replica_leaves_the_master_breaker_closed(deployment: SentinelDeployment) -> None:
    async with _client(deployment, wait_replicas=0) as r:
        await asyncio.to_thread(deployment.replicas[0].kill)
        for i in range(20):
            await r.xadd("s", {"i": i})
        assert [b.state.value for b in r.breakers.values()] == ["closed"]
        assert all(b.failure_count == 0 for b in r.breakers.values())


async def test_with_wait_a_dead_replica_makes_writes_outcome_unknown(deployment: SentinelDeployment) -> None:
    """With ``wait_replicas=1`` and the only replica gone, a write lands on the master but cannot be confirmed:
    a non-idempotent one raises OutcomeUnknownError at once; reads are unaffected."""
    async with _client(deployment, retry={"max_attempts": 2, "deadline": 2.0}) as r:
        await r.set("k", b"v")
        await asyncio.to_thread(deployment.replicas[0].kill)
        with pytest.raises(OutcomeUnknownError) as info:
            await r.incr("n")
        assert isinstance(info.value.__cause__, NotReplicatedError)
        assert deployment.master.cli("GET", "n") == "1"  # applied once, not re-sent
        assert await r.get("k") == b"v"


async def test_passwords_reach_the_master_and_a_wrong_one_fails_connect_at_once() -> None:
    d = SentinelDeployment(replicas=1, sentinels=1, password=SECRET)
    try:
        await asyncio.to_thread(d.start)
        url = f"redis://:{SECRET}@unused:6379/2"
        async with _client(d, url=url, wait_replicas=1) as r:
            assert await r.set("k", b"v") is True
            assert await r.get("k") == b"v"
        assert d.master.cli("GET", "k") is None  # written to db 2, as the url says
        bad = _client(d, url="redis://:wrong@unused:6379/0")
        t0 = time.monotonic()
        with pytest.raises(rex.AuthenticationError):
            await bad.connect()
        assert time.monotonic() - t0 < 1.0  # a caller error: not retried
        assert SECRET not in repr(bad) and "wrong" not in repr(bad)
        await bad.close()
    finally:
        d.cleanup()


async def test_an_unknown_service_fails_connect_as_not_sent(deployment: SentinelDeployment) -> None:
    r = _client(deployment, service_name="nosuchmaster", retry={"max_attempts": 2, "deadline": 1.0})
    with pytest.raises(ServiceUnavailableError) as info:
        await r.connect()
    assert info.value.may_have_been_applied is False
    assert isinstance(info.value.__cause__, MasterNotFoundError)
    await r.close()


def test_sentinel_lookup_and_role_failures_are_classified_as_not_applied() -> None:
    from trading_shared.redis.classify import ConnectFailed

    errors = RedisErrors()
    assert errors.classify(ConnectFailed(NotMasterError("replica"))) is Fault.UNAVAILABLE
    assert errors.classify(NotReplicatedError(0, 1)) is Fault.INDETERMINATE
    assert errors.classify(MasterChangedError("demoted mid-call")) is Fault.INDETERMINATE
    assert errors.classify(rex.ResponseError("NOREPLICAS Not enough good replicas to write.")) is Fault.UNAVAILABLE


def test_settings_choose_the_deployment_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MODE", "sentinel")
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379")
    monkeypatch.setenv("REDIS_SERVICE_NAME", "orders")
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", "1")
    s = RedisSettings()
    assert s.sentinel_addresses() == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (s.service_name, s.wait_replicas, s.target()) == ("orders", 1, ("10.0.0.1", 26379, 0))
    monkeypatch.delenv("REDIS_SERVICE_NAME")
    with pytest.raises(ValueError, match="service_name"):
        RedisSettings()
