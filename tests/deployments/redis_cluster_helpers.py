"""Failover helpers for ``redis_deployments.ClusterDeployment``: masters with replicas, promotion timing, healing.

* :func:`start_with_replicas`: the cluster's masters, each with one replica (:meth:`ClusterDeployment.add_replica`).
* :func:`range_of` / :func:`wait_promoted`: a master's slot range, and the moment a surviving node first names the
  range's replica as its owner (the cluster's promotion, as a client asking ``CLUSTER SLOTS`` can see it).
* :func:`restart_blank`: restart a node on its port with its directory wiped (``nodes.conf`` and data files): a fresh
  node, not part of the cluster, at the old address.
* :func:`heal`: every node running and a member again (a blank one is re-joined), every master with a caught-up
  replica that every node knows: the state the next failover test starts from.

All functions block: from async tests call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.crc import key_slot
from redis_deployments import ClusterDeployment, bus_port

from support.procs import ServerError, wait_until
from support.redis_server import RedisServer


def start_with_replicas(cluster: ClusterDeployment) -> None:
    """Start ``cluster`` and give each master one replica."""
    cluster.start()
    for master in list(cluster.nodes):
        cluster.add_replica(master)


def servers(cluster: ClusterDeployment) -> list[RedisServer]:
    """Every node, masters and replicas as started (roles change with failovers)."""
    return [*cluster.nodes, *cluster.replicas]


def by_port(cluster: ClusterDeployment, port: int) -> RedisServer:
    """The node listening on ``port``."""
    return next(s for s in servers(cluster) if s.port == port)


def slots_of(node: RedisServer) -> list[Any]:
    """``CLUSTER SLOTS`` of ``node``."""
    return list(node.cli("CLUSTER", "SLOTS", timeout=1.0))


def range_of(cluster: ClusterDeployment, master: RedisServer) -> tuple[int, int, RedisServer]:
    """``(first slot, last slot, replica)`` of ``master``'s (first) slot range, as a live node sees it."""
    live = next(s for s in servers(cluster) if s.running and s is not master)
    for entry in slots_of(live):
        if int(entry[2][1]) == master.port:
            return int(entry[0]), int(entry[1]), by_port(cluster, int(entry[3][1]))
    raise ServerError(f"{master.port} owns no slot range with a replica")


def wait_promoted(survivors: list[RedisServer], slot: int, new_port: int, timeout: float = 30) -> float:
    """Poll the survivors' ``CLUSTER SLOTS`` until one names ``new_port`` as ``slot``'s owner; that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in survivors:
            with contextlib.suppress(OSError, ServerError):
                for entry in slots_of(node):
                    if int(entry[0]) <= slot <= int(entry[1]) and int(entry[2][1]) == new_port:
                        return time.monotonic()
        time.sleep(0.01)
    raise ServerError(f"slot {slot} did not move to {new_port} within {timeout} s")


def restart_blank(node: RedisServer) -> None:
    """Kill ``node`` if it runs, delete its cluster config and data files, start it again on the same port."""
    node.kill()
    for pattern in ("nodes.conf", "*.rdb", "*.aof", "appendonlydir"):
        for path in node.base_dir.glob(pattern):
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                path.unlink()
    node.start()


def _info(node: RedisServer, section: str) -> dict[str, str]:
    text = str(node.cli(*(("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)), timeout=1.0))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def heal(cluster: ClusterDeployment, timeout: float = 30) -> None:
    """Every node running and a member (a blank node re-joins as a replica), every master with a caught-up replica."""
    for node in servers(cluster):
        if not node.running:
            node.start()  # nodes.conf kept: it re-joins as it left (a replaced master comes back as a replica)
    members = [n for n in servers(cluster) if int(_info(n, "cluster")["cluster_known_nodes"]) > 1]
    for blank in (n for n in servers(cluster) if n not in members):
        _rejoin(cluster, blank, members, timeout)
        members.append(blank)

    def settled() -> bool:
        with contextlib.suppress(OSError, ServerError, KeyError, StopIteration):
            views = [slots_of(n) for n in members]
            if len({str(sorted(map(str, v))) for v in views}) != 1:
                return False
            masters = {int(e[2][1]) for e in views[0]}
            if len(masters) != len(cluster.nodes) or any(len(e) < 4 for e in views[0]):
                return False  # every master has a replica that every node lists
            for replica in (n for n in members if int(n.port) not in masters):
                replication = _info(replica, "replication")
                if replication.get("master_link_status") != "up":
                    return False
                master = by_port(cluster, int(replication["master_port"]))
                if _info(master, "replication")["master_repl_offset"] != replication["slave_repl_offset"]:
                    return False
            return all(_info(n, "cluster")["cluster_state"] == "ok" for n in members)
        return False

    if not wait_until(settled, timeout, 0.05):
        raise ServerError("the cluster did not heal:\n" + "\n".join(n.log_tail(8) for n in servers(cluster)))


def _rejoin(cluster: ClusterDeployment, blank: RedisServer, members: list[RedisServer], timeout: float) -> None:
    """Forget the failed node entries, meet ``blank`` and make it the replica of a master that has none."""
    for member in members:
        for line in str(member.cli("CLUSTER", "NODES", timeout=1.0)).splitlines():
            fields = line.split()
            if "fail" in fields[2].split(","):
                with contextlib.suppress(ServerError):
                    member.cli("CLUSTER", "FORGET", fields[0], timeout=1.0)
    blank.cli("CLUSTER", "MEET", members[0].host, members[0].port, bus_port(members[0]))
    view = slots_of(members[0])
    orphan = next(by_port(cluster, int(e[2][1])) for e in view if len(e) < 4)
    orphan_id = cluster.node_id(orphan)

    def knows() -> bool:
        with contextlib.suppress(OSError, ServerError):
            return orphan_id in str(blank.cli("CLUSTER", "NODES", timeout=1.0))
        return False

    if not wait_until(knows, timeout, 0.05):
        raise ServerError("the blank node did not learn the cluster")
    blank.cli("CLUSTER", "REPLICATE", orphan_id)
    # A replica at offset 0 stays out of CLUSTER SLOTS until the master's next replication ping: one write moves it.
    start = next(int(e[0]) for e in view if int(e[2][1]) == orphan.port)
    orphan.cli("SET", key_in_slot(start, "ts:bump:"), "1")


def key_in_slot(slot: int, prefix: str = "k") -> str:
    """A key whose hash slot is ``slot``."""
    return next(f"{prefix}{i}" for i in range(1_000_000) if key_slot(f"{prefix}{i}".encode()) == slot)
