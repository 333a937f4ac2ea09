"""Low-cardinality names for SQL statements: ``db.query.summary``, ``db.operation.name``, ``db.collection.name``.

Following the OpenTelemetry database conventions, a statement is summarised as its operations and their targets in
the order they appear (``SELECT instruments``, ``INSERT ohlc SELECT _ts_stage``, ``SELECT bulk_upsert_instruments``),
and its text is kept with every literal replaced by ``?`` and every comment removed (asyncpg sends values separately
as ``$1``, ``$2``..., which stay; a literal written into the text could still be a value, so it never survives, and a
comment can carry anything, e.g. a sqlcommenter trace id). A function called as ``SELECT fn(...)`` with no table,
or a procedure after ``CALL``, is the statement's ``db.stored_procedure.name`` and its ``db.operation.name``. A text of
several statements has no single operation (``operation`` is None). Parsing is a small tokenizer, not a SQL
parser: comments and literals are skipped, identifiers (quoted or not, schema-qualified) are read after ``FROM``,
``JOIN``, ``INTO``, ``UPDATE``, ``TABLE``, ``COPY``, ``CALL``, ``FUNCTION``, ``PROCEDURE`` and ``VIEW``, and a
function called right after ``SELECT`` counts as its target.

:class:`QuerySummaries` computes each distinct statement text once (a bounded dict: past ``max_entries`` new texts
are summarised on every call instead of cached, so memory stays bounded), and :class:`CardinalityCap` keeps the
number of distinct summaries a metric attribute may take bounded (past the cap: :data:`OVERFLOW`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: Longest summary kept (the conventions suggest keeping it short); longer ones are cut at a word.
MAX_SUMMARY = 255
#: The attribute value used once a client has seen more distinct summaries than its cap.
OVERFLOW: Final = "_OTHER"

_OPERATIONS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "CALL", "CREATE", "DROP", "ALTER", "TRUNCATE",
     "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "LISTEN", "NOTIFY", "SET", "SHOW", "VACUUM", "ANALYZE",
     "EXPLAIN", "LOCK", "GRANT", "REVOKE", "REFRESH", "PREPARE", "EXECUTE", "DISCARD", "RESET"}
)  # fmt: skip
_TARGET_AFTER = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "COPY", "CALL", "FUNCTION", "PROCEDURE", "VIEW"})
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "SELECT"})
#: Words after which an operation keyword is not an operation (ON CONFLICT DO UPDATE, FOR UPDATE, ON COMMIT DROP).
_NOT_BEFORE_OPERATION = frozenset({"DO", "FOR", "KEY", "NO", "ON", "ONLY"})
#: Words before "(" that open a subquery or a list, not a function's arguments.
_NOT_FUNCTIONS = frozenset({"IN", "EXISTS", "AS", "FROM", "JOIN", "VALUES", "ANY", "ALL", "SOME", "ARRAY", "USING"})
_NOT_TARGETS = frozenset({"STDIN", "STDOUT", "LATERAL", "UNNEST"})
_SKIP_BEFORE_TARGET = frozenset({"ONLY", "LATERAL", "IF", "NOT", "EXISTS", "TEMP", "TEMPORARY", "UNLOGGED"})

_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>[EeBbXxNn]?'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
  | (?P<param>\$\d+)
  | (?P<number>(?<![\w.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<quoted>"(?:[^"]|"")+")
  | (?P<word>[A-Za-z_][\w$]*)
  | (?P<dot>\.)
  | (?P<open>\()
  | (?P<other>[^\s\w"'$.(]+)
  """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class QueryNames:
    """What the conventions name a statement by."""

    summary: str
    #: The SQL operation (``SELECT``, ``INSERT``...), or the function/procedure called; None for several statements.
    operation: str | None
    #: The one table the statement touches, or None (none, several, or several statements).
    collection: str | None
    text: str
    #: The function of ``SELECT fn(...)`` (no table) or the procedure of ``CALL``, else None.
    procedure: str | None = None
    #: The statement's first SQL keyword (``SELECT`` even when ``operation`` names a function), or None.
    keyword: str | None = None
    #: How many statements the text holds (``;``-separated).
    statements: int = 1


def summarise(statement: str) -> QueryNames:
    """Summary, operation, single collection (if exactly one) and the literal- and comment-free text."""
    text: list[str] = []
    tokens: list[tuple[str, str]] = []  # (kind, value) without comments and literals
    position = 0
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup or "other"
        text.append(statement[position : match.start()])
        position = match.end()
        if kind in ("string", "dollar", "number"):
            text.append("?")
            tokens.append(("literal", "?"))
            continue
        if kind == "comment":
            continue
        text.append(match.group())
        tokens.append((kind, match.group()))
    text.append(statement[position:])
    pieces: list[str] = []
    operations: list[str] = []
    targets: list[str] = []
    functions: list[str] = []  # SELECT fn(...): the target when the statement names no table
    parens: list[bool] = []  # per open "(": True for a function's arguments (EXTRACT(x FROM y) names no table)
    starts_with = tokens[0][1].upper() if tokens and tokens[0][0] == "word" else ""
    at_start = True
    i, count = 0, len(tokens)
    statements = 1 + sum(1 for k, v in tokens[:-1] if k == "other" and ";" in v)
    while i < count:
        kind, value = tokens[i]
        previous = tokens[i - 1] if i else ("", "")
        upper = value.upper() if kind == "word" else ""
        in_function = bool(parens) and parens[-1]
        if kind == "open":
            parens.append(previous[0] in ("word", "quoted") and previous[1].upper() not in _NOT_FUNCTIONS)
        elif kind == "other" and ")" in value:
            for _ in range(value.count(")")):
                if parens:
                    parens.pop()
        is_operation = (
            upper in _OPERATIONS
            and (upper == "SELECT" or at_start or (upper in _DML and previous[1] == ")" and starts_with == "WITH"))
            and previous[1].upper() not in _NOT_BEFORE_OPERATION
        )
        at_start = kind == "open" or (kind == "other" and ";" in value)
        if is_operation:
            operations.append(upper)
            pieces.append(upper)
            if upper == "SELECT":
                name, after = _name_at(tokens, i + 1)
                if name is not None and after < count and tokens[after][0] == "open":
                    functions.append(name)
        if (is_operation and upper in _TARGET_AFTER) or (upper in _TARGET_AFTER - _OPERATIONS and not in_function):
            j = i + 1
            while j < count and tokens[j][0] == "word" and tokens[j][1].upper() in _SKIP_BEFORE_TARGET:
                j += 1
            name, after = _name_at(tokens, j)
            if name is not None and name.upper() not in _OPERATIONS and name.upper() not in _NOT_TARGETS:
                pieces.append(name)
                targets.append(name)
                i = after
                continue
        i += 1
    keyword = operations[0] if operations else None
    procedure = None
    if not targets and functions:
        pieces.insert(pieces.index("SELECT") + 1, functions[0])
        procedure = functions[0]
    elif keyword == "CALL" and targets:
        procedure, targets = targets[0], []
    summary = " ".join(pieces) or "UNKNOWN"
    if len(summary) > MAX_SUMMARY:
        summary = summary[:MAX_SUMMARY].rsplit(" ", 1)[0]
    single = statements == 1
    return QueryNames(
        summary=summary,
        operation=(procedure or keyword) if single else None,
        collection=targets[0] if single and len(set(targets)) == 1 else None,
        text="".join(text).strip(),
        procedure=procedure if single else None,
        keyword=keyword if single else None,
        statements=statements,
    )


def _name_at(tokens: list[tuple[str, str]], i: int) -> tuple[str | None, int]:
    """The (possibly schema-qualified) identifier starting at ``tokens[i]``, and the index after it."""
    parts: list[str] = []
    while i < len(tokens) and tokens[i][0] in ("word", "quoted"):
        kind, value = tokens[i]
        parts.append(value[1:-1].replace('""', '"') if kind == "quoted" else value)
        i += 1
        if i < len(tokens) and tokens[i][0] == "dot":
            i += 1
            continue
        break
    return (".".join(parts) if parts else None), i


class QuerySummaries:
    """:func:`summarise` computed once per distinct statement text, for at most ``max_entries`` texts holding at
    most ``max_chars`` characters in all (so memory stays bounded however long the statements are); texts past
    either bound are summarised on every call."""

    def __init__(self, max_entries: int = 1000, max_chars: int = 1_000_000) -> None:
        self._max = max_entries
        self._chars_left = max_chars
        self._known: dict[str, QueryNames] = {}

    def __call__(self, statement: str) -> QueryNames:
        """The names of ``statement`` (a dictionary look-up once it has been seen)."""
        found = self._known.get(statement)
        if found is None:
            found = summarise(statement)
            if len(self._known) < self._max and len(statement) <= self._chars_left:
                self._chars_left -= len(statement)
                self._known[statement] = found
        return found

    def __len__(self) -> int:
        return len(self._known)


class CardinalityCap:
    """Lets at most ``limit`` distinct values through; later new values become :data:`OVERFLOW`."""

    def __init__(self, limit: int = 200) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        #: How many values were replaced by :data:`OVERFLOW`.
        self.overflowed = 0

    def __call__(self, value: str) -> str:
        """``value``, or :data:`OVERFLOW` when it is new and the cap is reached."""
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        self.overflowed += 1
        return OVERFLOW
