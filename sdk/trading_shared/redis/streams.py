"""Streams: bulk XADD without duplicates, explicit-ID XADD that is safe to re-send, dead-lettering, entry types.

Bulk XADD, the no-duplicate design
----------------------------------
Each chunk of messages is ONE call of a Lua script that first checks a dedupe key made of the stream name and a
random per-chunk token, and if it is absent runs the chunk's XADDs and sets the key (with a TTL) in the same atomic
step. A script runs atomically, so a chunk is applied entirely or not at all (Redis does not roll a script back
after an error in its middle: messages are validated before any I/O, see :func:`pack_message`, so that no XADD of
a chunk fails after an earlier one; should one still, the chunk is reported as of unknown outcome), and a chunk
re-sent after its reply was lost finds its key and returns the stored count without adding anything. Hence the
chunk call is idempotent by construction and the pipeline may re-send it after any connection failure.

Why not explicit entry IDs (re-sent entries rejected as "equal or smaller than the top item")? That needs exactly
one writer per stream that owns the ID sequence and a clock that never steps back, and the rejection is only
recognisable by its message text. The script works with any number of writers, keeps server-assigned IDs, and costs
one small key per chunk (not per message) for ``dedupe_ttl`` seconds.

Limits: re-sends are recognised for ``dedupe_ttl`` seconds (default 600, far beyond a call's retry deadline); the
script needs Redis >= 7.0 (``#!lua`` shebang: refused at its start when the server is out of memory, never half
run); chunks of one call are written one after another so the messages land in the order given, contiguous per
chunk (other writers' entries may fall between chunks); a chunk's keys are the stream and its dedupe key, which
always share a hash slot (see :func:`dedupe_key`), so a chunk is one single-slot script call in Redis Cluster too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.exceptions as rex

from .pool import Commands, encode, pack

#: A field value: bytes (stored as is), str (UTF-8), int or float.
FieldValue = bytes | str | int | float
#: A stream message: field -> value. A union of mappings because ``Mapping`` is invariant in its key type: so that
#: ``dict[str, str]``, ``dict[bytes, bytes]`` and ``dict[str | bytes, ...]`` are all accepted.
Fields = Mapping[str, FieldValue] | Mapping[bytes, FieldValue] | Mapping[str | bytes, FieldValue]

DLQ_PREFIX = b"dlq:"
DEFAULT_DEDUPE_TTL = 600
#: The ``dlq.*`` metadata fields a dead-lettered message carries on top of its own.
DLQ_META_FIELDS = 5
#: Most fields one message may have in a bulk append or an explicit-ID XADD: the scripts pass a message's fields to
#: XADD with Lua's ``unpack``, which fails above ~8,000 values (an error in the middle of a chunk, after earlier
#: messages were added). Room is left for the XADD options and the dead-letter metadata.
MAX_FIELDS = 3_900
#: Largest field name or value (bytes): the server's default ``proto-max-bulk-len`` (512 MiB).
MAX_ITEM_BYTES = 512 * 1024 * 1024


#: The field an appended entry carries the producer's W3C trace context in (docs/stream-telemetry.md). Reserved:
#: entries read through the SDK never show it in their fields.
TRACEPARENT = b"traceparent"


class _Entry(NamedTuple):
    id: bytes
    fields: dict[bytes, bytes]


class StreamEntry(_Entry):
    """One stream entry as read back: its ID and fields (bytes; empty when the entry was deleted while pending).

    A 2-tuple as before (``entry_id, fields = entry``). :attr:`traceparent` is the producer's trace context, taken
    out of the fields on read (None when the entry carried none).
    """

    traceparent: bytes | None = None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What XAUTOCLAIM returned: the cursor for the next call, the claimed entries, IDs deleted while pending."""

    next_id: bytes
    messages: list[StreamEntry]
    deleted_ids: list[bytes]

    def __getitem__(self, index: int) -> Any:
        """Index like the replaced client's ``[next_id, entries, deleted_ids]`` list."""
        return (self.next_id, self.messages, self.deleted_ids)[index]

    def __len__(self) -> int:
        return 3

    def __iter__(self) -> Iterator[Any]:
        """Unpack like the old list: ``next_id, entries, deleted = result``."""
        return iter((self.next_id, self.messages, self.deleted_ids))


class LuaScript:
    """A script run with EVALSHA, falling back to EVAL when the server does not have it cached (NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, commands: Commands, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run the script. NOSCRIPT means it did not run, so sending it again in full is safe."""
        try:
            return await commands.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await commands.execute_command("EVAL", self.source, len(keys), *keys, *args)

    async def run_packed(
        self, commands: Commands, keys: Sequence[bytes], args: Sequence[Any], body: bytes, body_args: int
    ) -> Any:
        """Like :meth:`run`, with ``body`` (``body_args`` arguments, already packed by :func:`pack`) after ``args``."""
        head = [len(keys), *keys, *args]
        try:
            return await commands.execute_packed("EVALSHA", [self.sha, *head], body, body_args)
        except rex.NoScriptError:
            return await commands.execute_packed("EVAL", [self.source, *head], body, body_args)


#: KEYS: stream, dedupe key. ARGV: ttl, maxlen ('' for none), '1' for approximate trimming, then per message
#: the number of field/value items followed by them. Returns how many entries the chunk added.
BULK_XADD = LuaScript(
    """#!lua
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local head = {KEYS[1]}
if ARGV[2] ~= '' then
  head[#head + 1] = 'MAXLEN'
  if ARGV[3] == '1' then head[#head + 1] = '~' end
  head[#head + 1] = ARGV[2]
end
head[#head + 1] = '*'
local width = #head
local added = 0
local i = 4
local argc = #ARGV
while i <= argc do
  local items = tonumber(ARGV[i])
  local cmd = {}
  for h = 1, width do cmd[h] = head[h] end
  for j = 1, items do cmd[width + j] = ARGV[i + j] end
  redis.call('XADD', unpack(cmd))
  added = added + 1
  i = i + items + 1
end
redis.call('SET', KEYS[2], added, 'EX', tonumber(ARGV[1]))
return added
"""
)

#: KEYS: stream. ARGV: the entry ID, then XADD's arguments after the key. Adds the entry unless it exists already.
XADD_IF_ABSENT = LuaScript(
    """#!lua
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found > 0 then return ARGV[1] end
return redis.call('XADD', KEYS[1], unpack(ARGV, 2))
"""
)


def as_key(name: str | bytes) -> bytes:
    """A key name as bytes (str is UTF-8 encoded)."""
    return name if isinstance(name, bytes) else name.encode()


#: KEYS: dead-letter stream, dedupe key (see :func:`dedupe_key`). ARGV: ttl, then the entry's fields and values.
#: Copies the entry once: a re-send (lost reply, or the same entry dead-lettered again after a redelivery) finds the
#: dedupe key and returns the ID of the first copy. Returns ``{id, 1 if this call added it else 0}``.
DEAD_LETTER = LuaScript(
    """#!lua
local done = redis.call('GET', KEYS[2])
if done then return {done, 0} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1]))
return {id, 1}
"""
)
#: How long a consumer-side dead-letter copy is remembered (a redelivered entry is dead-lettered again).
DEAD_LETTER_DEDUPE_TTL = 7 * 24 * 3600


def dedupe_key(stream: bytes, token: bytes, prefix: bytes = b"ts:xadd:") -> bytes:
    """The dedupe key of one chunk, in the stream's hash slot: ``ts:xadd:{<stream>}:<token>``, or, when the
    stream name has a hash tag of its own, ``ts:xadd:{<tag>}:<stream>:<token>`` (Redis Cluster hashes only the
    first ``{...}`` of a key, so ``{<stream>}`` would not land in the stream's slot)."""
    start = stream.find(b"{")
    if start > -1:
        end = stream.find(b"}", start + 1)
        if end > start + 1:
            return prefix + b"{" + stream[start + 1 : end] + b"}:" + stream + b":" + token
    return prefix + b"{" + stream + b"}:" + token


def new_token() -> bytes:
    """A random chunk token (128 bits, hex)."""
    return os.urandom(16).hex().encode()


def items(fields: Fields, index: int) -> list[bytes]:
    """``[f1, v1, f2, v2, ...]`` of one message, encoded; validates it before any I/O (ValueError / TypeError)."""
    if not fields:
        raise ValueError(f"message {index} has no fields (XADD needs at least one)")
    out: list[bytes] = []
    for field, value in fields.items():
        if not isinstance(field, str | bytes):
            raise TypeError(f"message {index}: field names must be str or bytes")
        if isinstance(value, bool) or not isinstance(value, bytes | str | int | float):
            raise TypeError(f"message {index}: values must be bytes, str, int or float")
        out.append(encode(field))
        out.append(encode(value))
    return out


def check_field_count(fields: Fields, index: int, limit: int = MAX_FIELDS) -> None:
    """Reject a message with more fields than a script can pass to XADD (ValueError, before any I/O)."""
    if len(fields) > limit:
        raise ValueError(
            f"message {index} has {len(fields)} fields: at most {limit} (MAX_FIELDS, the scripts' Lua unpack limit)"
        )


def pack_message(fields: Fields, index: int, limit: int = MAX_FIELDS) -> tuple[bytes, int]:
    """One message as the bulk script reads it: RESP of ``[n, f1, v1, ...]`` and its argument count.

    Validates it first (ValueError naming the limit and ``index``): at most ``limit`` fields, none over
    :data:`MAX_ITEM_BYTES`. redis-py packs every argument of every command in Python, which is most of a bulk
    append's client time; each message is packed here once, and a chunk is then one join of its messages.
    """
    check_field_count(fields, index, limit)
    encoded = items(fields, index)
    if any(len(item) > MAX_ITEM_BYTES for item in encoded):
        raise ValueError(f"message {index} has a field or value over {MAX_ITEM_BYTES} bytes (MAX_ITEM_BYTES)")
    return pack([b"%d" % len(encoded), *encoded]), len(encoded) + 1


def xadd_args(fields: Fields, entry_id: str | bytes, maxlen: int | None, approximate: bool) -> list[Any]:
    """XADD's arguments after the key."""
    args: list[Any] = []
    if maxlen is not None:
        args += ["MAXLEN", "~", maxlen] if approximate else ["MAXLEN", maxlen]
    args.append(entry_id)
    args += items(fields, 0)
    return args


def is_explicit_id(entry_id: str | bytes) -> bool:
    """Whether ``entry_id`` is a complete ``<ms>-<seq>`` ID (re-sending it cannot add a second entry)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, sep, seq = text.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


def check_maxlen(maxlen: int | None) -> None:
    """Reject a negative MAXLEN before any I/O."""
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0):
        raise ValueError("maxlen must be a non-negative int or None")


def entries(raw: Any) -> list[StreamEntry]:
    """Convert redis-py's parsed entry list (``[(id, {field: value} | None), ...]``), moving the ``traceparent``
    field out of the fields into :attr:`StreamEntry.traceparent`."""
    out: list[StreamEntry] = []
    for entry_id, fields in raw or ():
        if entry_id is not None:
            own = dict(fields) if fields else {}
            entry = StreamEntry(entry_id, own)
            context = own.pop(TRACEPARENT, None)
            if context is not None:
                entry.traceparent = context
            out.append(entry)
    return out


def strip_traceparent(reply: Any) -> Any:
    """Remove the ``traceparent`` field from every entry of a multi-stream XREADGROUP reply (redis-py's
    ``[[stream, [(id, fields), ...]], ...]``), in place; returns ``reply``."""
    for _, raw in reply or ():
        for _, fields in raw or ():
            if fields:
                fields.pop(TRACEPARENT, None)
    return reply


def entry_time_ms(entry_id: str | bytes) -> int | None:
    """The append time (Unix ms) a stream entry ID carries, or None when it is not a ``<ms>-<seq>`` ID."""
    text = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
    ms = text.partition(b"-")[0]
    return int(ms) if ms.isdigit() else None


def consumer_dead_letter_fields(stream: bytes, group: bytes, entry_id: bytes, reason: str, fields: Fields) -> Fields:
    """A consumed entry as dead-lettered: ``dlq.*`` metadata first, then the entry's own fields (a field of the
    entry named like the metadata does not replace it)."""
    meta: dict[str | bytes, bytes | str | int | float] = {
        b"dlq.stream": stream,
        b"dlq.group": group,
        b"dlq.id": entry_id,
        b"dlq.error": reason,
    }
    for name, value in fields.items():
        meta.setdefault(name if isinstance(name, bytes) else name.encode(), value)
    return meta


def dead_letter_fields(stream: bytes, index: int, outcome: bytes, error: str, token: bytes, fields: Fields) -> Fields:
    """A dead-lettered message: ``dlq.*`` metadata first, then the message's own fields."""
    meta: dict[str | bytes, bytes | str | int | float] = {
        b"dlq.stream": stream,
        b"dlq.index": index,
        b"dlq.outcome": outcome,
        b"dlq.error": error,
        b"dlq.token": token,
    }
    meta.update(fields.items())
    return meta
