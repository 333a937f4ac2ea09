"""Standalone mode: the url's server, as a router with one endpoint and nothing to discover or follow.

The endpoint's pipeline is the client's own (:attr:`~trading_shared.RedisClient.breaker` guards connecting and every
call alike), and its spans keep the server the settings name, so attempts do not set it again.
"""

from __future__ import annotations

import redis.exceptions as rex

from ..resilience.pipeline import CallPipeline
from .bracketed import CommandSet
from .endpoints import Endpoint, Endpoints, Key
from .pool import Pools


class StandaloneRouter:
    """Routes every call to the one server of ``pools``."""

    def __init__(self, endpoints: Endpoints, host: str, port: int, pools: Pools, pipeline: CallPipeline) -> None:
        self.endpoints = endpoints
        self._endpoint = Endpoint(host, port, pools, CommandSet(pools, endpoints.wait), pipeline, name_server=False)
        endpoints.adopt(self._endpoint)

    async def start(self) -> None:
        """Open one connection: bad credentials and an unreachable server show up here."""
        await self._endpoint.pools.open_one()

    def route(self, key: Key | None) -> Endpoint:
        """The server."""
        return self._endpoint

    async def failed(self, endpoint: Endpoint, since: float) -> None:
        """Nothing to look up: there is one server."""

    def redirected(self, error: rex.AskError) -> Endpoint:
        """MOVED/ASK do not happen outside a cluster: the reply is raised as it is (the caller's configuration)."""
        raise error

    async def reroute(self, key: Key | None, rejected: Endpoint) -> Endpoint | None:
        """There is no other server to send a rejected call to."""
        return None

    async def close(self, timeout: float) -> None:
        """Close the server's pools."""
        await self.endpoints.close(timeout)
