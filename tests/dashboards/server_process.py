"""What the private Prometheus and Alertmanager of the tests share: a process in a temporary directory of its own.

A subclass's ``start`` creates ``self._dir``, opens ``self._log`` there (file :attr:`ServerProcess.log_name`),
starts ``self._process`` and registers :meth:`ServerProcess.stop` with ``atexit``; this class stops the process,
removes the directory, reads the log, and makes the server a context manager.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
from pathlib import Path
from typing import IO, Self


class ServerProcess:
    """A server process with a temporary directory, stopped and removed by :meth:`stop` (idempotent)."""

    #: File name of the process's log inside its directory.
    log_name = "server.log"
    _dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes]

    def start(self) -> Self:
        """Start the process and wait until it is ready (subclasses)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and remove the temporary directory. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process logged."""
        if self._dir is None or not (self._dir / self.log_name).exists():
            return ""
        return "\n".join((self._dir / self.log_name).read_text(errors="replace").splitlines()[-lines:])
