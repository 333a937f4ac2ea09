"""Cluster mode through failovers: the master first in the client's slot map is killed while writers run.

One cluster of 3 masters + 3 replicas (``cluster-node-timeout`` 1000 ms) is shared by the module; before each test
every node runs, is a member and every master has a caught-up replica (:func:`redis_cluster_helpers.heal`). The
client uses the DEFAULT retry and breaker settings (short socket timeouts only) and lists the doomed master first in
``cluster_nodes``, as a deployment's config would after the failover. Each case measures, from the moment a
surviving node first names the promoted replica as the range's owner, the time to the first acknowledged write on
the moved slots (``pytest -s`` prints it), and reads every key back through a plain connection after the client
closed: an acknowledged INCR on a unique key reads 1 (not lost), no key reads more than 1 (nothing applied twice).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import redis
from redis.crc import key_slot
from redis_cluster_helpers import (
    by_port,
    heal,
    key_in_slot,
    range_of,
    restart_blank,
    servers,
    slots_of,
    start_with_replicas,
    wait_promoted,
)
from redis_deployments import ClusterDeployment

from support.redis_server import RedisServer
from trading_shared import RedisClient, RedisSettings, ServiceUnavailableError
from trading_shared.redis.cluster import ClusterRouter

#: Socket timeouts only: retry and breaker keep their defaults.
CLIENT: dict[str, Any] = {"name": "ts-cluster-failover", "socket_timeout": 1.0, "socket_connect_timeout": 0.5}
WRITERS = 14
#: Each writer's pause after a call: ~140 INCR/s while every node serves.
PAUSE = 0.1
#: Seconds from the promotion to the first acknowledged write on the moved slots (measured: see docs/redis-cluster.md).
SERVE_BOUND = 1.0
#: What a writer's failed call may raise while its master is down.
#: A cluster-enabled node that is not part of any cluster.
BLANK_NODE = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
EXPECTED_FAILURES = {"ServiceUnavailableError", "CircuitOpenError", "OutcomeUnknownError", "DeadlineExceededError"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterDeployment]:
    c = ClusterDeployment(nodes=3)
    try:
        start_with_replicas(c)
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def healthy(cluster: ClusterDeployment) -> ClusterDeployment:
    """Every node running and a member, every master with a caught-up replica."""
    heal(cluster)
    return cluster


def _client(nodes: list[RedisServer], **overrides: Any) -> RedisClient:
    values = {**CLIENT, "mode": "cluster", "cluster_nodes": [f"{n.host}:{n.port}" for n in nodes], **overrides}
    return RedisClient(RedisSettings(**values))


@dataclass
class Write:
    key: str
    done: float
    outcome: str  # "ok", or the exception's type name


async def _write(r: RedisClient, prefix: str, stop: asyncio.Event, log: list[Write]) -> None:
    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"{prefix}:{w}:{i}"
            i += 1
            try:
                value = await r.incr(key)
                outcome = "ok" if value == 1 else f"INCR returned {value}"
            except Exception as exc:  # recorded, checked against EXPECTED_FAILURES
                outcome = type(exc).__name__
            log.append(Write(key, time.monotonic(), outcome))
            await asyncio.sleep(PAUSE)

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))


def _read_back(cluster: ClusterDeployment, keys: list[str]) -> dict[str, bytes | None]:
    """Each key's value, read from its owner through plain redis-py connections."""
    member = next(n for n in servers(cluster) if n.running and len(slots_of(n)) > 0)
    owners = [(int(e[0]), int(e[1]), int(e[2][1])) for e in slots_of(member)]
    by_owner: dict[int, list[str]] = {}
    for key in keys:
        slot = key_slot(key.encode())
        by_owner.setdefault(next(p for a, b, p in owners if a <= slot <= b), []).append(key)
    values: dict[str, bytes | None] = {}
    for port, group in by_owner.items():
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as plain:
            pipe = plain.pipeline(transaction=False)
            for key in group:
                pipe.get(key)
            values.update(zip(group, pipe.execute(), strict=True))
    return values


async def _failover(
    cluster: ClusterDeployment, case: str, restart: Literal["none", "kept", "blank"], **client: Any
) -> None:
    first_range = min(slots_of(cluster.nodes[0]), key=lambda e: int(e[0]))
    master = by_port(cluster, int(first_range[2][1]))
    start, end, replica = await asyncio.to_thread(range_of, cluster, master)
    others = [n for n in servers(cluster) if n is not master]
    probe_key = key_in_slot(start, f"{case}:probe:")
    log: list[Write] = []
    stop = asyncio.Event()
    async with _client([master, *others], **client) as r:
        router = r._router  # the map's first master is the one this case kills
        assert isinstance(router, ClusterRouter) and router.masters[0].port == master.port
        writing = asyncio.create_task(_write(r, case, stop, log))
        try:
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            await asyncio.to_thread(master.kill)
            # A caller's non-idempotent run() on the dead master's slot: every attempt fails to connect (never sent),
            # so it is retried (until the promotion, unless its attempts or deadline run out first), and it is never
            # reported as possibly applied.
            probe = asyncio.create_task(r.run("INCR", lambda c: c.incr(probe_key), idempotent=False, key=probe_key))
            survivors = [n for n in others if n.running]
            promoted = await asyncio.to_thread(wait_promoted, survivors, start, replica.port)
            if restart == "kept":
                await asyncio.to_thread(master.start)
            elif restart == "blank":
                await asyncio.to_thread(restart_blank, master)
            served: float | None = None
            while served is None and time.monotonic() - promoted < 20:
                moved = [
                    w.done
                    for w in log
                    if w.outcome == "ok" and w.done > promoted and start <= key_slot(w.key.encode()) <= end
                ]
                served = min(moved) if moved else None
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # and the moved slots go on serving
            probed = (await asyncio.gather(probe, return_exceptions=True))[0]
        finally:
            stop.set()
            await writing
    assert served is not None, "no write on the moved slots succeeded within 20 s of the promotion"
    failures = Counter(w.outcome for w in log if w.outcome != "ok")
    print(
        f"\ncluster failover ({case}): promoted {promoted - killed:.2f} s after the kill; first write on the moved"
        f" slots {served - promoted:.3f} s after the promotion; {len(log)} calls, failed: {dict(failures)}"
    )
    assert set(failures) <= EXPECTED_FAILURES, failures
    values = await asyncio.to_thread(_read_back, cluster, [probe_key, *(w.key for w in log)])
    if isinstance(probed, ServiceUnavailableError):  # attempts or deadline ran out before the promotion
        assert not probed.may_have_been_applied, repr(probed)
        assert values.pop(probe_key) is None
    else:
        assert probed == 1 and values.pop(probe_key) == b"1", repr(probed)
    lost = [w.key for w in log if w.outcome == "ok" and values[w.key] != b"1"]
    assert not lost, f"{len(lost)} acknowledged writes lost"
    assert set(values.values()) <= {None, b"1"}, Counter(values.values())
    assert served - promoted < SERVE_BOUND


async def test_killed_master_left_dead(healthy: ClusterDeployment) -> None:
    await _failover(healthy, "dead", "none")


async def test_killed_master_restarted_with_its_data(healthy: ClusterDeployment) -> None:
    await _failover(healthy, "kept", "kept")


async def test_killed_master_restarted_blank(healthy: ClusterDeployment) -> None:
    """A fresh node at the old address answers CLUSTER SLOTS with an empty map: it must not stall the refresh."""
    await _failover(healthy, "blank", "blank")


async def test_killed_master_restarted_blank_with_an_open_breaker(healthy: ClusterDeployment) -> None:
    """The same with calls of a 1 s deadline: they fail within the outage, the dead master's breaker opens, and the
    calls it rejects re-read the map (the issue's path: a refresh that asked the blank node first failed whole)."""
    await _failover(healthy, "blank-open", "blank", retry={"deadline": 1.0})


def _cluster_slots_calls(node: RedisServer) -> int:
    """How many CLUSTER SLOTS ``node`` was asked (INFO commandstats, failed calls included)."""
    for line in str(node.cli("INFO", "commandstats")).splitlines():
        if line.startswith("cmdstat_cluster|slots:"):
            return int(dict(f.split("=", 1) for f in line.split(":", 1)[1].split(","))["calls"])
    return 0


async def test_nodes_outside_the_cluster_listed_first_are_skipped_and_then_asked_last(
    healthy: ClusterDeployment,
) -> None:
    """A standalone redis-server (``cluster support disabled``) and a blank cluster node (empty map) listed first in
    ``cluster_nodes``: connect asks each once and goes on; later refreshes never ask them while members answer."""
    members = servers(healthy)
    with RedisServer() as standalone, RedisServer(extra_args=BLANK_NODE) as blank:
        outsiders = [standalone, blank]
        started = time.monotonic()
        async with _client([*outsiders, *members], socket_timeout=0.3) as r:
            await r.connect()
            connected = time.monotonic() - started
            assert [_cluster_slots_calls(n) for n in outsiders] == [1, 1]
            assert set(r.breakers) >= {f"{n.host}:{n.port}" for n in members}
            victim = by_port(healthy, int(min(slots_of(members[0]), key=lambda e: int(e[0]))[2][1]))
            key = key_in_slot(0, "outsiders:")
            assert await r.set(key, b"1") is True
            asked = sum(_cluster_slots_calls(n) for n in members)
            # The slot's master stalls past the socket timeout: the GET times out (a refresh, then more while it
            # fails) and is retried; no refresh may ask the outsiders while members answer.
            sleeping = asyncio.create_task(asyncio.to_thread(victim.cli, "DEBUG", "SLEEP", "0.6"))
            await asyncio.sleep(0.05)
            assert await r.get(key) == b"1"
            await sleeping
            await asyncio.sleep(0.5)  # the map is re-read while the victim's failure is recent
            assert sum(_cluster_slots_calls(n) for n in members) > asked
            assert [_cluster_slots_calls(n) for n in outsiders] == [1, 1]
        print(f"\ncluster connect with two non-members listed first: {connected:.3f} s")
        for only, error in ((standalone, "cluster support disabled"), (blank, "ClusterDownError")):
            with pytest.raises(Exception, match=error):  # the last node's answer, as before
                async with _client([only], retry={"deadline": 1.0}) as r:
                    await r.connect()
