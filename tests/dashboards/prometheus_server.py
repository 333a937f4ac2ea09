"""A private Prometheus for tests: scrapes given targets every second, evaluates given rule files every second.

Usage::

    with PrometheusServer(["127.0.0.1:9464"], job="orders", rule_files=[path]) as prom:
        prom.wait_for(lambda: prom.query('up{job="orders"} == 1'), timeout=20)
        firing = prom.wait_for(lambda: prom.firing("TradingSharedCircuitBreakerOpen"), timeout=20)

Every wait is bounded; the process and its temporary directory are removed by :meth:`stop`, on leaving the ``with``
block, or at interpreter exit, whichever comes first.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from panel_queries import panel_queries
from server_process import ServerProcess

__all__ = ["PrometheusError", "PrometheusServer", "free_port", "panel_queries"]

T = TypeVar("T")


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or answered an API call with an error."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer(ServerProcess):
    """One Prometheus process on a free loopback port, with its data in a temporary directory."""

    log_name = "prometheus.log"

    def __init__(
        self,
        targets: Sequence[str],
        job: str,
        rule_files: Sequence[Path] = (),
        *,
        binary: str = "prometheus",
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        alertmanagers: Sequence[str] = (),
    ) -> None:
        self.targets = list(targets)
        self.job = job
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        #: ``host:port`` of the Alertmanagers Prometheus sends its alerts to (none: alerts stay in Prometheus).
        self.alertmanagers = list(alertmanagers)
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Self:
        """Start Prometheus and wait until it is ready."""
        path = shutil.which(self.binary)
        if path is None:
            raise PrometheusError(f"{self.binary} is not installed (Debian package prometheus)")
        self._dir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        if self.alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]}
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self._log = (self._dir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                path,
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                # Firing alerts are re-sent this often; they expire in Alertmanager 4 resends after the last one.
                "--rules.alert.resend-delay=1s",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            self.wait_for(self._ready, timeout=timeout, message="Prometheus did not become ready")
        except Exception:
            log = self.log_tail()
            self.stop()
            raise PrometheusError(f"Prometheus failed to start:\n{log}") from None
        return self

    # --- HTTP API --------------------------------------------------------------------------------------------------
    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def _ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise PrometheusError("Prometheus exited")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        data = self._get("/api/v1/query", **params)
        return list(data["result"]) if isinstance(data["result"], list) else [data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        """Range query: the result matrix (``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``)."""
        data = self._get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=step)
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def firing(self, alertname: str, state: str = "firing") -> list[dict[str, Any]]:
        """Active alerts named ``alertname`` in ``state`` (``"pending"`` or ``"firing"``)."""
        return [a for a in self.alerts() if a["labels"].get("alertname") == alertname and a["state"] == state]

    def active_targets(self) -> list[dict[str, Any]]:
        """The active scrape targets from /api/v1/targets (``health``, ``lastError``, ``lastScrape``, ...)."""
        return list(self._get("/api/v1/targets")["activeTargets"])

    def targets_up(self) -> bool:
        """True once every target has been scraped successfully."""
        active = self.active_targets()
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    # --- waiting -----------------------------------------------------------------------------------------------------
    @staticmethod
    def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.2, message: str = "") -> T:
        """Call ``predicate`` until it returns something truthy and return that; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                result = predicate()
            except PrometheusError:
                raise
            except Exception as exc:  # e.g. connection refused while starting: keep waiting
                result, last = None, exc  # type: ignore[assignment]
            else:
                if result:
                    return result
                last = result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{message or 'condition not met'} within {timeout}s (last: {last!r})")
            time.sleep(interval)
