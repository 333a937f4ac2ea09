"""A private Alertmanager for tests (Debian package prometheus-alertmanager), and a webhook receiver to route to.

Usage::

    with WebhookReceiver() as hooks, AlertmanagerServer(config_dict) as am:
        ...                                     # point a PrometheusServer at am.address (alertmanagers=[...])
        hooks.wait_for(lambda n: n["status"] == "firing", timeout=20)

The Alertmanager listens on a free loopback port, its cluster (gossip) listener is disabled, its data lives in a
temporary directory; :meth:`AlertmanagerServer.stop` (also on leaving the ``with`` block, or at interpreter exit)
removes both. The webhook receiver is a ``http.server`` on a free loopback port that keeps every POSTed JSON body.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Self

import yaml
from prometheus_server import PrometheusServer, free_port
from server_process import ServerProcess

import dashboards.config as config

__all__ = [
    "E2E_GROUP_WAIT",
    "E2E_RESET_TIMEOUT",
    "E2E_RULES",
    "AlertmanagerError",
    "AlertmanagerServer",
    "Notification",
    "WebhookReceiver",
    "routing_for_tests",
]


class AlertmanagerError(RuntimeError):
    """Alertmanager failed to start, or answered an API call with an error."""


class AlertmanagerServer(ServerProcess):
    """One Alertmanager process on a free loopback port, configured with ``config`` (an Alertmanager config dict)."""

    log_name = "alertmanager.log"

    def __init__(self, config: dict[str, Any], *, binary: str = "prometheus-alertmanager") -> None:
        self.config = config
        self.binary = binary
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus' ``alerting.alertmanagers`` targets name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.address}"

    def start(self, timeout: float = 15.0) -> Self:
        """Start Alertmanager and wait until it is ready."""
        path = shutil.which(self.binary)
        if path is None:
            raise AlertmanagerError(f"{self.binary} is not installed (Debian package prometheus-alertmanager)")
        self._dir = Path(tempfile.mkdtemp(prefix="alertmanager-test-"))
        (self._dir / "alertmanager.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.port = free_port()
        self._log = (self._dir / "alertmanager.log").open("wb")
        self._process = subprocess.Popen(
            [
                path,
                f"--config.file={self._dir / 'alertmanager.yml'}",
                f"--storage.path={self._dir / 'data'}",
                f"--web.listen-address={self.address}",
                "--cluster.listen-address=",  # no gossip listener: nothing but the API port is opened
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            PrometheusServer.wait_for(self._ready, timeout=timeout, message="Alertmanager did not become ready")
        except Exception:
            log = self.log_tail()
            self.stop()
            raise AlertmanagerError(f"Alertmanager failed to start:\n{log}") from None
        return self

    def _ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise AlertmanagerError("Alertmanager exited")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus does (``POST /api/v2/alerts``: ``labels``, ``annotations``, ``startsAt``...)."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            raise AlertmanagerError(f"POST /api/v2/alerts: {exc.code} {exc.read()[:200]!r}") from None

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert Alertmanager holds (``/api/v2/alerts``): labels, ``status.state`` (active / suppressed),
        ``status.inhibitedBy`` (fingerprints of the inhibiting alerts)."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
                return list(json.load(response))
        except urllib.error.HTTPError as exc:
            raise AlertmanagerError(f"/api/v2/alerts: {exc.code} {exc.read()[:200]!r}") from None


@dataclass(frozen=True)
class Notification:
    """One webhook notification: when it arrived (``time.time()``), the URL path it was sent to, its JSON body."""

    at: float
    path: str
    body: dict[str, Any]

    @property
    def status(self) -> str:
        """``firing`` or ``resolved`` (the group's status)."""
        return str(self.body["status"])

    @property
    def group(self) -> dict[str, str]:
        """The labels that identify the group (the route's ``group_by``)."""
        return dict(self.body["groupLabels"])

    def alerts(self) -> list[tuple[str, str]]:
        """``(alertname, status)`` of every alert in the notification, sorted."""
        return sorted((a["labels"]["alertname"], a["status"]) for a in self.body["alerts"])


class WebhookReceiver:
    """An HTTP server on a free loopback port that records every POSTed JSON body (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with receiver._lock:
                    receiver._received.append(Notification(time.time(), self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def received(self, where: Callable[[Notification], bool] = lambda n: True) -> list[Notification]:
        """The notifications received so far (that satisfy ``where``), in arrival order."""
        with self._lock:
            return [n for n in self._received if where(n)]

    def wait_for(self, where: Callable[[Notification], bool], timeout: float, message: str = "") -> Notification:
        """The first notification that satisfies ``where``, waiting up to ``timeout`` seconds for it."""
        found = PrometheusServer.wait_for(lambda: self.received(where), timeout, interval=0.1, message=message)
        return found[0]


#: The rules of the end-to-end tests with Alertmanager: FAST_TEST (rate window 10s, breaker-open `for` 2s, symptoms'
#: `for` 5s or none) with a breaker-open window that outlasts the symptoms after recovery, as the production one does:
#: 15s > 10s rate window + 1s reset timeout of the test workload's breakers + scrape and evaluation intervals (1s).
E2E_RULES: Final = dataclasses.replace(config.FAST_TEST, breaker_open_window="15s")
#: Group waits of the end-to-end tests, per severity: as in production, a symptom's `for` plus its group wait exceeds
#: the breaker-open `for` plus two evaluation intervals (acquire timeouts, no `for`: 0 + 5s > 2s + 2 x 1s).
E2E_GROUP_WAIT: Final = {"critical": "1s", "warning": "5s"}
#: The breaker reset timeout of the test workload (tests/dashboards/sdk_workload.py).
E2E_RESET_TIMEOUT: Final = 1.0


def routing_for_tests(
    receiver: WebhookReceiver,
    *,
    group_wait: dict[str, str],
    group_interval: str = "1s",
    repeat_interval: str = "1h",
) -> config.RoutingConfig:
    """The shipped routing (same receivers, severities, grouping, inhibition) with test-time timings, every receiver
    a webhook to ``receiver`` at ``/<receiver name>``. ``group_wait`` is per severity."""
    routes = tuple(
        dataclasses.replace(
            r, group_wait=group_wait[r.severity], group_interval=group_interval, repeat_interval=repeat_interval
        )
        for r in config.ROUTING.routes
    )
    return dataclasses.replace(config.ROUTING, routes=routes, webhook_url=receiver.url("/{receiver}"))
