"""RedisClient in cluster mode against a real Redis Cluster: three masters on loopback, no replicas.

The cluster (``redis_deployments.ClusterDeployment``) is shared by the module; every test starts with every node up,
the cluster ok and all keys flushed. Tests that kill or freeze a node bring it back afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions as rex
from redis.crc import key_slot
from redis_deployments import ClusterDeployment

from support.otel import Otel
from support.procs import free_port
from support.redis_server import RedisReplyError, RedisServer
from trading_shared import (
    CircuitOpenError,
    OutcomeUnknownError,
    RedisClient,
    RedisSettings,
    ServiceUnavailableError,
)
from trading_shared.redis.classify import error_code
from trading_shared.redis.cluster import CommandKeys, slot_of
from trading_shared.redis.streams import dedupe_key
from trading_shared.telemetry import names

CLIENT: dict[str, Any] = {
    "name": "ts-cluster",
    "socket_timeout": 1.0,
    "socket_connect_timeout": 0.5,
    "retry": {"max_attempts": 4, "initial_backoff": 0.02, "max_backoff": 0.1, "jitter": 0.01, "deadline": 2.0},
    "breaker": {"fail_max": 3, "reset_timeout": 30},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterDeployment]:
    c = ClusterDeployment(nodes=3)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def nodes(cluster: ClusterDeployment) -> list[RedisServer]:
    """The nodes, all running, the cluster ok, every key flushed."""
    for node in cluster.nodes:
        node.ensure_running()
    cluster.wait_ok()
    for node in cluster.nodes:
        node.cli("FLUSHALL")
    return cluster.nodes


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


def _client(nodes: list[RedisServer], otel: Otel | None = None, **overrides: Any) -> RedisClient:
    values = {**CLIENT, "mode": "cluster", "cluster_nodes": [f"{n.host}:{n.port}" for n in nodes], **overrides}
    return RedisClient(RedisSettings(**values), **(otel.providers() if otel else {}))


def _key_on(cluster: ClusterDeployment, node: RedisServer, prefix: str = "k") -> str:
    """A key whose slot ``node`` owns."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if cluster.owner(key_slot(key.encode())) is node:
            return key
    raise AssertionError("no key found")


def _stats(node: RedisServer, command: str) -> tuple[int, int]:
    """``(calls, rejected_calls)`` of ``command`` on ``node`` (INFO commandstats; a MOVED reply is a rejected call)."""
    for line in str(node.cli("INFO", "commandstats")).splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split(","))
            return int(fields["calls"]), int(fields["rejected_calls"])
    return 0, 0


# ------------------------------------------------------------------------------------------------------ operations


async def test_every_operation_works_and_spans_name_the_node_that_answered(
    cluster: ClusterDeployment, nodes: list[RedisServer], otel: Otel
) -> None:
    async with _client(nodes[:1], otel) as r:  # one startup node is enough to discover the others
        assert set(r.breakers) == {f"{n.host}:{n.port}" for n in nodes}
        keys = [f"key{i}" for i in range(12)]
        for k in keys:
            assert await r.set(k, k.encode(), ex=60) is True
        assert [await r.get(k) for k in keys] == [k.encode() for k in keys]
        assert await r.expire(keys[0], 30) is True
        assert await r.hset("h", mapping={"a": 1, "b": b"2"}) == 2
        assert await r.hget("h", "a") == b"1"
        assert await r.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert await r.incr("n") == 1 and await r.incr("n", 5) == 6
        assert await r.lpush("q", b"j1", b"j2") == 2
        assert await r.brpop("q", 0.5) == (b"q", b"j1")
        assert await r.brpop(["{q}a", "{q}b"], 0.1) is None
        assert await r.publish("chan", b"m") == 0
        assert await r.delete(*keys, "nope") == 12  # 12 keys over several slots: one DEL per slot
        entry = await r.xadd("s", {"f": 1})
        assert await r.xadd("s", {"f": 2}, id="9999999999999-0") == b"9999999999999-0"
        assert await r.xadd_bulk("s", [{"i": i} for i in range(1000)], chunk_size=100) == 1000
        assert await r.ensure_consumer_group("s", "g") is True
        assert await r.ensure_consumer_group("s", "g") is False
        got = await r.read_stream_messages("s", "g", "c1", count=5)
        assert [m.id for m in got][:1] == [entry]
        assert await r.acknowledge_message("s", "g", got[0].id) == 1
        claimed = await r.xautoclaim_stale_messages("s", "g", "c2", min_idle_ms=0, count=2)
        assert [m.id for m in claimed.messages] == [m.id for m in got[1:3]]
        assert await r.read_stream_messages("s2", "g", "c", block_ms=50) == []  # NOGROUP: recreated, blocked
        assert await r.run("DBSIZE", lambda c: c.execute_command("DBSIZE"), idempotent=True, key="s") >= 1
    stream_node = cluster.owner(key_slot(b"s"))
    assert stream_node.cli("XLEN", "s") == 1002
    for span in otel.spans():
        attrs = span.attributes or {}
        if span.name.startswith(("XADD", "PIPELINE XADD", "XREADGROUP", "XACK", "XAUTOCLAIM", "XGROUP")):
            assert attrs[names.SERVER_PORT] == stream_node.port, span.name
    get_ports = {(s.attributes or {})[names.SERVER_PORT] for s in otel.spans("GET")}
    assert get_ports == {n.port for n in nodes}  # the keys are spread over every node
    durations = otel.points(names.OPERATION_DURATION)  # metrics: the configured endpoint only (low cardinality)
    assert {a[names.SERVER_PORT] for a, _ in durations} == {nodes[0].port}


async def test_multi_key_operations_are_grouped_by_slot_or_refused_before_sending(nodes: list[RedisServer]) -> None:
    async with _client(nodes) as r:
        replies = await r.run_pipeline(
            lambda p: p.set("a", 1).set("b", 2).set("c", 3).get("a").get("b").get("c").incr("n")
            .eval("return redis.call('GET', KEYS[1])", 1, "b")
            .xgroup_create("st", "g", mkstream=True)
        )  # fmt: skip
        assert replies == [True, True, True, b"1", b"2", b"3", 1, b"2", True]
        assert len({slot_of(k) for k in "abc"}) == 3
        assert await r.run_pipeline(lambda p: p.set("{u}a", 1).incr("{u}n").get("{u}a"), transaction=True) == [
            True,
            1,
            b"1",
        ]
        with pytest.raises(ValueError, match="hash slot"):
            await r.run_pipeline(lambda p: p.set("a", 1).set("b", 1), transaction=True)
        with pytest.raises(ValueError, match="hash slot"):
            await r.brpop(["a", "b"], 0.1)
        with pytest.raises(rex.ResponseError) as info:  # one command over two slots: the server's own error
            await r.run_pipeline(lambda p: p.mset({"a": 1, "b": 2}))
        assert error_code(info.value) == "CROSSSLOT"
        assert await r.get("a") == b"1"


async def test_bulk_appends_stay_in_one_slot_even_with_a_hash_tagged_stream(nodes: list[RedisServer]) -> None:
    for stream in (b"plain", b"{acct:7}fills", b"a{b}c"):
        assert key_slot(dedupe_key(stream, b"t")) == key_slot(stream)
    async with _client(nodes) as r:
        assert await r.xadd_bulk("{acct:7}fills", [{"i": i} for i in range(50)], chunk_size=7) == 50


async def test_a_dead_startup_node_is_skipped(nodes: list[RedisServer]) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = RedisSettings(
        **{**CLIENT, "mode": "cluster", "cluster_nodes": [dead, f"{nodes[1].host}:{nodes[1].port}"]}
    )
    async with RedisClient(settings) as r:
        assert await r.set("x", b"1") is True
        assert set(r.breakers) >= {f"{n.host}:{n.port}" for n in nodes}
        assert "cluster" in repr(r) and "connected" in repr(r)


def test_command_keys_follow_the_servers_key_specs() -> None:
    keys = CommandKeys()
    info = {
        "get": {"first_key_pos": 1, "flags": ["readonly"], "subcommands": []},
        "eval": {"first_key_pos": 0, "flags": ["movablekeys"], "subcommands": []},
        "xgroup": {"first_key_pos": 0, "flags": [], "subcommands": [[b"xgroup|create", -5, [], 2, 2, 1]]},
        "ping": {"first_key_pos": 0, "flags": [], "subcommands": []},
    }
    names_ = keys.missing([("GET", "k"), ("EVAL", "s", 1, "k"), ("XGROUP CREATE", "st", "g", "$"), ("PING",)])
    assert names_ == ["eval", "get", "ping", "xgroup"]
    keys.learn(names_, info)
    assert keys.first_key(("GET", "k")) == b"k"
    assert keys.first_key(("XGROUP CREATE", "st", "g", "$")) == b"st"
    assert keys.first_key(("PING",)) is None
    assert keys.first_key(("EVAL", "s", 1, "k")) is not None  # movable: the server is asked


# --------------------------------------------------------------------------------------------------- redirections


async def test_moved_and_ask_redirections_during_a_slot_migration(
    cluster: ClusterDeployment, nodes: list[RedisServer], otel: Otel
) -> None:
    slot = key_slot(b"a")
    source = cluster.owner(slot)
    target = next(n for n in nodes if n is not source)
    try:
        async with _client(nodes, otel) as r:
            await r.set("a", b"1")
            await r.set("{a}old", b"2")
            await asyncio.to_thread(cluster.begin_migration, slot, source, target)
            # New keys of a migrating slot go to the importing node (ASK -> ASKING + command there).
            assert await r.set("{a}new", b"3") is True
            with pytest.raises(RedisReplyError, match=r"^MOVED"):  # without ASKING the target refuses: not its slot yet
                target.cli("GET", "{a}new", timeout=1)
            assert await r.get("a") == b"1"  # still on the source
            await asyncio.to_thread(cluster.migrate_keys, source, target, "a")
            assert await r.get("a") == b"1"  # moved: the source answers ASK
            assert await r.incr("{a}n") == 1  # not idempotent: followed, because ASK means "not executed"
            # A pipeline with keys on both sides: the ASKed commands are re-sent to the target.
            assert await r.run_pipeline(lambda p: p.get("a").get("{a}old").get("{a}new")) == [b"1", b"2", b"3"]
            await asyncio.to_thread(cluster.migrate_keys, source, target, "{a}old")
            await asyncio.to_thread(cluster.finish_migration, slot, target)
            calls, rejected = _stats(source, "get")
            assert await r.get("{a}old") == b"2"  # MOVED: the map is updated...
            assert await r.get("{a}old") == b"2"  # ...and the next call goes straight to the target
            assert _stats(source, "get") == (calls, rejected + 1)
            assert all(b.state.value == "closed" for b in r.breakers.values())
        last = otel.spans("GET")[-1]
        assert (last.attributes or {})[names.SERVER_PORT] == target.port
        assert not otel.points(names.RETRIES)  # redirections are not retries
    finally:
        await asyncio.to_thread(cluster.restore_slot, slot, source)  # for the next tests


async def test_a_restarted_node_is_reconnected_and_a_frozen_one_never_gets_a_non_idempotent_resend(
    cluster: ClusterDeployment, nodes: list[RedisServer]
) -> None:
    node = nodes[1]
    key = _key_on(cluster, node)
    async with _client(nodes) as r:
        await r.set(key, b"v")
        await asyncio.to_thread(node.restart)  # same port, same node id (nodes.conf kept), data gone
        await asyncio.to_thread(cluster.wait_ok)
        assert await r.get(key) is None  # the pooled connection broke: reconnected and retried
        assert await r.incr(key + "n") == 1
        await asyncio.to_thread(node.freeze)
        try:
            with pytest.raises(OutcomeUnknownError) as info:
                await r.incr(key + "n")
            assert info.value.attempts == 1
        finally:
            await asyncio.to_thread(node.thaw)
        assert await r.get(key + "n") == b"2"  # applied once, after the thaw: never re-sent


# ------------------------------------------------------------------------------------------------------- breakers


async def test_a_dead_node_opens_only_its_own_breaker(
    cluster: ClusterDeployment, nodes: list[RedisServer], otel: Otel
) -> None:
    dead = nodes[2]
    alive = [n for n in nodes if n is not dead]
    keys_alive = [_key_on(cluster, n, "alive") for n in alive]
    key_dead = _key_on(cluster, dead, "dead")
    stream = _key_on(cluster, alive[0], "stream")
    async with _client(nodes, otel) as r:
        for k in [*keys_alive, key_dead]:
            await r.set(k, b"1")
        await asyncio.to_thread(dead.kill)
        for _ in range(3):
            with pytest.raises(ServiceUnavailableError):
                await r.get(key_dead)
        t0 = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            await r.get(key_dead)
        assert time.perf_counter() - t0 < 0.2
        for _ in range(5):
            assert [await r.get(k) for k in keys_alive] == [b"1", b"1"]
            await r.xadd_bulk(stream, [{"i": 1}])
        breakers = r.breakers
        assert breakers[f"{dead.host}:{dead.port}"].state.value == "open"
        for n in alive:
            assert breakers[f"{n.host}:{n.port}"].state.value == "closed"
            assert breakers[f"{n.host}:{n.port}"].failure_count == 0
        states = {(a[names.SERVER_PORT], a[names.BREAKER_STATE_ATTR]) for a, v in otel.points(names.BREAKER_STATE) if v}
        assert states == {(str(dead.port), "open"), *((str(n.port), "closed") for n in alive)}
        await asyncio.to_thread(dead.start)
        await asyncio.to_thread(cluster.wait_ok)


#: Seconds from a master's death to the first call served by its promoted replica (cluster-node-timeout 1 s, then
#: the replica's election; measured: 2-4 s).
PROMOTION_BOUND = 15.0


async def test_after_a_replica_is_promoted_the_dead_masters_open_breaker_does_not_block_its_slots() -> None:
    """The master of a slot dies and the cluster promotes its replica. The dead master's breaker opens (its reset
    timeout is long here); calls for its slots are then rejected only until the slot map shows the new owner,
    not for the whole reset timeout."""
    cluster = ClusterDeployment(nodes=3)
    try:
        await asyncio.to_thread(cluster.start)
        master = cluster.nodes[0]
        replica = await asyncio.to_thread(cluster.add_replica, master)
        key = _key_on(cluster, master)
        other = _key_on(cluster, cluster.nodes[1])
        async with _client(cluster.nodes, breaker={"fail_max": 2, "reset_timeout": 60}) as r:
            await r.set(key, b"v")
            await r.set(other, b"w")
            await asyncio.to_thread(cluster.wait_caught_up, master, replica)
            t0 = time.monotonic()
            await asyncio.to_thread(master.kill)
            failures: list[str] = []
            while True:
                try:
                    value = await r.get(key)
                    break
                except (ServiceUnavailableError, CircuitOpenError) as exc:
                    failures.append(type(exc).__name__)
                    assert time.monotonic() - t0 < PROMOTION_BOUND, failures
                    await asyncio.sleep(0.05)
            served = time.monotonic() - t0
            assert value == b"v"
            assert "CircuitOpenError" in failures  # the breaker did open, and did not keep the slot unavailable
            breakers = r.breakers
            assert breakers[f"{master.host}:{master.port}"].state.value == "open"
            assert breakers[f"{replica.host}:{replica.port}"].state.value == "closed"
            assert breakers[f"{cluster.nodes[1].host}:{cluster.nodes[1].port}"].failure_count == 0
            assert await r.get(other) == b"w"
        print(f"\ncluster failover: master killed -> first call served by the promoted replica {served:.2f} s")
    finally:
        cluster.cleanup()


def test_cluster_settings_are_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="db"):
        RedisSettings(mode="cluster", url="redis://h:7000/3")
    with pytest.raises(ValueError, match="cluster_nodes"):
        RedisSettings(mode="cluster", cluster_nodes=["h"])
    with pytest.raises(ValueError, match="cluster_nodes"):
        RedisSettings(cluster_nodes=["h:7000"])
    with pytest.raises(ValueError, match="sentinels"):
        RedisSettings(mode="cluster", sentinels=["h:26379"])
    s = RedisSettings(mode="cluster", url="redis://:pw@seed:7000")
    assert s.cluster_addresses() == [("seed", 7000)]
