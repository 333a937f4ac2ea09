"""Fake clients that record what happens to them, for the pure-logic lifecycle tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Journal:
    """Everything the fakes did, in order: ``("connect", "a")``, ``("close", "a")``, ``("cancelled", "task")``..."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def of(self, kind: str) -> list[str]:
        """Names of the events of one kind, in order."""
        return [name for k, name in self.events if k == kind]


class FakeClient:
    """A client whose connect/close can be slow, fail or hang; it records every call in the journal."""

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        connect_delay: float = 0.0,
        connect_error: BaseException | None = None,
        close_error: BaseException | None = None,
        close_hangs: bool = False,
    ) -> None:
        self.name = name
        self.journal = journal
        self.connect_delay = connect_delay
        self.connect_error = connect_error
        self.close_error = close_error
        self.close_hangs = close_hangs
        self.connected = False
        self.closes = 0

    async def connect(self) -> FakeClient:
        self.journal.events.append(("connect", self.name))
        try:
            await asyncio.sleep(self.connect_delay)
        except asyncio.CancelledError:
            self.journal.events.append(("connect-cancelled", self.name))
            raise
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = True
        self.journal.events.append(("connected", self.name))
        return self

    async def close(self) -> None:
        self.closes += 1
        self.journal.events.append(("close", self.name))
        if self.close_hangs:
            await asyncio.sleep(3600)
        self.connected = False
        if self.close_error is not None:
            raise self.close_error
