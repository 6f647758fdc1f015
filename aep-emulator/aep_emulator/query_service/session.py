"""Per-connection state of the Query Service emulator and statement execution.

A :class:`Session` owns the transaction status (I/T/E), savepoints, prepared statements, portals
(protocol portals and SQL cursors share one namespace, as in PostgreSQL), ``SET`` variables and a
DuckDB cursor for metadata probes. Every query runs on its own fresh DuckDB cursor so that a
timeout or cancel interrupts exactly that query.

What a statement is comes from :mod:`.commands` (sqlglot-based classification into typed commands);
this module executes them. The extended query protocol's message handling is in :mod:`.extended`.

Query Service limits (guardrails.md, writing-queries.md, troubleshooting-guide.md):

* an ad hoc query returning more than ``max_rows`` rows: production documents an implicit
  ``LIMIT 50000``, so by default (``over_limit="truncate"``) the emulator silently returns the first
  ``max_rows`` rows, exactly the trap the recipe falls into; ``over_limit="error"`` fails the query
  with SQLSTATE 53400 before any row is sent instead (a stricter mode for debugging clients).
* an explicit ``LIMIT`` above ``max_explicit_limit`` (100,000): 53400 "LIMIT exceeds max value".
* ``LIMIT 0`` lifts the row cap (documented override); the timeout still applies.
* a query running longer than ``timeout_seconds``: interrupted, 53400 "statement timeout".
* with a scan-cost model (:mod:`.scans`), a query that reads export batches first waits the time
  Query Service would spend scanning them, under the same timeout (default: no wait).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb

from aep_emulator.query_service import commands as cmd
from aep_emulator.query_service import errors as err
from aep_emulator.query_service import protocol as pg
from aep_emulator.query_service.encoding import datarow_sql, pg_type_oid, values_sql
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.results import (
    BufferedRows,
    FetchRows,
    RowSource,
    StreamingRows,
    blob_rows,
    expand_formats,
    value_encoder,
)
from aep_emulator.query_service.scans import ScanModel
from aep_emulator.query_service.translate import Translation, Translator, split_statements

log = logging.getLogger(__name__)

# psql (10.5) against production printed "server 0.1.0" (help/query-service/clients/psql.md);
# version() must still say "PostgreSQL x.y" for SQLAlchemy, whose parser needs it (a guess).
SERVER_VERSION = "0.1.0"
VERSION_STRING = "PostgreSQL 9.6.0 on x86_64-pc-linux-gnu (Adobe Experience Platform Query Service emulator)"

# Parameters PostgreSQL reports with ParameterStatus (GUC_REPORT), with their spelling.
REPORTED = {
    "server_version": "server_version",
    "server_encoding": "server_encoding",
    "client_encoding": "client_encoding",
    "application_name": "application_name",
    "datestyle": "DateStyle",
    "intervalstyle": "IntervalStyle",
    "timezone": "TimeZone",
    "integer_datetimes": "integer_datetimes",
    "standard_conforming_strings": "standard_conforming_strings",
    "is_superuser": "is_superuser",
    "session_authorization": "session_authorization",
    "default_transaction_read_only": "default_transaction_read_only",
    "in_hot_standby": "in_hot_standby",
}

DEFAULT_SETTINGS: dict[str, str] = {
    "server_version": SERVER_VERSION,
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "application_name": "",
    "datestyle": "ISO, MDY",
    "intervalstyle": "postgres",
    "timezone": "UTC",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "is_superuser": "off",
    "default_transaction_read_only": "off",
    "in_hot_standby": "off",
    "transaction_isolation": "read committed",
    "transaction_read_only": "off",
    "search_path": "public",
    "statement_timeout": "0",
    "max_identifier_length": "63",
    "lc_messages": "en_US.UTF-8",
    # Query Service session flags (SQL syntax reference): complex columns as JSON, system columns.
    "auto_to_json": "false",
    "drop_system_columns": "true",
}
_UTF8_NAMES = frozenset({"utf8", "utf-8", "unicode"})
_TRUE = frozenset({"true", "on", "1", "yes", "t"})


@dataclass(frozen=True)
class Limits:
    max_rows: int = 50_000
    over_limit: str = "truncate"  # production's implicit LIMIT; or "error" (53400)
    max_explicit_limit: int = 100_000
    timeout_seconds: float = 600.0


# --- running-query bookkeeping ----------------------------------------------------------------


class Watchdog:
    """One thread that fires deadlines (statement timeouts) for all sessions."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._entries: dict[int, tuple[float, Callable[[], None]]] = {}
        self._ids = itertools.count(1)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="qs-watchdog", daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], None]) -> int:
        with self._cond:
            handle = next(self._ids)
            self._entries[handle] = (time.monotonic() + delay, callback)
            self._cond.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._entries.pop(handle, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                due = [h for h, (at, _) in self._entries.items() if at <= now]
                for handle in due:
                    _, callback = self._entries.pop(handle)
                    try:
                        callback()
                    except Exception:  # a failing callback must not kill the watchdog
                        log.exception("watchdog callback failed")
                wait = min((at for at, _ in self._entries.values()), default=now + 3600) - now
                self._cond.wait(timeout=max(wait, 0.001))


class _Running:
    """The DuckDB cursor doing a statement's work, and why it was interrupted (if it was)."""

    def __init__(self) -> None:
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.reason: str | None = None  # "timeout" | "cancel" | "shutdown"
        self.lock = threading.Lock()
        self.interrupted = threading.Event()  # ends a modelled scan wait early

    def interrupt(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
            self.interrupted.set()
            if self.cursor is not None:
                try:
                    self.cursor.interrupt()
                except duckdb.Error:
                    pass  # the cursor finished and was closed in the meantime


# --- statements and portals -------------------------------------------------------------------


@dataclass
class Outcome:
    """What running a statement produced: rows (with a tag built from their count) or just a tag."""

    tag: str
    rows: RowSource | None = None
    row_tag: str = "SELECT"  # "SELECT n", "FETCH n", "SHOW", ...
    reported: list[tuple[str, str]] = field(default_factory=list)  # ParameterStatus to send


# A session command as a closure: (session, parameters, result formats or None) -> outcome; and
# the closure describing the rows it returns (None: no rows).
_Run = Callable[["Session", Sequence[Any], "list[int] | None"], Outcome]
_Describe = Callable[["Session"], "list[pg.Column] | None"]


@dataclass
class Statement:
    sql: str
    kind: str  # "query" | "command" | "empty"
    param_oids: list[int]
    translation: Translation | None = None
    command: _Run | None = None
    describe: _Describe | None = None
    transaction_control: bool = False  # allowed in a failed transaction (ROLLBACK, COMMIT)

    @property
    def param_count(self) -> int:
        return self.translation.param_count if self.translation else 0


@dataclass
class Portal:
    name: str
    statement: Statement
    params: list[Any]
    result_formats: list[int]
    outcome: Outcome | None = None
    is_cursor: bool = False
    holdable: bool = False


class _StatementContext:
    """The translator's view of the session for one statement (tables are looked up once)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.drop_system_columns = session.setting_bool("drop_system_columns")
        self._tables: dict[str, str] | None = None

    def describe(self, sql: str) -> list[tuple[str, Any]]:
        cursor = self._session.meta_cursor
        try:
            cursor.execute(sql)
        except duckdb.Error as exc:
            raise err.from_duckdb(exc) from exc
        return [(d[0], d[1]) for d in cursor.description or []]

    def tables(self) -> Mapping[str, str]:
        if self._tables is None:
            self._tables = {
                t["name"].lower(): t["name"] for t in self._session.list_tables() if t.get("name")
            }
        return self._tables

    def session_function(self, name: str, args: Sequence[str]) -> str | None:
        return self._session.function_value(name, args)


# --- the session ------------------------------------------------------------------------------

_TYPE_OIDS_BY_NAME = {
    "int": pg.INT4,
    "integer": pg.INT4,
    "int4": pg.INT4,
    "bigint": pg.INT8,
    "int8": pg.INT8,
    "smallint": pg.INT2,
    "int2": pg.INT2,
    "text": pg.TEXT,
    "varchar": pg.VARCHAR,
    "boolean": pg.BOOL,
    "bool": pg.BOOL,
    "float8": pg.FLOAT8,
    "double precision": pg.FLOAT8,
    "float4": pg.FLOAT4,
    "real": pg.FLOAT4,
    "numeric": pg.NUMERIC,
    "date": pg.DATE,
    "timestamp": pg.TIMESTAMP,
    "timestamptz": pg.TIMESTAMPTZ,
}


class Session:
    """State and statement execution of one client connection."""

    def __init__(
        self,
        *,
        user: str,
        database: str,
        pid: int,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        list_tables: Callable[[], list[dict[str, Any]]],
        translator: Translator,
        watchdog: Watchdog,
        limits: Limits,
        startup: Mapping[str, str] | None = None,
        scans: ScanModel | None = None,
    ) -> None:
        self.user = user
        self.database = database
        self.pid = pid
        self._connect = connect
        self.list_tables = list_tables
        self._translator = translator
        self._watchdog = watchdog
        self.limits = limits
        self._scans = scans
        self.settings: dict[str, str] = dict(DEFAULT_SETTINGS)
        self.settings["session_authorization"] = user
        for key, value in (startup or {}).items():
            if key.lower() in ("application_name", "datestyle", "timezone", "search_path"):
                self.settings[key.lower()] = value
        self._local_saved: dict[str, str] = {}
        self.tx_status = "I"
        self._savepoints: list[str] = []
        self.statements: dict[str, Statement] = {}
        self.portals: dict[str, Portal] = {}
        self._running: _Running | None = None
        self._running_lock = threading.Lock()
        self._meta: duckdb.DuckDBPyConnection | None = None

    # -- plumbing --
    @property
    def meta_cursor(self) -> duckdb.DuckDBPyConnection:
        if self._meta is None:
            self._meta = self._new_cursor()
        return self._meta

    def _new_cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self._connect()
        try:
            cursor.execute("SET TimeZone = 'UTC'")  # Query Service sessions run in UTC
        except duckdb.Error:
            log.debug("could not set the DuckDB time zone", exc_info=True)
        return cursor

    def setting_bool(self, name: str) -> bool:
        return self.settings.get(name, "").strip().lower() in _TRUE

    def function_value(self, name: str, args: Sequence[str]) -> str | None:
        if name == "version":
            return VERSION_STRING
        if name == "current_schema":
            return "public"
        if name == "current_schemas":
            return "{public}"
        if name == "current_database":
            return self.database
        if name in ("current_user", "session_user"):
            return self.user
        if name == "pg_backend_pid":
            return str(self.pid)
        if name == "current_setting" and args:
            return self.settings.get(args[0].lower())
        return None

    def close(self) -> None:
        for portal in list(self.portals.values()):
            self.drop_portal(portal)
        self.portals.clear()
        if self._meta is not None:
            try:
                self._meta.close()
            except duckdb.Error:
                pass
            self._meta = None

    def cancel(self) -> None:
        """CancelRequest from another connection: interrupt the running query, if any."""
        with self._running_lock:
            running = self._running
        if running is not None:
            running.interrupt("cancel")

    def interrupt_for_shutdown(self) -> None:
        with self._running_lock:
            running = self._running
        if running is not None:
            running.interrupt("shutdown")

    def fail(self) -> None:
        """A statement failed: inside a transaction block the transaction is now aborted."""
        if self.tx_status == "T":
            self.tx_status = "E"

    # -- running queries under the timeout --
    @contextmanager
    def query_scope(self) -> Iterator[_Running]:
        """One unit of work under the statement timeout: a simple-query statement, an Execute, a FETCH.

        Nested calls share the outer scope, so the deadline covers running *and* sending the rows.
        """
        with self._running_lock:
            outer = self._running
            if outer is None:
                running = self._running = _Running()
        if outer is not None:
            yield outer
            return
        handle = self._watchdog.schedule(self.limits.timeout_seconds, lambda: running.interrupt("timeout"))
        try:
            yield running
        finally:
            self._watchdog.cancel(handle)
            with self._running_lock:
                self._running = None

    def _guarded(self, work: Callable[[_Running], Any]) -> Any:
        """Run DuckDB work inside the current query scope, mapping interrupts and DuckDB errors."""
        with self.query_scope() as running:
            try:
                result = work(running)
            except duckdb.InterruptException as exc:
                raise self._interrupted(running) from exc
            except duckdb.Error as exc:
                if running.reason is not None:
                    raise self._interrupted(running) from exc
                raise err.from_duckdb(exc) from exc
            if running.reason is not None:
                raise self._interrupted(running)
            return result

    def _interrupted(self, running: _Running) -> QueryServiceError:
        if running.reason == "timeout":
            return QueryServiceError(
                err.INSUFFICIENT_RESOURCES,
                f"Statement timeout: the query ran longer than the maximum of {self.limits.timeout_seconds:g} "
                "seconds allowed for ad hoc queries",
                hint="Filter the data further, or run it as a batch query (CREATE TABLE AS SELECT).",
            )
        if running.reason == "shutdown":
            return QueryServiceError(
                err.ADMIN_SHUTDOWN, "terminating connection due to administrator command", severity="FATAL"
            )
        return QueryServiceError(err.QUERY_CANCELED, "canceling statement due to user request")

    def _stream(self, source: RowSource, limit: int | None) -> Iterator[list[bytes]]:
        """Pull chunks from ``source`` under the timeout (a streaming source runs DuckDB as it goes)."""
        chunks = source.take(limit)

        def next_chunk(running: _Running) -> list[bytes] | None:
            running.cursor = source.live_cursor
            return next(chunks, None)

        while True:
            chunk = self._guarded(next_chunk)
            if chunk is None:
                return
            yield chunk

    # -- statement preparation --
    def prepare(self, sql: str, param_oids: Sequence[int] = ()) -> Statement:
        """Classify (:mod:`.commands`) and, for queries, translate one statement; session commands
        become closures over the classified command."""
        command = cmd.classify(sql)
        if isinstance(command, cmd.Empty):
            return Statement(sql, "empty", list(param_oids))
        if isinstance(command, cmd.Query):
            if command.catalog:
                return self._catalog_statement(sql, param_oids)
            return Statement(sql, "query", list(param_oids), translation=self._translate(sql))
        run, describe = self._command_for(command)
        return Statement(
            sql,
            "command",
            list(param_oids),
            command=run,
            describe=describe,
            transaction_control=isinstance(command, cmd.TRANSACTION_CONTROL),
        )

    def _translate(self, sql: str) -> Translation:
        return self._translator.translate(sql, _StatementContext(self))

    def _catalog_statement(self, sql: str, param_oids: Sequence[int]) -> Statement:
        """PostgreSQL catalog look-ups (psycopg's hstore probe, pg_cursors, ...): no rows."""
        names = cmd.select_list_names(sql)
        log.debug("answering catalog query with no rows: %s", sql)
        return Statement(
            sql,
            "command",
            list(param_oids),
            command=lambda s, params, formats: Outcome("SELECT", BufferedRows.text(names, [])),
            describe=lambda s: [pg.Column(n, pg.TEXT) for n in names],
        )

    def _command_for(self, command: cmd.Command) -> tuple[_Run, _Describe | None]:
        """The closure that runs ``command`` on a session (and the one describing its rows)."""
        match command:
            case cmd.Begin():
                return (lambda s, p, f: s._begin()), None
            case cmd.Commit():
                return (lambda s, p, f: s._end_transaction(commit=True)), None
            case cmd.Rollback(savepoint=None):
                return (lambda s, p, f: s._end_transaction(commit=False)), None
            case cmd.Rollback(savepoint=str(name)):
                return (lambda s, p, f: s._rollback_to(name)), None
            case cmd.Savepoint(name=name):
                return (lambda s, p, f: s._savepoint(name)), None
            case cmd.Release(name=name):
                return (lambda s, p, f: s._release(name)), None
            case cmd.SetIgnored():
                return (lambda s, p, f: Outcome("SET")), None
            case cmd.SetVar(name=name, value=None):
                return (lambda s, p, f: s._reset(name)), None
            case cmd.SetVar(name=name, value=str(value), local=local):
                return (lambda s, p, f: s._set(name, value, local=local)), None
            case cmd.Reset(target=target):
                return (lambda s, p, f: s._reset(target)), None
            case cmd.Show():
                return self._show_command(command)
            case cmd.Discard():
                return (lambda s, p, f: s._discard()), None
            case cmd.Declare():
                return self._declare_command(command), None
            case cmd.Fetch():
                return self._fetch_command(command)
            case cmd.Close(target=target):
                return (lambda s, p, f: s._close_cursor(target)), None
            case cmd.Prepare():
                return self._prepare_command(command), None
            case cmd.Execute():
                return self._execute_command(command)
            case cmd.Deallocate(target=target):
                return (lambda s, p, f: s._deallocate(target)), None
            case cmd.Explain():
                return self._explain_command(command)
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover - classify's types

    # -- transactions --
    def _begin(self) -> Outcome:
        if self.tx_status != "I":
            # PostgreSQL: WARNING 25001 "there is already a transaction in progress"; harmless here.
            return Outcome("BEGIN")
        self.tx_status = "T"
        self._savepoints.clear()
        return Outcome("BEGIN")

    def _end_transaction(self, *, commit: bool) -> Outcome:
        failed = self.tx_status == "E"
        self.tx_status = "I"
        self._savepoints.clear()
        for name, value in self._local_saved.items():
            self.settings[name] = value
        self._local_saved.clear()
        for portal in list(self.portals.values()):
            if not portal.holdable:
                self.drop_portal(portal)
        return Outcome("ROLLBACK" if (failed or not commit) else "COMMIT")

    def _savepoint(self, name: str) -> Outcome:
        if self.tx_status == "I":
            raise QueryServiceError(
                err.NO_ACTIVE_SQL_TRANSACTION, "SAVEPOINT can only be used in transaction blocks"
            )
        self._savepoints.append(name)
        return Outcome("SAVEPOINT")

    def _release(self, name: str) -> Outcome:
        if name not in self._savepoints:
            raise QueryServiceError(err.INVALID_SAVEPOINT_SPECIFICATION, f'savepoint "{name}" does not exist')
        del self._savepoints[len(self._savepoints) - 1 - self._savepoints[::-1].index(name) :]
        return Outcome("RELEASE")

    def _rollback_to(self, name: str) -> Outcome:
        if self.tx_status == "I":
            raise QueryServiceError(
                err.NO_ACTIVE_SQL_TRANSACTION, "ROLLBACK TO SAVEPOINT can only be used in transaction blocks"
            )
        if name not in self._savepoints:
            raise QueryServiceError(err.INVALID_SAVEPOINT_SPECIFICATION, f'savepoint "{name}" does not exist')
        del self._savepoints[len(self._savepoints) - self._savepoints[::-1].index(name) :]
        self.tx_status = "T"
        return Outcome("ROLLBACK")

    # -- SET / SHOW / RESET --
    def _set(self, name: str, value: str, *, local: bool = False) -> Outcome:
        if name == "client_encoding" and value.lower() not in _UTF8_NAMES:
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED,
                f"client_encoding {value} is not supported; the emulator speaks UTF8 only",
            )
        if name == "client_encoding":
            value = "UTF8"
        if name in ("auto_to_json", "drop_system_columns") and value.lower() not in _TRUE | {
            "false",
            "off",
            "0",
            "no",
            "f",
        }:
            raise QueryServiceError(
                err.INVALID_PARAMETER_VALUE, f'parameter "{name}" requires a Boolean value'
            )
        if local and self.tx_status != "I":
            self._local_saved.setdefault(name, self.settings.get(name, ""))
        elif local:
            return Outcome("SET")  # PostgreSQL: SET LOCAL outside a transaction has no effect
        self.settings[name] = value
        reported = [(REPORTED[name], value)] if name in REPORTED else []
        return Outcome("SET", reported=reported)

    def _reset(self, target: str) -> Outcome:
        names = list(self.settings) if target == "all" else [target]
        reported = []
        for name in names:
            default = DEFAULT_SETTINGS.get(name)
            if name == "session_authorization":
                default = self.user
            if default is None:
                self.settings.pop(name, None)
                continue
            self.settings[name] = default
            if name in REPORTED:
                reported.append((REPORTED[name], default))
        return Outcome("RESET", reported=reported)

    def _show_command(self, command: cmd.Show) -> tuple[_Run, _Describe]:
        target = command.target
        if target == "tables":
            names = ["name", "dataSetId", "dataSet", "description", "resolved"]
            return (
                (
                    lambda s, p, f: Outcome(
                        "SHOW", BufferedRows.text(names, s._table_rows()), row_tag="SELECT"
                    )
                ),
                (lambda s: [pg.Column(n, pg.TEXT) for n in names]),
            )
        if target == "all":
            names = ["name", "setting", "description"]
            return (
                (
                    lambda s, p, f: Outcome(
                        "SHOW",
                        BufferedRows.text(names, [(k, v, "") for k, v in sorted(s.settings.items())]),
                        row_tag="SHOW",
                    )
                ),
                (lambda s: [pg.Column(n, pg.TEXT) for n in names]),
            )
        name = {"transaction isolation level": "transaction_isolation", "time zone": "timezone"}.get(
            target, target
        )
        name = cmd.ident(name) if name.startswith('"') else name

        def run(s: Session, p: Any, f: Any) -> Outcome:
            if name not in s.settings:
                raise QueryServiceError(
                    err.UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"'
                )
            return Outcome("SHOW", BufferedRows.text([name], [(s.settings[name],)]), row_tag="SHOW")

        return run, (lambda s: [pg.Column(name, pg.TEXT)])

    def _table_rows(self) -> list[tuple[str | None, ...]]:
        rows = []
        for table in sorted(self.list_tables(), key=lambda t: t.get("name", "")):
            rows.append(
                (
                    table.get("name"),
                    table.get("dataSetId"),
                    table.get("dataSet"),
                    table.get("description") or "",
                    # "resolved" is printed as false in every documented example; meaning unknown.
                    "false",
                )
            )
        return rows

    def _discard(self) -> Outcome:
        for portal in list(self.portals.values()):
            self.drop_portal(portal)
        self.statements.clear()
        self._reset("all")
        return Outcome("DISCARD ALL")

    # -- cursors --
    def _declare_command(self, command: cmd.Declare) -> _Run:
        name, query, binary, holdable = command.name, command.query, command.binary, command.holdable
        inner = self.prepare(query)
        if inner.kind != "query":
            raise QueryServiceError(err.SYNTAX_ERROR, "DECLARE CURSOR needs a SELECT query")

        def run(s: Session, params: Sequence[Any], formats: Any) -> Outcome:
            if not holdable and s.tx_status == "I":
                raise QueryServiceError(
                    err.NO_ACTIVE_SQL_TRANSACTION, "DECLARE CURSOR can only be used in transaction blocks"
                )
            if name in s.portals:
                raise QueryServiceError(err.DUPLICATE_CURSOR, f'cursor "{name}" already exists')
            assert inner.translation is not None
            source = s.run_query(inner.translation, params, [1] if binary else [0], sql=query)
            portal = Portal(
                name,
                inner,
                list(params),
                source.formats,
                Outcome("SELECT", source),
                is_cursor=True,
                holdable=holdable,
            )
            s.portals[name] = portal
            return Outcome("DECLARE CURSOR")

        return run

    def _fetch_command(self, command: cmd.Fetch) -> tuple[_Run, _Describe]:
        verb, name, direction = ("MOVE" if command.move else "FETCH"), command.name, command.direction
        skip, count = cmd.fetch_plan(direction)

        def cursor(s: Session) -> Portal:
            portal = s.portals.get(name)
            if portal is None or portal.outcome is None or portal.outcome.rows is None:
                raise QueryServiceError(err.INVALID_CURSOR_NAME, f'cursor "{name}" does not exist')
            return portal

        def run(s: Session, params: Sequence[Any], formats: list[int] | None) -> Outcome:
            source = cursor(s).outcome.rows  # type: ignore[union-attr]
            assert source is not None
            to_skip = skip(source.position)
            if to_skip is None:
                raise QueryServiceError(
                    err.OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "cursor can only scan forward",
                    hint="Declare it with SCROLL to enable backward scan (not supported by the emulator).",
                )
            moved = sum(len(c) for c in s._stream(source, to_skip)) if to_skip else 0
            if verb == "MOVE":
                moved += sum(len(c) for c in s._stream(source, count))
                return Outcome(f"MOVE {moved}")
            wanted = (
                expand_formats(formats, len(source.columns)) if formats is not None else list(source.formats)
            )
            return Outcome("FETCH", FetchRows(source, count, wanted), row_tag="FETCH")

        def describe(s: Session) -> list[pg.Column] | None:
            if verb == "MOVE":
                return None
            return cursor(s).outcome.rows.columns  # type: ignore[union-attr]

        return run, describe

    def _close_cursor(self, target: str) -> Outcome:
        if target.upper() == "ALL":
            for portal in [p for p in self.portals.values() if p.is_cursor]:
                self.drop_portal(portal)
            return Outcome("CLOSE CURSOR")
        name = cmd.ident(target)
        portal = self.portals.get(name)
        if portal is None or not portal.is_cursor:
            raise QueryServiceError(err.INVALID_CURSOR_NAME, f'cursor "{name}" does not exist')
        self.drop_portal(portal)
        return Outcome("CLOSE CURSOR")

    def drop_portal(self, portal: Portal) -> None:
        if portal.outcome is not None and portal.outcome.rows is not None:
            portal.outcome.rows.close()
        if self.portals.get(portal.name) is portal:
            del self.portals[portal.name]

    # -- SQL-level PREPARE / EXECUTE / DEALLOCATE --
    def _prepare_command(self, command: cmd.Prepare) -> _Run:
        name, body = command.name, command.body
        oids = [_TYPE_OIDS_BY_NAME.get(t, 0) for t in command.type_names]

        def run(s: Session, p: Any, f: Any) -> Outcome:
            if name in s.statements:
                raise QueryServiceError(
                    err.DUPLICATE_PREPARED_STATEMENT, f'prepared statement "{name}" already exists'
                )
            s.statements[name] = s.prepare(body, oids)
            return Outcome("PREPARE")

        return run

    def _execute_command(self, command: cmd.Execute) -> tuple[_Run, _Describe]:
        name, args = command.name, command.args

        def run(s: Session, p: Any, formats: list[int] | None) -> Outcome:
            statement = s.statements.get(name)
            if statement is None:
                raise QueryServiceError(
                    err.INVALID_SQL_STATEMENT_NAME, f'prepared statement "{name}" does not exist'
                )
            values: list[Any] = []
            if args:  # evaluate the argument expressions with DuckDB
                translation = s._translate(f"SELECT {args}")
                values = list(s._guarded(lambda r: s.meta_cursor.execute(translation.sql).fetchone()) or [])
            return s.execute_statement(statement, values, formats)

        def describe(s: Session) -> list[pg.Column] | None:
            statement = s.statements.get(name)
            return s.describe_statement(statement) if statement else None

        return run, describe

    def _deallocate(self, target: str) -> Outcome:
        if target.upper() == "ALL":
            self.statements = {k: v for k, v in self.statements.items() if k == ""}
        else:
            name = cmd.ident(target)
            if name not in self.statements:
                raise QueryServiceError(
                    err.INVALID_SQL_STATEMENT_NAME, f'prepared statement "{name}" does not exist'
                )
            del self.statements[name]
        return Outcome("DEALLOCATE")

    def _explain_command(self, command: cmd.Explain) -> tuple[_Run, _Describe]:
        inner = self.prepare(command.query)
        if inner.kind != "query" or inner.translation is None:
            raise QueryServiceError(err.FEATURE_NOT_SUPPORTED, "EXPLAIN supports SELECT queries only")
        translation = inner.translation

        def run(s: Session, params: Sequence[Any], f: Any) -> Outcome:
            def work(running: _Running) -> list[tuple[Any, ...]]:
                running.cursor = s.meta_cursor
                return s.meta_cursor.execute(f"EXPLAIN {translation.sql}", list(params)).fetchall()

            plan = s._guarded(work)
            lines = [(line,) for _, text_ in plan for line in str(text_).splitlines()]
            return Outcome("EXPLAIN", BufferedRows.text(["QUERY PLAN"], lines), row_tag="EXPLAIN")

        return run, (lambda s: [pg.Column("QUERY PLAN", pg.TEXT)])

    # -- queries --
    def run_query(
        self, translation: Translation, params: Sequence[Any], formats: Sequence[int], *, sql: str
    ) -> RowSource:
        """Execute a translated query under the limits; return its encoded rows."""
        limit = translation.explicit_limit
        if limit is not None and limit > self.limits.max_explicit_limit:
            raise QueryServiceError(
                err.INSUFFICIENT_RESOURCES,
                f"LIMIT exceeds max value: {limit} is higher than the maximum of {self.limits.max_explicit_limit:,}",
                hint="Use a smaller LIMIT, or LIMIT 0 to lift the row cap of ad hoc queries.",
            )
        values = list(params)[: translation.param_count]
        self._model_scan(sql, values)
        try:
            return self._guarded(lambda running: self._start(translation, values, formats, running))
        except QueryServiceError as exc:
            if exc.sqlstate not in (
                err.UNDEFINED_COLUMN,
                err.UNDEFINED_TABLE,
                err.UNDEFINED_FUNCTION,
                err.DATATYPE_MISMATCH,
            ):
                raise
            # A cached translation can go stale when the REST side re-creates a table; retry fresh once.
            self._translator.forget(sql)
            fresh = self._translate(sql)
            if fresh == translation:
                raise
            return self._guarded(lambda running: self._start(fresh, values, formats, running))

    def _model_scan(self, sql: str, params: Sequence[Any]) -> None:
        """Wait the time the scan-cost model charges ``sql`` (if any), under the statement timeout."""
        if self._scans is None:
            return
        seconds = self._scans.charge(sql, params)
        if seconds <= 0:
            return
        with self.query_scope() as running:
            if running.interrupted.wait(seconds) or running.reason is not None:
                raise self._interrupted(running)

    def _start(
        self, translation: Translation, params: list[Any], formats: Sequence[int], running: _Running
    ) -> RowSource:
        """Run the query on a fresh DuckDB cursor and return its rows, enforcing the row cap.

        A capped query must be counted before its first row goes out (to truncate or fail as
        configured), so its encoded rows - at most ``max_rows + 1`` - are fetched into memory first.
        (Materialising them in a DuckDB temporary table instead measured no faster, and costs three
        more statements per query.) ``LIMIT 0`` results stream through the read-ahead thread.
        """
        cursor = self._new_cursor()
        running.cursor = cursor
        try:
            cursor.execute(f"SELECT * FROM ({translation.sql}) AS _q LIMIT 0", params)
            description = cursor.description or []
            columns = [pg.Column(d[0], pg_type_oid(d[1]), d[1]) for d in description]
            fmts = expand_formats(formats, len(columns))
            types = [c.duck_type for c in columns]
            auto_json = self.setting_bool("auto_to_json")
            capped = not translation.lift_row_cap and translation.explicit_limit is None
            source_sql = translation.sql
            if capped:
                # One row more than allowed decides "over the cap" without running the whole result.
                source_sql = f"SELECT * FROM ({source_sql}) AS _c LIMIT {self.limits.max_rows + 1}"
            if any(fmts):
                # Text-typed columns (strings, complex values) are the same bytes in binary format.
                as_text = [f == 0 or c.type_oid == pg.TEXT for f, c in zip(fmts, columns)]
                cursor.execute(values_sql(source_sql, types, as_text, auto_to_json=auto_json), params)
                encode = value_encoder(columns, [0 if t else 1 for t in as_text])
            else:
                cursor.execute(datarow_sql(source_sql, types, auto_to_json=auto_json), params)
                encode = blob_rows
            if translation.lift_row_cap:
                return StreamingRows(columns, fmts, cursor, encode)
            rows = cursor.fetchall()
        except BaseException:
            cursor.close()
            raise
        cursor.close()
        if capped and len(rows) > self.limits.max_rows:
            if self.limits.over_limit == "error":
                raise self._over_the_cap()
            log.info("ad hoc result cut at %d rows (production's implicit LIMIT)", self.limits.max_rows)
            del rows[self.limits.max_rows :]
        return BufferedRows(columns, fmts, encode(rows))

    def _over_the_cap(self) -> QueryServiceError:
        return QueryServiceError(
            err.INSUFFICIENT_RESOURCES,
            f"Query result exceeds the maximum of {self.limits.max_rows:,} rows for ad hoc queries "
            "returned to PostgreSQL clients",
            detail="Query Service documents an implicit LIMIT for this case (the emulator's default, "
            "over_limit='truncate'); this emulator runs with over_limit='error'.",
            hint="Partition the query (for example WHERE pmod(hash(id), n) = i), add LIMIT, or run a batch "
            "query (CREATE TABLE AS SELECT).",
        )

    # -- shared by simple and extended protocol --
    def describe_statement(self, statement: Statement) -> list[pg.Column] | None:
        if statement.kind == "query" and statement.translation is not None:
            translation = statement.translation
            nulls = [None] * translation.param_count

            def work(running: _Running) -> list[pg.Column]:
                running.cursor = self.meta_cursor
                self.meta_cursor.execute(f"SELECT * FROM ({translation.sql}) AS _q LIMIT 0", nulls)
                return [pg.Column(d[0], pg_type_oid(d[1]), d[1]) for d in self.meta_cursor.description or []]

            return self._guarded(work)
        if statement.kind == "command" and statement.describe is not None:
            return statement.describe(self)
        return None

    def execute_statement(
        self, statement: Statement, params: Sequence[Any], formats: list[int] | None
    ) -> Outcome:
        """Run a prepared statement (query or command) and return its outcome (rows not yet sent)."""
        if self.tx_status == "E" and not statement.transaction_control:
            raise QueryServiceError(
                err.IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        if statement.kind == "empty":
            return Outcome("")
        if statement.kind == "command":
            assert statement.command is not None
            return statement.command(self, params, formats)
        assert statement.translation is not None
        source = self.run_query(statement.translation, params, formats or [], sql=statement.sql)
        return Outcome("SELECT", source)

    def send_rows(
        self, outcome: Outcome, limit: int | None, write: Callable[[list[bytes]], None]
    ) -> tuple[int, bool]:
        """Write up to ``limit`` DataRows of ``outcome``; return (rows written, source exhausted)."""
        assert outcome.rows is not None
        sent = 0
        for chunk in self._stream(outcome.rows, limit):
            write(chunk)
            sent += len(chunk)
        return sent, outcome.rows.exhausted or (limit is not None and sent < limit)

    def simple_query(self, sql: str, write: Callable[[list[bytes]], None]) -> None:
        """Run every statement of a Query message; raises on the first error (after earlier results)."""
        statements = split_statements(sql)
        if not statements:
            write([pg.EMPTY_QUERY])
            return
        for text in statements:
            with self.query_scope():
                statement = self.prepare(text)
                outcome = self.execute_statement(statement, [], None)
                if outcome.rows is not None:
                    write([pg.row_description(outcome.rows.columns, outcome.rows.formats)])
                    count, _ = self.send_rows(outcome, None, write)
                    write([pg.command_complete(row_tag(outcome, count))])
                else:
                    write([pg.command_complete(outcome.tag)])
            for name, value in outcome.reported:
                write([pg.parameter_status(name, value)])


def row_tag(outcome: Outcome, count: int) -> str:
    if outcome.row_tag in ("SELECT", "FETCH"):
        return f"{outcome.row_tag} {count}"
    return outcome.row_tag
