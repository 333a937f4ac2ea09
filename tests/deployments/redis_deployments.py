"""Redis Sentinel and Redis Cluster deployments for tests, built on ``support.RedisServer``.

* :class:`SentinelServer`: Debian's ``redis-sentinel`` with a config file of its own (sentinel rewrites it).
* :class:`SentinelDeployment`: a master, replicas (``--replicaof``) and sentinels monitoring the master as
  :data:`SERVICE` (``down-after-milliseconds`` 1000 ms, ``failover-timeout`` 3000 ms, TILT off: this machine is often
  loaded and a sentinel in TILT mode does nothing for 30 s). ``fast_timers`` (the default) also shortens the
  sentinels' INFO, PING and hello periods to 500 ms; without it they keep Redis's defaults (INFO every 10 s, PING
  every 1 s, hello every 2 s), which decide how long a restarted old master goes on calling itself master.
* :class:`ClusterDeployment`: redis-server nodes with ``--cluster-enabled yes`` (``cluster-node-timeout`` 1000 ms,
  ``cluster-require-full-coverage no``: the other masters keep serving when one is down), joined with
  ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``; slot migration helpers.

Every process listens on a free 127.0.0.1 port in a temp dir of its own, removed by ``cleanup()`` (also at
interpreter exit, and reaped by the next session if this one dies). All methods block: from async tests call them
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import Any

import redis
from redis.crc import key_slot

from support.procs import ServerError, free_port, wait_until
from support.redis_server import RedisReplyError, RedisServer, resp_command

SERVICE = "tsmaster"


def find_redis_sentinel() -> str:
    """``redis-sentinel`` (Debian package redis-sentinel)."""
    for candidate in (shutil.which("redis-sentinel"), "/usr/bin/redis-sentinel"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError("redis-sentinel not found: run scripts/setup.sh (Debian package redis-sentinel)")


class SentinelServer(RedisServer):
    """A sentinel monitoring ``master`` as :data:`SERVICE` (quorum ``quorum``)."""

    def __init__(
        self, master: RedisServer, quorum: int, password: str | None = None, *, fast_timers: bool = True
    ) -> None:
        super().__init__(binary=find_redis_sentinel())
        self.fast_timers = fast_timers
        self.master_host = master.host
        self.master_port = master.port
        self.quorum = quorum
        self.master_password = password

    def _spawn_and_wait(self) -> bool:
        base = self.base_dir
        conf = base / "sentinel.conf"
        if not conf.exists():  # sentinel rewrites it: keep what it learnt across restarts
            lines = [
                f"port {self.port}",
                f"bind {self.host}",
                f"dir {base}",
                f"logfile {self.log_path}",
                f"pidfile {base / self.pid_file}",
                "daemonize no",
                f"sentinel monitor {SERVICE} {self.master_host} {self.master_port} {self.quorum}",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 3000",
                f"sentinel parallel-syncs {SERVICE} 4",
            ]
            if self.master_password:
                lines.append(f"sentinel auth-pass {SERVICE} {self.master_password}")
            conf.write_text("\n".join(lines) + "\n")
        self._popen([self.binary, str(conf)], cwd=base)
        return self._wait_spawned(self._configure)

    def _configure(self) -> bool:
        """Once it answers PING: short timers, and no TILT (a loaded machine pauses processes for seconds: TILT would
        freeze the sentinel for 30 s and no failover would happen)."""
        if self.cli("PING", password=None, timeout=1.0) != "PONG":
            return False
        periods = ("info-period", 500, "publish-period", 500, "ask-period", 500, "ping-period", 500)
        self.cli("SENTINEL", "DEBUG", "tilt-trigger", 3600000, *(periods if self.fast_timers else ()), password=None)
        return True

    def master_address(self) -> tuple[str, int] | None:
        """What this sentinel answers to ``GET-MASTER-ADDR-BY-NAME``."""
        reply = self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, password=None, timeout=1.0)
        return (reply[0], int(reply[1])) if reply else None


class SentinelDeployment:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority)."""

    def __init__(
        self, *, replicas: int = 1, sentinels: int = 1, password: str | None = None, fast_timers: bool = True
    ) -> None:
        self.password = password
        self.fast_timers = fast_timers
        self.master = RedisServer(password=password, extra_args=self._auth_args())
        self.replicas: list[RedisServer] = []
        self._replica_count = replicas
        self.sentinels: list[SentinelServer] = []
        self._sentinel_count = sentinels

    def _auth_args(self) -> tuple[str, ...]:
        # A (re)joining replica syncs at once, instead of after the default 5 s wait for more replicas.
        sync = ("--repl-diskless-sync-delay", "0")
        return (*sync, "--masterauth", self.password) if self.password else sync

    @property
    def servers(self) -> list[RedisServer]:
        """The master and replicas as started (the roles change with failovers)."""
        return [self.master, *self.replicas]

    def start(self) -> None:
        """Start everything and wait until every sentinel sees every replica."""
        self.master.start()
        for _ in range(self._replica_count):
            args = (*self._auth_args(), "--replicaof", self.master.host, str(self.master.port))
            replica = RedisServer(password=self.password, extra_args=args)
            self.replicas.append(replica)
            replica.start()
        for replica in self.replicas:
            self.wait_synced(replica)
        quorum = self._sentinel_count // 2 + 1
        for _ in range(self._sentinel_count):
            sentinel = SentinelServer(self.master, quorum, self.password, fast_timers=self.fast_timers)
            self.sentinels.append(sentinel)
            sentinel.start()
        for sentinel in self.sentinels:
            ok = wait_until(lambda s=sentinel: self._sees(s), 15, 0.05)  # type: ignore[misc]
            if not ok:
                raise ServerError(f"sentinel {sentinel.port} does not see the deployment:\n{sentinel.log_tail()}")
        self.wait_replicated()

    def wait_replicated(self, master: RedisServer | None = None, timeout: float = 10) -> None:
        """Write a marker on ``master`` (default: the first master) and WAIT until every replica has it.

        ``master_link_status:up`` is not enough: after a diskless full sync the master streams nothing until the
        replica's first REPLCONF ACK (up to a second later), and a failover in between loses every write since.
        """
        master = master or self.master
        client = redis.Redis(host=master.host, port=master.port, password=self.password, socket_timeout=timeout + 1)
        try:
            client.set("ts:replicated", str(time.monotonic()))
            confirmed = int(client.wait(len(self.replicas), int(timeout * 1000)))
        finally:
            client.close()
        if confirmed < len(self.replicas):
            raise ServerError(f"only {confirmed} of {len(self.replicas)} replicas confirmed a write")

    def _sees(self, sentinel: SentinelServer) -> bool:
        master = sentinel.cli("SENTINEL", "MASTER", SERVICE, password=None)
        info = dict(zip(master[::2], master[1::2], strict=True))
        return (
            int(info["num-slaves"]) >= len(self.replicas)
            and int(info["num-other-sentinels"]) >= len(self.sentinels) - 1
        )

    def sentinel_addresses(self) -> list[str]:
        """``host:port`` of each sentinel, for ``RedisSettings.sentinels``."""
        return [f"{s.host}:{s.port}" for s in self.sentinels]

    def role(self, server: RedisServer) -> str:
        """``master`` or ``slave``."""
        return str(server.cli("ROLE", timeout=1.0)[0])

    def wait_synced(self, replica: RedisServer, timeout: float = 15) -> None:
        """Wait until ``replica``'s link to its master is up."""

        def synced() -> bool:
            with contextlib.suppress(OSError, ServerError):
                info = replica.cli("INFO", "replication", timeout=1.0)
                return "master_link_status:up" in info
            return False

        if not wait_until(synced, timeout, 0.05):
            raise ServerError(f"replica {replica.port} did not sync:\n{replica.log_tail()}")

    def failover(self) -> None:
        """``SENTINEL FAILOVER`` on the first sentinel (forced, no agreement needed)."""
        self.sentinels[0].cli("SENTINEL", "FAILOVER", SERVICE, password=None)

    def wait_new_master(self, old_port: int, timeout: float = 30) -> RedisServer:
        """Wait until every live sentinel names a master other than ``old_port``; return it."""

        def switched() -> bool:
            with contextlib.suppress(OSError, ServerError):
                answers = {s.master_address() for s in self.sentinels if s.running}
                return len(answers) == 1 and next(iter(answers)) not in (None, (self.master.host, old_port))
            return False

        if not wait_until(switched, timeout, 0.05):
            logs = "\n".join(s.log_tail(15) for s in self.sentinels)
            raise ServerError(f"no failover within {timeout} s:\n{logs}")
        _, port = self.sentinels[0].master_address() or ("", 0)
        return next(s for s in self.servers if s.port == port)

    def cleanup(self) -> None:
        """Stop and remove everything."""
        for server in [*self.sentinels, *self.replicas, self.master]:
            server.cleanup()


_CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                 "--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0")  # fmt: skip


def cluster_node() -> RedisServer:
    """A cluster-enabled redis-server whose cluster bus has a free port of its own (``--cluster-port``).

    The default bus port, port + 10000, is mostly in the kernel's ephemeral range: while the node is down an outgoing
    connection (another node reconnecting to it, even to itself) can take it, and the restart fails with EADDRINUSE.
    """
    return RedisServer(extra_args=(*_CLUSTER_ARGS, "--cluster-port", str(free_port())))


def bus_port(node: RedisServer) -> int:
    """``node``'s cluster bus port (for ``CLUSTER MEET host port bus-port``)."""
    return int(node.cli("CONFIG", "GET", "cluster-port", timeout=1.0)[1])


class ClusterDeployment:
    """``nodes`` cluster-enabled redis-servers joined into one cluster of masters (replicas: :meth:`add_replica`)."""

    def __init__(self, nodes: int = 3) -> None:
        self.nodes = [cluster_node() for _ in range(nodes)]
        self.replicas: list[RedisServer] = []

    def start(self) -> None:
        """Start the nodes, create the cluster, wait until every node says ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addresses = [f"{n.host}:{n.port}" for n in self.nodes]
        done = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.wait_ok()

    def wait_ok(self, nodes: list[RedisServer] | None = None, timeout: float = 20) -> None:
        """Wait until ``nodes`` (default: all) report ``cluster_state:ok`` and agree on the slot map."""

        def ok() -> bool:
            with contextlib.suppress(OSError, ServerError):
                live = nodes or self.nodes
                if not all("cluster_state:ok" in n.cli("CLUSTER", "INFO", timeout=1.0) for n in live):
                    return False
                maps = {str(sorted(map(str, n.cli("CLUSTER", "SLOTS", timeout=1.0)))) for n in live}
                return len(maps) == 1
            return False

        if not wait_until(ok, timeout, 0.05):
            raise ServerError("the cluster did not become ok:\n" + "\n".join(n.log_tail(10) for n in self.nodes))

    def add_replica(self, master: RedisServer, timeout: float = 20) -> RedisServer:
        """Start a node, join it to the cluster as a replica of ``master``; wait until it is in sync."""
        replica = cluster_node()
        self.replicas.append(replica)
        replica.start()
        replica.cli("CLUSTER", "MEET", master.host, master.port, bus_port(master))
        master_id = self.node_id(master)

        def known() -> bool:
            with contextlib.suppress(OSError, ServerError):
                return master_id in str(replica.cli("CLUSTER", "NODES", timeout=1.0))
            return False

        if not wait_until(known, timeout, 0.05):
            raise ServerError("the new node did not learn the cluster")
        replica.cli("CLUSTER", "REPLICATE", master_id)

        def synced() -> bool:
            with contextlib.suppress(OSError, ServerError):
                return "master_link_status:up" in str(replica.cli("INFO", "replication", timeout=1.0))
            return False

        if not wait_until(synced, timeout, 0.05):
            raise ServerError(f"the new replica did not sync:\n{replica.log_tail()}")
        # A replica at replication offset 0 is left out of CLUSTER SLOTS (and is not gossiped as in sync) until the
        # master's next replication PING, 10 s away: one write makes its offset move at once.
        start, end = next((int(e[0]), int(e[1])) for e in master.cli("CLUSTER", "SLOTS") if int(e[2][1]) == master.port)
        bump = next(f"ts:bump:{i}" for i in range(100_000) if start <= key_slot(f"ts:bump:{i}".encode()) <= end)
        master.cli("SET", bump, "1")

        def everyone_knows() -> bool:  # the masters vote only for a replica they know as the failed master's
            with contextlib.suppress(OSError, ServerError):
                return all(
                    any(any(int(r[1]) == replica.port for r in entry[3:]) for entry in n.cli("CLUSTER", "SLOTS"))
                    for n in self.nodes
                )
            return False

        if not wait_until(everyone_knows, timeout, 0.05):
            raise ServerError("the masters did not learn of the new replica")
        self.wait_ok([*self.nodes, replica])
        return replica

    def wait_caught_up(self, master: RedisServer, replica: RedisServer, timeout: float = 10) -> None:
        """Wait until ``replica`` has applied everything ``master`` has written (replication offsets equal)."""

        def offset(server: RedisServer, field: str) -> int:
            for line in str(server.cli("INFO", "replication", timeout=1.0)).splitlines():
                if line.startswith(field + ":"):
                    return int(line.split(":", 1)[1])
            return -1

        if not wait_until(
            lambda: offset(master, "master_repl_offset") == offset(replica, "slave_repl_offset"), timeout
        ):
            raise ServerError("the replica did not catch up")

    def node_id(self, node: RedisServer) -> str:
        """``CLUSTER MYID``."""
        return str(node.cli("CLUSTER", "MYID"))

    def owner(self, slot: int) -> RedisServer:
        """The node owning ``slot`` (asked from the first live node)."""
        live = next(n for n in self.nodes if n.running)
        for entry in live.cli("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                port = int(entry[2][1])
                return next(n for n in [*self.nodes, *self.replicas] if n.port == port)
        raise ServerError(f"slot {slot} is not covered")

    def begin_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """``CLUSTER SETSLOT`` IMPORTING on ``target``, MIGRATING on ``source``: new keys get ASK."""
        target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate_keys(self, source: RedisServer, target: RedisServer, *keys: str) -> None:
        """``MIGRATE`` ``keys`` from ``source`` to ``target`` (during a migration)."""
        source.cli("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, target: RedisServer) -> None:
        """``CLUSTER SETSLOT <slot> NODE <target>`` on every live node: the old owner now answers MOVED."""
        target_id = self.node_id(target)
        for node in [target, *(n for n in self.nodes if n is not target and n.running)]:
            node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def restore_slot(self, slot: int, owner: RedisServer) -> None:
        """End any migration of ``slot`` and give it (with its keys) back to ``owner``."""
        live = [n for n in self.nodes if n.running]
        for node in live:
            node.cli("CLUSTER", "SETSLOT", slot, "STABLE")
        current = self.owner(slot)
        if current is not owner:
            self.begin_migration(slot, current, owner)
            keys = current.cli("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            if keys:
                self.migrate_keys(current, owner, *keys)
            self.finish_migration(slot, owner)
        self.wait_ok()

    def cleanup(self) -> None:
        """Stop and remove every node."""
        for node in [*self.replicas, *self.nodes]:
            node.cleanup()


def cli_any(servers: list[RedisServer], *args: Any) -> Any:
    """Run a command on the first server that answers."""
    last: Exception | None = None
    for server in servers:
        try:
            return server.cli(*args, timeout=1.0)
        except (OSError, RedisReplyError, ServerError) as exc:
            last = exc
    raise ServerError(f"no server answered {args[0]!r}: {last!r}")


__all__ = [
    "SERVICE",
    "ClusterDeployment",
    "SentinelDeployment",
    "SentinelServer",
    "bus_port",
    "cli_any",
    "cluster_node",
    "find_redis_sentinel",
    "resp_command",
]
