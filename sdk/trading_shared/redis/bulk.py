"""``xadd_bulk``: chunked, ordered, duplicate-free stream appends with a dead-letter stream for what fails.

Chunks (see :mod:`.streams` for why one chunk = one atomic, idempotent script call) are written one after another
in input order, each through the client's pipeline (breaker, retries, deadline, telemetry) and each holding one
permit of the client's write semaphore, which bounds the bulk chunks in flight across all concurrent calls.

When a chunk still fails after the pipeline's retries (a :class:`~trading_shared.errors.ServiceUnavailableError`),
writing stops (writing later chunks would break the order): the failed chunk is "outcome unknown" if a request may
have reached the server and "not written" otherwise, and every later message is "not written". All of them are then
offered to ``dlq:<stream>`` (same script, so also duplicate-free) with ``dlq.*`` metadata fields; dead-lettering
stops at its first failure. The caller gets a :class:`~trading_shared.errors.BulkWriteError` listing the exact input
indexes of each group.

A caller error the server answered before the chunk added anything (WRONGTYPE: the key is not a stream; OOM; NOPERM)
is raised unchanged, as by every other call, and nothing is dead-lettered. Any other error reply of the script
(a Lua runtime error) may come after some of the chunk's XADDs, which a script does not roll back: the chunk is
"outcome unknown". Messages are validated first (:func:`~.streams.pack_message`), so this is not expected.

Cancelling the call stops it where it is: earlier chunks stay written, the chunk in flight is applied whole or not
at all (re-running the same messages would append them again: new tokens), and CancelledError propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.exceptions as rex

from ..errors import BulkWriteError, ServiceUnavailableError
from ..telemetry.client import ClientTelemetry
from . import streams
from .classify import error_code
from .pool import Commands

#: The client's call: ``(operation, key to route by, fn)``.
Call = Callable[[str, bytes, Callable[[Commands], Awaitable[Any]]], Awaitable[Any]]

OPERATION = "PIPELINE XADD"
#: Upper bound on a chunk: a script blocks the server while it runs (10,000 small XADDs take a few ms).
MAX_CHUNK = 10_000
_NOT_WRITTEN = b"not_written"
_UNKNOWN = b"outcome_unknown"
#: Error codes of script replies that prove the chunk added nothing: the server refused the script at its start
#: (OOM) or its first XADD failed (every XADD of a chunk names the same stream, so the first fails like any other).
NOTHING_ADDED = frozenset({"WRONGTYPE", "OOM", "NOPERM", "NOSCRIPT"})


class BulkAppender:
    """One ``xadd_bulk`` call."""

    def __init__(
        self,
        call: Call,
        semaphore: asyncio.Semaphore,
        telemetry: ClientTelemetry,
        *,
        stream: str | bytes,
        messages: Sequence[streams.Fields],
        maxlen: int | None,
        approximate: bool,
        chunk_size: int,
        dead_letter: bool,
        dedupe_ttl: int,
    ) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK}")  # one chunk = one atomic script run
        if dedupe_ttl < 1:
            raise ValueError("dedupe_ttl must be >= 1 second")
        streams.check_maxlen(maxlen)
        self._call = call
        self._semaphore = semaphore
        self._telemetry = telemetry
        self._stream = streams.as_key(stream)
        self._messages = messages
        self._packed = [streams.pack_message(m, i) for i, m in enumerate(messages)]  # validates all before I/O
        self._head = [dedupe_ttl, "" if maxlen is None else maxlen, "1" if approximate else "0"]
        self._chunk = chunk_size
        self._dead_letter = dead_letter
        self._ttl = dedupe_ttl

    async def run(self) -> int:
        """Write every message; returns how many were added. Raises BulkWriteError when some were not."""
        added = 0
        total = len(self._packed)
        for start in range(0, total, self._chunk):
            end = min(start + self._chunk, total)
            token = streams.new_token()
            try:
                added += int(await self._write(self._stream, self._packed[start:end], self._head, token))
            except ServiceUnavailableError as exc:
                await self._fail(exc, start, end, token, added, exc.may_have_been_applied)
            except rex.ResponseError as exc:
                if error_code(exc) in NOTHING_ADDED:
                    raise  # a caller error: nothing of this chunk was added
                await self._fail(exc, start, end, token, added, True)  # the script failed part-way
        return added

    async def _write(self, stream: bytes, packed: Sequence[tuple[bytes, int]], head: list[Any], token: bytes) -> Any:
        body = b"".join(blob for blob, _ in packed)
        body_args = sum(n for _, n in packed)
        keys = [stream, streams.dedupe_key(stream, token)]
        async with self._semaphore:
            return await self._call(
                OPERATION, stream, lambda r: streams.BULK_XADD.run_packed(r, keys, head, body, body_args)
            )

    async def _fail(self, exc: BaseException, start: int, end: int, token: bytes, added: int, unknown: bool) -> None:
        total = len(self._packed)
        failed = range(start, end)
        outcome_unknown = list(failed) if unknown else []
        not_written = ([] if unknown else list(failed)) + list(range(end, total))
        error_type = type(exc.__cause__ if isinstance(exc, ServiceUnavailableError) and exc.__cause__ else exc).__name__
        dead: list[int] = []
        maybe_dead = 0
        if self._dead_letter:
            dead, maybe_dead = await self._dead_letter_all(start, end, total, token, unknown, error_type)
        attempts = exc.attempts if isinstance(exc, ServiceUnavailableError) else 1
        maybe = f" (and {maybe_dead} more of unknown dead-letter outcome)" if maybe_dead else ""
        raise BulkWriteError(
            f"xadd_bulk added {added} of {total} messages: {len(not_written)} not written, "
            f"{len(outcome_unknown)} with unknown outcome, {len(dead)} dead-lettered{maybe} ({error_type})",
            operation=OPERATION,
            attempts=attempts,
            not_written=not_written,
            outcome_unknown=outcome_unknown,
            dead_lettered=dead,
        ) from exc

    async def _dead_letter_all(
        self, start: int, end: int, total: int, token: bytes, unknown: bool, error_type: str
    ) -> tuple[list[int], int]:
        """Dead-letter the failed messages; returns the indexes certainly dead-lettered and how many more may be
        (a dead-letter chunk whose write failed after it may have been applied)."""
        dlq = streams.DLQ_PREFIX + self._stream
        head: list[Any] = [self._ttl, "", "0"]
        dead: list[int] = []
        for lo in range(start, total, self._chunk):
            hi = min(lo + self._chunk, total)
            packed = []
            for i in range(lo, hi):
                outcome = _UNKNOWN if unknown and i < end else _NOT_WRITTEN
                origin = token if i < end else b""  # the failed chunk's dedupe token: proves whether it landed
                fields = streams.dead_letter_fields(self._stream, i, outcome, error_type, origin, self._messages[i])
                packed.append(streams.pack_message(fields, i, streams.MAX_FIELDS + streams.DLQ_META_FIELDS))
            try:
                await self._write(dlq, packed, head, streams.new_token())
            except ServiceUnavailableError as exc:  # the server does not take it either: the error names them all
                return dead, (hi - lo if exc.may_have_been_applied else 0)
            except rex.ResponseError as exc:
                return dead, (0 if error_code(exc) in NOTHING_ADDED else hi - lo)
            dead.extend(range(lo, hi))
            self._telemetry.dead_lettered(hi - lo)
        return dead, 0
