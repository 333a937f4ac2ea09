"""Which nodes a cluster slot-map refresh asks, and in what order (``ClusterRouter`` with scripted fake nodes).

Pure logic: the fakes answer ``CLUSTER SLOTS`` from a script; the real-cluster behaviour is tested in
``tests/deployments/test_redis_cluster_failover.py``.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis.exceptions as rex

from trading_shared import RedisSettings
from trading_shared.redis.cluster import ClusterRouter
from trading_shared.redis.endpoints import Endpoints

HOST = b"127.0.0.1"
FULL = [[0, 8191, [HOST, 7001, b"a"]], [8192, 16383, [HOST, 7002, b"b"]]]
PROMOTED = [[0, 8191, [HOST, 7004, b"d"]], [8192, 16383, [HOST, 7002, b"b"]]]
HALF = [[0, 8191, [HOST, 7001, b"a"]]]
NOT_CLUSTER = rex.ResponseError("ERR This instance has cluster support disabled")


class FakeNode:
    """An endpoint whose ``pools.main.execute_command`` answers (or raises) ``answer``."""

    def __init__(self, port: int, asked: list[int]) -> None:
        self.host, self.port, self.name = "127.0.0.1", port, f"127.0.0.1:{port}"
        self.answer: Any = FULL
        self.pools = self
        self.main = self
        self._asked = asked

    async def execute_command(self, *args: Any) -> Any:
        assert args == ("CLUSTER SLOTS",)
        self._asked.append(self.port)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class FakeEndpoints:
    def __init__(self) -> None:
        self.asked: list[int] = []
        self.nodes: dict[int, FakeNode] = {}
        self.closed = False
        self.wakes = 0
        self.nudge = self

    def wake(self) -> None:
        self.wakes += 1

    def get(self, host: str, port: int) -> FakeNode:
        return self.nodes.setdefault(port, FakeNode(port, self.asked))

    def all(self) -> list[FakeNode]:
        return list(self.nodes.values())


def _router(*ports: int) -> tuple[ClusterRouter, FakeEndpoints]:
    endpoints = FakeEndpoints()
    settings = RedisSettings(mode="cluster", cluster_nodes=[f"127.0.0.1:{p}" for p in ports])
    return ClusterRouter(settings, cast(Endpoints, endpoints)), endpoints


async def _refresh(router: ClusterRouter, endpoints: FakeEndpoints, avoid: int | None = None) -> list[int]:
    endpoints.asked.clear()
    router._refresher.done_at = float("-inf")  # no rate limit between the steps of a test
    await router._refresher.refresh(time.monotonic(), avoid=cast(Any, endpoints.nodes[avoid]) if avoid else None)
    return list(endpoints.asked)


def _owner(router: ClusterRouter, slot: int) -> int | None:
    owner = router.owner_of_slot(slot)
    return None if owner is None else owner.port


async def test_connect_skips_nodes_outside_the_cluster_and_refreshes_ask_them_last() -> None:
    router, endpoints = _router(7009, 7008, 7001)
    endpoints.get("127.0.0.1", 7009).answer = NOT_CLUSTER
    endpoints.get("127.0.0.1", 7008).answer = []  # a blank cluster node
    await router.start()
    assert endpoints.asked == [7009, 7008, 7001]
    assert [m.port for m in router.masters] == [7001, 7002]
    # The node that answered first, then the other master; the outsiders never while members answer.
    assert await _refresh(router, endpoints) == [7001]
    endpoints.nodes[7001].answer = rex.ConnectionError("refused")
    assert await _refresh(router, endpoints) == [7001, 7002]
    # 7001 is now demoted too: asked after the last answerer, after the outsiders (demoted earlier).
    endpoints.nodes[7002].answer = rex.TimeoutError()
    assert await _refresh(router, endpoints) == [7002, 7009, 7008, 7001]
    # Every node demoted: longest demoted first. One that gives a usable map again is back in front.
    endpoints.nodes[7001].answer = FULL
    assert await _refresh(router, endpoints) == [7002, 7009, 7008, 7001]
    assert await _refresh(router, endpoints) == [7001]


async def test_a_blank_node_at_the_failed_masters_address_does_not_stop_the_refresh() -> None:
    router, endpoints = _router(7001, 7002)
    await router.start()
    endpoints.nodes[7001].answer = []  # restarted blank at the old address
    endpoints.nodes[7002].answer = PROMOTED
    wakes = endpoints.wakes
    assert await _refresh(router, endpoints) == [7001, 7002]
    assert _owner(router, 0) == 7004 and endpoints.wakes == wakes + 1  # retries in backoff go now
    assert await _refresh(router, endpoints) == [7002]  # its answerer first from now on
    endpoints.nodes[7004].answer = PROMOTED
    assert await _refresh(router, endpoints, avoid=7002) == [7004]  # then the masters; 7001 demoted


@pytest.mark.parametrize(
    "error",
    [NOT_CLUSTER, rex.ClusterDownError("CLUSTERDOWN The cluster is down"), rex.BusyLoadingError("LOADING")],
    ids=["not-cluster", "clusterdown", "loading"],
)
async def test_an_error_reply_moves_on_to_the_next_node(error: Exception) -> None:
    router, endpoints = _router(7001, 7002)
    await router.start()
    endpoints.nodes[7001].answer = error
    endpoints.nodes[7002].answer = PROMOTED
    assert await _refresh(router, endpoints) == [7001, 7002]
    assert _owner(router, 0) == 7004


async def test_a_smaller_map_is_skipped_unless_no_node_has_a_wider_one() -> None:
    router, endpoints = _router(7001, 7002)
    await router.start()
    endpoints.nodes[7001].answer = HALF
    assert await _refresh(router, endpoints) == [7001, 7002]
    assert _owner(router, 9000) == 7002  # 7002's full map was used
    endpoints.nodes[7002].answer = HALF  # every node: slots 8192-16383 were removed on purpose
    assert await _refresh(router, endpoints) == [7002, 7001]
    assert _owner(router, 9000) is None and _owner(router, 0) == 7001


async def test_at_connect_a_partial_map_is_used_only_after_every_startup_node_was_asked() -> None:
    router, endpoints = _router(7001, 7002)
    endpoints.get("127.0.0.1", 7001).answer = HALF
    endpoints.get("127.0.0.1", 7002).answer = FULL
    await router.start()
    assert endpoints.asked == [7001, 7002] and _owner(router, 9000) == 7002


async def test_authentication_errors_raise_at_once() -> None:
    router, endpoints = _router(7001, 7002)
    await router.start()
    endpoints.nodes[7002].answer = rex.AuthenticationError("WRONGPASS")
    endpoints.asked.clear()
    with pytest.raises(rex.AuthenticationError):
        await router._lookup(cast(Any, endpoints.nodes[7001]))
    assert endpoints.asked == [7002]


async def test_connect_raises_the_last_error_when_no_node_gives_a_map() -> None:
    router, endpoints = _router(7009, 7008)
    endpoints.get("127.0.0.1", 7009).answer = []
    endpoints.get("127.0.0.1", 7008).answer = NOT_CLUSTER
    with pytest.raises(rex.ResponseError, match="cluster support disabled"):
        await router.start()
    endpoints.nodes[7008].answer = []
    with pytest.raises(rex.ClusterDownError, match="0 slots"):
        await router.start()
