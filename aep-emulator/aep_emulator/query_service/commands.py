"""Classify one SQL statement a Query Service client sends: a query, a session command, or refused.

:func:`classify` turns the text into a small typed value (:class:`Query`, :class:`SetVar`,
:class:`Declare`, ...) that :class:`~aep_emulator.query_service.session.Session` then executes;
nothing here touches session state, so the grammar can be read (and tested) on its own.

sqlglot's PostgreSQL parser does the classification: the node type says what the statement is
(``exp.Query`` / ``exp.Subquery``, ``exp.Transaction``, ``exp.Commit``, ``exp.Rollback``,
``exp.Set``, ``exp.Create``, ...). Three kinds of statement need help, each handled where noted:

* PostgreSQL commands sqlglot has no grammar for and hands back as ``exp.Command`` (its keyword
  plus the rest as text): ``SHOW``, ``RESET``, ``DECLARE``, ``FETCH``, ``PREPARE``, ``EXECUTE``,
  ``EXPLAIN``, ``SET TIME ZONE`` and multi-value ``SET``. The rest is read by the small patterns
  below, which follow PostgreSQL's synopsis for each command
  (https://www.postgresql.org/docs/current/sql-commands.html).
* Commands sqlglot silently *misreads* (as a column with an alias, e.g. ``SAVEPOINT sp1`` becomes
  ``SAVEPOINT AS sp1``) or cannot parse: ``START TRANSACTION``, ``ABORT``, ``SAVEPOINT``,
  ``RELEASE``, ``DISCARD``, ``MOVE``, ``CLOSE``, ``DEALLOCATE``. Their leading keyword is checked
  before sqlglot is asked (:data:`_NOT_IN_SQLGLOT`).
* Queries are Query Service SQL (Spark dialect: backticks, ``LATERAL VIEW``), which the PostgreSQL
  parser may reject; the translator reads them with its own dialect. So a statement sqlglot cannot
  parse falls back to its leading keyword, exactly as the emulator classified statements before
  it used sqlglot here: a query keyword makes it a query, a known command a refusal (0A000),
  anything else a syntax error (42601).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from aep_emulator.query_service import errors as err
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.translate import code_only, leading_words, strip_comments

log = logging.getLogger(__name__)


class _CommandFallbackFilter(logging.Filter):
    """sqlglot warns each time it hands a statement back as ``exp.Command``; for the session
    commands above that is the expected path, not news worth a log line per ``FETCH``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_CommandFallbackFilter())


# --- the classified statements ----------------------------------------------------------------


@dataclass(frozen=True)
class Empty:
    """Only whitespace and comments."""


@dataclass(frozen=True)
class Query:
    """A query, translated and run on DuckDB; ``catalog`` for look-ups of PostgreSQL's catalogs
    (psycopg's hstore probe, pg_cursors, ...), answered with no rows."""

    catalog: bool = False


@dataclass(frozen=True)
class Begin:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Rollback:
    savepoint: str | None = None  # ROLLBACK TO SAVEPOINT name


@dataclass(frozen=True)
class Savepoint:
    name: str


@dataclass(frozen=True)
class Release:
    name: str


@dataclass(frozen=True)
class SetVar:
    name: str
    value: str | None  # None: SET name TO DEFAULT
    local: bool = False


@dataclass(frozen=True)
class SetIgnored:
    """SET TRANSACTION ..., SET SESSION CHARACTERISTICS ...: accepted, nothing to model."""


@dataclass(frozen=True)
class Reset:
    target: str  # a lower-cased parameter name, or "all"


@dataclass(frozen=True)
class Show:
    target: str  # "tables", "all" or a parameter name


@dataclass(frozen=True)
class Discard:
    pass


@dataclass(frozen=True)
class Declare:
    name: str
    query: str
    binary: bool
    holdable: bool


@dataclass(frozen=True)
class Fetch:
    move: bool  # MOVE: position only, no rows
    direction: str  # upper-case, single-spaced: NEXT, ALL, FORWARD 5, ABSOLUTE 3, ...
    name: str


@dataclass(frozen=True)
class Close:
    target: str  # a cursor name, or "ALL" (any case)


@dataclass(frozen=True)
class Prepare:
    name: str
    type_names: tuple[str, ...]
    body: str


@dataclass(frozen=True)
class Execute:
    name: str
    args: str | None  # the argument expressions, evaluated by the session


@dataclass(frozen=True)
class Deallocate:
    target: str


@dataclass(frozen=True)
class Explain:
    query: str


Command = (
    Empty
    | Query
    | Begin
    | Commit
    | Rollback
    | Savepoint
    | Release
    | SetVar
    | SetIgnored
    | Reset
    | Show
    | Discard
    | Declare
    | Fetch
    | Close
    | Prepare
    | Execute
    | Deallocate
    | Explain
)

# Commands that run in a failed transaction (PostgreSQL accepts only these there).
TRANSACTION_CONTROL = (Commit, Rollback)

# --- the grammar sqlglot leaves to us ---------------------------------------------------------

_NAME = r"\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*"
_DECLARE_RE = re.compile(
    rf"^(?P<name>{_NAME})\s+(?P<opts>(?:(?:BINARY|ASENSITIVE|INSENSITIVE|NO\s+SCROLL|SCROLL)\s+)*)"
    r"CURSOR\s+(?:(?P<hold>WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(?P<query>.*)$",
    re.I | re.S,
)
_FETCH_RE = re.compile(
    r"^(?:(?P<dir>NEXT|PRIOR|FIRST|LAST|ALL|FORWARD\s+ALL|BACKWARD\s+ALL|FORWARD|BACKWARD"
    r"|ABSOLUTE\s+[-+]?\d+|RELATIVE\s+[-+]?\d+|FORWARD\s+[-+]?\d+|BACKWARD\s+[-+]?\d+|[-+]?\d+)\s+)?"
    rf"(?:(?:FROM|IN)\s+)?(?P<name>{_NAME})\s*$",
    re.I | re.S,
)
_SET_RE = re.compile(
    r"^(?:(?P<scope>SESSION|LOCAL)\s+)?(?P<name>[A-Za-z_][\w.]*)\s*(?:TO|=)\s*(?P<value>.*)$", re.I | re.S
)
_SET_TZ_RE = re.compile(r"^(?:(?:SESSION|LOCAL)\s+)?TIME\s+ZONE\s+(?P<value>.*)$", re.I | re.S)
_SET_IGNORED_RE = re.compile(r"^(SESSION\s+CHARACTERISTICS|TRANSACTION)\b", re.I)
_ROLLBACK_TO_RE = re.compile(
    r"^ROLLBACK(?:\s+(?:WORK|TRANSACTION))?\s+TO\s+(?:SAVEPOINT\s+)?(?P<name>\"(?:[^\"]|\"\")+\"|\w+)\s*$",
    re.I,
)
_SAVEPOINT_RE = re.compile(
    r"^(?:SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?)\s+(?P<name>\"(?:[^\"]|\"\")+\"|\w+)\s*$", re.I
)
_PREPARE_RE = re.compile(
    r"^(?P<name>\"(?:[^\"]|\"\")+\"|\w+)\s*(?:\((?P<types>[^)]*)\))?\s+AS\s+(?P<body>.*)$", re.I | re.S
)
_EXECUTE_RE = re.compile(r"^(?P<name>\"(?:[^\"]|\"\")+\"|\w+)\s*(?:\((?P<args>.*)\))?\s*$", re.I | re.S)
_EXPLAIN_OPTIONS_RE = re.compile(r"^(ANALYZE\s+)?(VERBOSE\s+)?", re.I)
# FROM/JOIN over PostgreSQL's catalogs, for queries sqlglot cannot parse (calls such as
# pg_catalog.version() are not catalog reads: the translator answers them).
_CATALOG_RE = re.compile(
    r"\b(from|join)\s+(pg_catalog\s*\.\s*\w+|information_schema\s*\.\s*\w+|pg_\w+)", re.I
)
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Commands sqlglot hands back as ``exp.Command``; :func:`_command` reads their text.
_TEXT_COMMANDS = frozenset({"SET", "RESET", "SHOW", "DECLARE", "FETCH", "PREPARE", "EXECUTE", "EXPLAIN"})
_QUERY_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "FROM", "TABLE"})
# Leading keywords sqlglot's PostgreSQL dialect misreads (as ``<keyword> AS <alias>``) or rejects.
_NOT_IN_SQLGLOT = frozenset(
    {"START", "ABORT", "SAVEPOINT", "RELEASE", "DISCARD", "MOVE", "CLOSE", "DEALLOCATE"}
)
# Node types of statements PostgreSQL or Query Service know, which the emulator does not model.
_UNSUPPORTED_NODES: tuple[type[exp.Expression], ...] = (
    exp.Create,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Copy,
    exp.Pragma,
    exp.Use,
    exp.Describe,
    exp.Analyze,
    exp.Grant,
    exp.Revoke,
    exp.Summarize,
    exp.Install,
    exp.Attach,
    exp.Detach,
    exp.Export,
    exp.Refresh,
    exp.Comment,
)
# The same by leading keyword, for statements sqlglot cannot parse or reads as something else.
_KNOWN_UNSUPPORTED = frozenset(
    {
        "CREATE",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "COPY",
        "GRANT",
        "REVOKE",
        "ANALYZE",
        "VACUUM",
        "LISTEN",
        "UNLISTEN",
        "NOTIFY",
        "CALL",
        "DO",
        "LOCK",
        "REFRESH",
        "COMMENT",
        "CHECKPOINT",
        "REINDEX",
        "CLUSTER",
        "SECURITY",
        "IMPORT",
        "LOAD",
        "INSTALL",
        "ATTACH",
        "DETACH",
        "PRAGMA",
        "USE",
        "DESCRIBE",
        "EXPORT",
        "SUMMARIZE",
        "CHECKOUT",
    }
)


def ident(name: str) -> str:
    """A SQL identifier as PostgreSQL folds it: quoted keeps case, unquoted is lower-cased."""
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name.lower()


def unquote_value(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


# --- classification ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def classify(sql: str) -> Command:
    """What ``sql`` (one statement) is. Raises ``QueryServiceError`` 42601 for malformed commands
    and 0A000 for statements the emulator does not model. Cached: drivers resend the same text."""
    text = strip_comments(sql).strip()
    if not text:
        return Empty()
    words = leading_words(text, 1)
    head = words[0] if words else ""
    if head in _NOT_IN_SQLGLOT:
        return _by_keyword(head, text)
    try:
        tree = sqlglot.parse_one(text, read="postgres")
    except SqlglotError as exc:
        log.debug("sqlglot (postgres) cannot parse %r (%s); classifying by its keyword", head, exc)
        return _fallback(head, text)
    return _by_node(tree, head, text)


def _by_node(tree: exp.Expr, head: str, text: str) -> Command:
    if isinstance(tree, (exp.Query, exp.Subquery)) and head in _QUERY_KEYWORDS:
        return Query(catalog=any(_is_catalog(t) for t in tree.find_all(exp.Table)))
    if isinstance(tree, exp.Transaction):
        return Begin()
    if isinstance(tree, exp.Commit):
        return Commit()
    if isinstance(tree, exp.Rollback):
        savepoint = tree.args.get("savepoint")
        return Rollback(_identifier(savepoint) if savepoint is not None else None)
    if isinstance(tree, exp.Set):
        return _set(tree, text)
    if isinstance(tree, exp.Command):
        return _command(str(tree.this).upper(), text)
    if isinstance(tree, _UNSUPPORTED_NODES):
        raise _unsupported(head)
    # Anything else sqlglot made of it (often a column with an alias) says nothing reliable.
    return _fallback(head, text)


def _fallback(head: str, text: str) -> Command:
    if head in _QUERY_KEYWORDS or text.startswith("("):
        return Query(catalog=bool(_CATALOG_RE.search(code_only(text))))
    return _by_keyword(head, text)


def _by_keyword(head: str, text: str) -> Command:
    """Classification by the leading keyword: for the commands sqlglot's PostgreSQL dialect
    misreads or lacks, and for any statement it cannot parse (see the module docstring)."""
    if head in ("BEGIN", "START"):
        return Begin()
    if head in ("COMMIT", "END"):
        return Commit()
    if head in ("ROLLBACK", "ABORT"):
        match = _ROLLBACK_TO_RE.match(text)
        return Rollback(ident(match["name"]) if match else None)
    if head in ("SAVEPOINT", "RELEASE"):
        match = _SAVEPOINT_RE.match(text)
        if not match:
            raise QueryServiceError(err.SYNTAX_ERROR, f"syntax error in {head}")
        name = ident(match["name"])
        return Savepoint(name) if head == "SAVEPOINT" else Release(name)
    if head == "DISCARD":
        return Discard()
    if head == "MOVE":
        return _fetch(True, _rest(text))
    if head == "CLOSE":
        return Close(_rest(text))
    if head == "DEALLOCATE":
        return Deallocate(re.sub(r"^PREPARE\s+", "", _rest(text), flags=re.I).strip())
    if head in _TEXT_COMMANDS:
        return _command(head, text)
    if head in _KNOWN_UNSUPPORTED or text.startswith("$$"):
        raise _unsupported(head)
    raise QueryServiceError(err.SYNTAX_ERROR, f'syntax error at or near "{text.split()[0]}"')


def _command(keyword: str, text: str) -> Command:
    """A statement sqlglot returned as ``exp.Command``: its keyword plus text it did not read."""
    rest = _rest(text)
    if keyword == "SET":
        return _set_text(rest, text)
    if keyword == "RESET":
        return Reset(rest.lower())
    if keyword == "SHOW":
        return Show(re.sub(r"\s+", " ", rest).lower())
    if keyword == "DECLARE":
        match = _DECLARE_RE.match(rest)
        if not match:
            raise QueryServiceError(err.SYNTAX_ERROR, "syntax error in DECLARE CURSOR")
        options = match["opts"].upper()
        if "SCROLL" in options and "NO SCROLL" not in options:
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED, "SCROLL cursors are not supported by the emulator"
            )
        return Declare(
            ident(match["name"]),
            match["query"].strip(),
            binary="BINARY" in options,
            holdable=(match["hold"] or "").upper() == "WITH",
        )
    if keyword == "FETCH":
        return _fetch(False, rest)
    if keyword == "PREPARE":
        match = _PREPARE_RE.match(rest)
        if not match:
            raise QueryServiceError(err.SYNTAX_ERROR, "syntax error in PREPARE")
        types = tuple(t.strip().lower() for t in (match["types"] or "").split(",") if t.strip())
        return Prepare(ident(match["name"]), types, match["body"])
    if keyword == "EXECUTE":
        match = _EXECUTE_RE.match(rest)
        if not match:
            raise QueryServiceError(err.SYNTAX_ERROR, "syntax error in EXECUTE")
        return Execute(ident(match["name"]), match["args"])
    if keyword == "EXPLAIN":
        return Explain(_EXPLAIN_OPTIONS_RE.sub("", rest, count=1))
    words = leading_words(text, 1)
    head = words[0] if words else ""
    if head in _TEXT_COMMANDS:  # sqlglot named it differently; never loop back here
        raise QueryServiceError(err.SYNTAX_ERROR, f"syntax error in {head}: {text}")
    return _by_keyword(head, text)


def _fetch(move: bool, rest: str) -> Fetch:
    match = _FETCH_RE.match(rest)
    if not match:
        raise QueryServiceError(err.SYNTAX_ERROR, "syntax error in FETCH/MOVE")
    direction = re.sub(r"\s+", " ", (match["dir"] or "NEXT").upper())
    return Fetch(move, direction, ident(match["name"]))


def _set(tree: exp.Set, text: str) -> Command:
    items = tree.expressions
    if len(items) != 1 or not isinstance(items[0], exp.SetItem):
        return _set_text(_rest(text), text)
    item = items[0]
    kind = str(item.args.get("kind") or "").upper()
    if kind == "TRANSACTION":
        return SetIgnored()
    assignment = item.this
    if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
        return _set_text(_rest(text), text)
    value = assignment.expression
    if not isinstance(value, (exp.Literal, exp.Var, exp.Column, exp.Identifier)):
        # Anything else is read from the text as written: sqlglot rewrites some values (TRUE as a
        # Boolean, E'..' strings) and misreads units (``10s`` as ``10 AS s``).
        return _set_text(_rest(text), text)
    name = ".".join(p.name for p in assignment.this.parts).lower()
    written = str(value.this) if isinstance(value, exp.Literal) else value.name
    if written.upper() == "DEFAULT":
        return SetVar(name, None)
    return SetVar(name, written, local=kind == "LOCAL")


def _set_text(rest: str, text: str) -> Command:
    """SET forms sqlglot leaves as text: TIME ZONE, lists of values, SESSION CHARACTERISTICS."""
    match = _SET_TZ_RE.match(rest)
    if match:
        name, value, scope = "timezone", unquote_value(match["value"]), ""
    else:
        match = _SET_RE.match(rest)
        if not match:
            if _SET_IGNORED_RE.match(rest):
                return SetIgnored()
            raise QueryServiceError(err.SYNTAX_ERROR, f"syntax error in SET: {text}")
        name, value, scope = match["name"].lower(), unquote_value(match["value"]), match["scope"] or ""
    if value.upper() == "DEFAULT":
        return SetVar(name, None)
    return SetVar(name, value, local=scope.upper() == "LOCAL")


def _rest(text: str) -> str:
    """``text`` after its first word."""
    parts = text.split(None, 1)
    return parts[1].strip() if len(parts) > 1 else ""


def _identifier(node: exp.Expr) -> str:
    return node.name if isinstance(node, exp.Identifier) and node.quoted else node.name.lower()


def _is_catalog(table: exp.Table) -> bool:
    return table.db.lower() in _CATALOG_SCHEMAS or (not table.db and table.name.lower().startswith("pg_"))


def _unsupported(head: str) -> QueryServiceError:
    return QueryServiceError(
        err.FEATURE_NOT_SUPPORTED,
        f"{head or 'anonymous block'} statements are not supported by the Query Service "
        "emulator (it serves ad hoc queries; batch queries are not modelled)",
    )


# --- helpers the session's handlers share ---------------------------------------------------


def fetch_plan(direction: str) -> tuple[Callable[[int], int | None], int | None]:
    """(rows to skip given the cursor position -> None if backwards, rows to fetch -> None for all)."""
    number = re.search(r"[-+]?\d+", direction)
    n = int(number.group(0)) if number else None
    if direction in ("NEXT", "FORWARD"):
        return (lambda pos: 0), 1
    if direction in ("ALL", "FORWARD ALL"):
        return (lambda pos: 0), None
    if direction.startswith("ABSOLUTE") and n is not None:
        return (lambda pos: n - 1 - pos if n > pos else None), 1
    if direction.startswith("RELATIVE") and n is not None:
        return (lambda pos: n - 1 if n > 0 else None), 1
    if (direction.startswith("FORWARD") or direction[0] in "+-0123456789") and n is not None:
        return (lambda pos: 0 if n >= 0 else None), n
    return (lambda pos: None), 0  # PRIOR, FIRST, LAST, BACKWARD: this cursor cannot go back


def select_list_names(sql: str) -> list[str]:
    """Output column names of a catalog query, read leniently (it is answered with no rows)."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
        names = (
            [e.alias_or_name or "?column?" for e in tree.expressions] if isinstance(tree, exp.Select) else []
        )
    except Exception:  # any parse problem: one anonymous column is still a valid empty answer
        names = []
    return names or ["?column?"]
