"""A PostgreSQL primary and a streaming-replication standby for failover tests, built on ``support.PostgresServer``.

:class:`PrimaryServer` is a :class:`~support.servers.PostgresServer` that also accepts replication connections;
:class:`StandbyServer` is created with ``pg_basebackup -R`` from a running primary instead of ``initdb`` and can be
promoted. Both listen on free 127.0.0.1 ports in their own temp dirs and are removed by ``cleanup()`` (also at
interpreter exit). All methods block: call them from async tests through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import ClassVar

from support.pg_server import PG_DIR_PREFIX
from support.procs import make_temp_dir, register, unregister
from support.servers import PostgresServer, ServerError


class _Template:
    """An initdb'ed, never started data dir that primaries copy instead of running initdb (removed at exit)."""

    def __init__(self) -> None:
        self.base: Path | None = None

    @property
    def datadir(self) -> Path | None:
        return self.base / "data" if self.base is not None else None

    def cleanup(self) -> None:
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        unregister(self)


class PrimaryServer(PostgresServer):
    """A private PostgreSQL server whose pg_hba.conf also lets ``postgres`` replicate over 127.0.0.1 (trust).

    The first one runs initdb; later ones copy its pristine data dir (``cp -a`` as the owner), which is faster.
    """

    _template: ClassVar[_Template] = _Template()

    def _initdb(self) -> None:
        template = self._template
        if template.datadir is not None and template.datadir.is_dir():
            self._run_as_owner(["cp", "-a", str(template.datadir), str(self.datadir)])
            return
        super()._initdb()
        base = make_temp_dir(PG_DIR_PREFIX + "template-")  # reaped like any private cluster if this session dies
        register(template)
        template.base = base
        if self._owner:
            os.chown(base, *self._owner)
        self._run_as_owner(["cp", "-a", str(self.datadir), str(base / "data")])

    def _write_hba(self) -> None:
        super()._write_hba()
        with (self.datadir / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")

    def configure(self, **settings: str) -> None:
        """``ALTER SYSTEM SET`` each setting (values are SQL literals, e.g. ``"'*'"``) and reload."""
        sql = "".join(f"ALTER SYSTEM SET {name} = {value};\n" for name, value in settings.items())
        self.psql(sql + "SELECT pg_reload_conf();")

    def wait_for_standbys(self, count: int = 1, sync: bool = False, timeout: float = 15.0) -> None:
        """Wait until ``count`` standbys stream from this server (and are synchronous, with ``sync``)."""
        where = "state = 'streaming'" + (" AND sync_state = 'sync'" if sync else "")
        deadline = time.monotonic() + timeout
        while int(self.psql(f"SELECT count(*) FROM pg_stat_replication WHERE {where}") or 0) < count:
            if time.monotonic() > deadline:
                raise ServerError(f"no {count} streaming standby(s) after {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)


    def wait_replayed_by(self, standby: PostgresServer, timeout: float = 15.0) -> None:
        """Wait until ``standby`` has replayed all WAL this server has written so far."""
        lsn = self.psql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") != "t":
            if time.monotonic() > deadline:
                raise ServerError(f"standby did not replay up to {lsn} within {timeout} s")
            time.sleep(0.02)


class StandbyServer(PostgresServer):
    """A hot standby of ``primary``: its data dir comes from ``pg_basebackup -R -X stream`` on first start."""

    def __init__(self, primary: PostgresServer, **kwargs: object) -> None:
        super().__init__(bindir=primary.bindir, **kwargs)  # type: ignore[arg-type]
        self.primary = primary

    def promote(self, timeout: float = 30.0) -> None:
        """``pg_ctl promote -w``: returns once the server accepts writes."""
        self._run_as_owner(
            [str(self.bindir / "pg_ctl"), "promote", "-w", "-t", str(int(timeout)), "-D", str(self.datadir)]
        )

    def in_recovery(self) -> bool:
        """Whether the server is still a standby."""
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def set_password(self, user: str, password: str) -> None:
        """Roles come from the primary (a standby is read-only): only allowed once promoted."""
        if self.in_recovery():
            return
        super().set_password(user, password)

    def _initdb(self) -> None:
        self._run_as_owner(
            [
                str(self.bindir / "pg_basebackup"),
                "-h",
                self.primary.host,
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.datadir),
                "-R",  # standby.signal + primary_conninfo
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        )

