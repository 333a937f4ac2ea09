"""The Redis commands the SDK knows, one line each: what they do to data, whether they may be re-sent, their keys.

Every row is ``name: (access, idempotent, first, last, step, unsafe)``:

* ``access``: ``r`` reads, ``w`` writes data (confirmed with WAIT when ``wait_replicas`` is set), ``m`` sends a
  message (PUBLISH: changes no data, never confirmed with WAIT, never re-sent), ``s`` belongs to a subscribed
  connection (SUBSCRIBE & co.: use :meth:`~trading_shared.RedisClient.subscribe`, not :meth:`command`), ``b`` blocks
  (use the client's blocking methods, which widen the read timeout).
* ``idempotent``: may be re-sent after its request may have reached the server (the same state, and a reply that
  means the same, whether it ran once or twice).
* ``first``, ``last``, ``step``: where the keys are among the arguments after the command word(s), as in
  ``COMMAND INFO`` but counted from 0 (``last`` -1: to the end; ``first`` -1: no key; ``first`` -2: the keys follow
  the word ``STREAMS``, their count is half the remaining arguments; ``first`` -3: the argument at index 0 is
  ``numkeys`` and that many keys follow it). In cluster mode the first key routes the call; all keys must share a
  slot.
* ``unsafe``: option words that make an otherwise idempotent call unsafe to re-send (``SET ... NX``: a re-send
  would answer "not set" for a value this very call set; ``GET``: the old value is gone after the first run).

Commands with two words (``XGROUP CREATE``) are listed under both words. A command not in the table is refused by
:meth:`~trading_shared.RedisClient.command`; use :meth:`~trading_shared.RedisClient.run` and say how it behaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

_R, _W, _M, _S, _B = "r", "w", "m", "s", "b"
_ALL, _NONE, _STREAMS, _NUMKEYS = -1, -1, -2, -3
_NX, _GET = frozenset({"NX", "GET"}), frozenset({"GET"})
_INCR = frozenset({"INCR"})
_NO: frozenset[str] = frozenset()

#: name: (access, idempotent, first, last, step, unsafe)
_ROWS: Final[dict[str, tuple[str, bool, int, int, int, frozenset[str]]]] = {
    # -- strings ----------------------------------------------------------------------------------------------------
    "GET": (_R, True, 0, 0, 1, _NO),
    "MGET": (_R, True, 0, _ALL, 1, _NO),
    "STRLEN": (_R, True, 0, 0, 1, _NO),
    "GETRANGE": (_R, True, 0, 0, 1, _NO),
    "SET": (_W, True, 0, 0, 1, _NX),
    "SETEX": (_W, True, 0, 0, 1, _NO),
    "PSETEX": (_W, True, 0, 0, 1, _NO),
    "SETNX": (_W, False, 0, 0, 1, _NO),
    "MSET": (_W, True, 0, _ALL, 2, _NO),
    "MSETNX": (_W, False, 0, _ALL, 2, _NO),
    "GETSET": (_W, False, 0, 0, 1, _NO),
    "GETDEL": (_W, False, 0, 0, 1, _NO),
    "GETEX": (_W, True, 0, 0, 1, _NO),
    "SETRANGE": (_W, True, 0, 0, 1, _NO),
    "APPEND": (_W, False, 0, 0, 1, _NO),
    "INCR": (_W, False, 0, 0, 1, _NO),
    "INCRBY": (_W, False, 0, 0, 1, _NO),
    "INCRBYFLOAT": (_W, False, 0, 0, 1, _NO),
    "DECR": (_W, False, 0, 0, 1, _NO),
    "DECRBY": (_W, False, 0, 0, 1, _NO),
    # -- hashes ------------------------------------------------------------------------------------------------------
    "HGET": (_R, True, 0, 0, 1, _NO),
    "HMGET": (_R, True, 0, 0, 1, _NO),
    "HGETALL": (_R, True, 0, 0, 1, _NO),
    "HLEN": (_R, True, 0, 0, 1, _NO),
    "HEXISTS": (_R, True, 0, 0, 1, _NO),
    "HKEYS": (_R, True, 0, 0, 1, _NO),
    "HVALS": (_R, True, 0, 0, 1, _NO),
    "HSTRLEN": (_R, True, 0, 0, 1, _NO),
    "HSCAN": (_R, True, 0, 0, 1, _NO),
    "HSET": (_W, True, 0, 0, 1, _NO),
    "HMSET": (_W, True, 0, 0, 1, _NO),
    "HSETNX": (_W, False, 0, 0, 1, _NO),
    "HDEL": (_W, True, 0, 0, 1, _NO),
    "HINCRBY": (_W, False, 0, 0, 1, _NO),
    "HINCRBYFLOAT": (_W, False, 0, 0, 1, _NO),
    # -- lists -------------------------------------------------------------------------------------------------------
    "LLEN": (_R, True, 0, 0, 1, _NO),
    "LRANGE": (_R, True, 0, 0, 1, _NO),
    "LINDEX": (_R, True, 0, 0, 1, _NO),
    "LPOS": (_R, True, 0, 0, 1, _NO),
    "LPUSH": (_W, False, 0, 0, 1, _NO),
    "RPUSH": (_W, False, 0, 0, 1, _NO),
    "LPUSHX": (_W, False, 0, 0, 1, _NO),
    "RPUSHX": (_W, False, 0, 0, 1, _NO),
    "LPOP": (_W, False, 0, 0, 1, _NO),
    "RPOP": (_W, False, 0, 0, 1, _NO),
    "LSET": (_W, True, 0, 0, 1, _NO),
    "LTRIM": (_W, True, 0, 0, 1, _NO),
    "LREM": (_W, False, 0, 0, 1, _NO),
    "LINSERT": (_W, False, 0, 0, 1, _NO),
    "LMOVE": (_W, False, 0, 1, 1, _NO),
    "RPOPLPUSH": (_W, False, 0, 1, 1, _NO),
    "BRPOP": (_B, False, 0, -2, 1, _NO),
    "BLPOP": (_B, False, 0, -2, 1, _NO),
    "BLMOVE": (_B, False, 0, 1, 1, _NO),
    # -- sets --------------------------------------------------------------------------------------------------------
    "SMEMBERS": (_R, True, 0, 0, 1, _NO),
    "SISMEMBER": (_R, True, 0, 0, 1, _NO),
    "SMISMEMBER": (_R, True, 0, 0, 1, _NO),
    "SCARD": (_R, True, 0, 0, 1, _NO),
    "SRANDMEMBER": (_R, True, 0, 0, 1, _NO),
    "SSCAN": (_R, True, 0, 0, 1, _NO),
    "SINTER": (_R, True, 0, _ALL, 1, _NO),
    "SUNION": (_R, True, 0, _ALL, 1, _NO),
    "SDIFF": (_R, True, 0, _ALL, 1, _NO),
    "SADD": (_W, True, 0, 0, 1, _NO),
    "SREM": (_W, True, 0, 0, 1, _NO),
    "SPOP": (_W, False, 0, 0, 1, _NO),
    "SMOVE": (_W, True, 0, 1, 1, _NO),
    # -- sorted sets -------------------------------------------------------------------------------------------------
    "ZRANGE": (_R, True, 0, 0, 1, _NO),
    "ZREVRANGE": (_R, True, 0, 0, 1, _NO),
    "ZRANGEBYSCORE": (_R, True, 0, 0, 1, _NO),
    "ZREVRANGEBYSCORE": (_R, True, 0, 0, 1, _NO),
    "ZSCORE": (_R, True, 0, 0, 1, _NO),
    "ZMSCORE": (_R, True, 0, 0, 1, _NO),
    "ZCARD": (_R, True, 0, 0, 1, _NO),
    "ZCOUNT": (_R, True, 0, 0, 1, _NO),
    "ZRANK": (_R, True, 0, 0, 1, _NO),
    "ZREVRANK": (_R, True, 0, 0, 1, _NO),
    "ZSCAN": (_R, True, 0, 0, 1, _NO),
    "ZADD": (_W, True, 0, 0, 1, _INCR),
    "ZINCRBY": (_W, False, 0, 0, 1, _NO),
    "ZREM": (_W, True, 0, 0, 1, _NO),
    "ZREMRANGEBYSCORE": (_W, True, 0, 0, 1, _NO),
    "ZREMRANGEBYRANK": (_W, False, 0, 0, 1, _NO),
    "ZPOPMIN": (_W, False, 0, 0, 1, _NO),
    "ZPOPMAX": (_W, False, 0, 0, 1, _NO),
    # -- keys and TTLs -----------------------------------------------------------------------------------------------
    "EXISTS": (_R, True, 0, _ALL, 1, _NO),
    "TYPE": (_R, True, 0, 0, 1, _NO),
    "TTL": (_R, True, 0, 0, 1, _NO),
    "PTTL": (_R, True, 0, 0, 1, _NO),
    "EXPIRETIME": (_R, True, 0, 0, 1, _NO),
    "SCAN": (_R, True, _NONE, 0, 1, _NO),
    "DEL": (_W, True, 0, _ALL, 1, _NO),
    "UNLINK": (_W, True, 0, _ALL, 1, _NO),
    "EXPIRE": (_W, True, 0, 0, 1, _NO),
    "PEXPIRE": (_W, True, 0, 0, 1, _NO),
    "EXPIREAT": (_W, True, 0, 0, 1, _NO),
    "PEXPIREAT": (_W, True, 0, 0, 1, _NO),
    "PERSIST": (_W, True, 0, 0, 1, _NO),
    "RENAME": (_W, False, 0, 1, 1, _NO),
    "COPY": (_W, False, 0, 1, 1, _NO),
    # -- streams -----------------------------------------------------------------------------------------------------
    "XLEN": (_R, True, 0, 0, 1, _NO),
    "XRANGE": (_R, True, 0, 0, 1, _NO),
    "XREVRANGE": (_R, True, 0, 0, 1, _NO),
    "XPENDING": (_R, True, 0, 0, 1, _NO),
    "XINFO STREAM": (_R, True, 0, 0, 1, _NO),
    "XINFO GROUPS": (_R, True, 0, 0, 1, _NO),
    "XINFO CONSUMERS": (_R, True, 0, 0, 1, _NO),
    "XREAD": (_R, True, _STREAMS, 0, 1, _NO),
    "XADD": (_W, False, 0, 0, 1, _NO),
    "XACK": (_W, True, 0, 0, 1, _NO),
    "XDEL": (_W, True, 0, 0, 1, _NO),
    "XTRIM": (_W, True, 0, 0, 1, _NO),
    "XCLAIM": (_W, True, 0, 0, 1, _NO),
    "XAUTOCLAIM": (_W, True, 0, 0, 1, _NO),
    "XREADGROUP": (_W, True, _STREAMS, 0, 1, _NO),
    "XGROUP CREATE": (_W, True, 0, 0, 1, _NO),
    "XGROUP SETID": (_W, True, 0, 0, 1, _NO),
    "XGROUP DESTROY": (_W, True, 0, 0, 1, _NO),
    "XGROUP DELCONSUMER": (_W, True, 0, 0, 1, _NO),
    "XGROUP CREATECONSUMER": (_W, True, 0, 0, 1, _NO),
    # -- pub/sub -----------------------------------------------------------------------------------------------------
    "PUBLISH": (_M, False, 0, 0, 1, _NO),
    "SPUBLISH": (_M, False, 0, 0, 1, _NO),
    "PUBSUB CHANNELS": (_R, True, _NONE, 0, 1, _NO),
    "PUBSUB NUMSUB": (_R, True, _NONE, 0, 1, _NO),
    "PUBSUB NUMPAT": (_R, True, _NONE, 0, 1, _NO),
    "SUBSCRIBE": (_S, False, _NONE, 0, 1, _NO),
    "PSUBSCRIBE": (_S, False, _NONE, 0, 1, _NO),
    "UNSUBSCRIBE": (_S, False, _NONE, 0, 1, _NO),
    "PUNSUBSCRIBE": (_S, False, _NONE, 0, 1, _NO),
    # -- server and scripts ------------------------------------------------------------------------------------------
    "PING": (_R, True, _NONE, 0, 1, _NO),
    "ECHO": (_R, True, _NONE, 0, 1, _NO),
    "TIME": (_R, True, _NONE, 0, 1, _NO),
    "DBSIZE": (_R, True, _NONE, 0, 1, _NO),
    "EVALSHA": (_W, False, _NUMKEYS, 0, 1, _NO),
    "EVAL": (_W, False, _NUMKEYS, 0, 1, _NO),
}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of the table (see the module docstring)."""

    name: str
    access: str
    idempotent: bool
    first: int
    last: int
    step: int
    unsafe: frozenset[str]

    @property
    def write(self) -> bool:
        """Changes data: confirmed with WAIT when ``wait_replicas`` is set."""
        return self.access == _W

    def keys(self, args: Sequence[Any]) -> list[Any]:
        """The keys among ``args`` (the arguments after the command word or words)."""
        if self.first == _NONE:
            return []
        if self.first == _STREAMS:
            words = [_word(a) for a in args]
            if "STREAMS" not in words:
                return []
            rest = list(args[words.index("STREAMS") + 1 :])
            return rest[: len(rest) // 2]
        if self.first == _NUMKEYS:
            count = int(args[0]) if args else 0
            return list(args[1 : 1 + count])
        last = len(args) - 1 if self.last == _ALL else self.last
        return list(args[self.first : last + 1 : self.step])

    def blocks(self, args: Sequence[Any]) -> bool:
        """Does this call wait on the server (a blocking command, or XREAD/XREADGROUP with BLOCK)?"""
        if self.access == _B:
            return True
        return self.first == _STREAMS and any(_word(a) == "BLOCK" for a in args)

    def idempotent_for(self, args: Sequence[Any]) -> bool:
        """May this call (these arguments) be re-sent after its request may have reached the server?"""
        if not self.idempotent:
            return False
        return not self.unsafe or not any(_word(a) in self.unsafe for a in args)


#: Every command by name (upper case; two-word commands by their two words).
COMMANDS: Final[dict[str, CommandSpec]] = {name: CommandSpec(name, *row) for name, row in _ROWS.items()}

#: Commands that never write: a pipeline of only these is not confirmed with WAIT.
READ_ONLY: Final = frozenset(n.split(" ", 1)[0] for n, s in COMMANDS.items() if s.access == _R)


def _word(arg: Any) -> str:
    if isinstance(arg, bytes):
        return arg.decode(errors="replace").upper()
    return str(arg).upper() if isinstance(arg, str) else ""


def lookup(args: Sequence[Any]) -> tuple[CommandSpec, int]:
    """The spec of the command ``args`` starts with, and how many words its name takes (1 or 2).

    Raises ValueError for a command not in the table.
    """
    if not args:
        raise ValueError("no command given")
    words = _word(args[0]).split()
    if len(words) > 1:  # queued by redis-py as one argument, e.g. "XGROUP CREATE"
        spec = COMMANDS.get(" ".join(words[:2]))
        if spec is not None:
            return spec, 1
    elif len(args) > 1:
        spec = COMMANDS.get(f"{words[0]} {_word(args[1])}" if words else "")
        if spec is not None:
            return spec, 2
    spec = COMMANDS.get(words[0] if words else "")
    if spec is None:
        raise ValueError(f"{str(args[0])[:40]!r} is not in the SDK's command table: use RedisClient.run()")
    return spec, 1


def stack_idempotent(stack: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> bool:
    """True when every queued command may be re-sent (an unknown command counts as not)."""
    for args, _ in stack:
        try:
            spec, words = lookup(args)
        except ValueError:
            return False
        if not spec.idempotent_for(args[words:]):
            return False
    return True
