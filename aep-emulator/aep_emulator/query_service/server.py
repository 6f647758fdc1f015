"""The Query Service emulator's PostgreSQL wire-protocol server (one thread per connection).

Startup follows production: TLS is required when an SSL context is configured (``sslmode=require``;
a plaintext startup is refused with FATAL 28000), GSSAPI encryption is declined, the password is
asked in cleartext (AuthenticationCleartextPassword, the only type Query Service accepts) and checked
by the ``authenticate`` callback (an IMS access token in the emulator).
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import duckdb

from aep_emulator.query_service import errors as err
from aep_emulator.query_service import protocol as pg
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.extended import ExtendedProtocol
from aep_emulator.query_service.scans import ScanModel
from aep_emulator.query_service.session import REPORTED, Limits, Session, Watchdog
from aep_emulator.query_service.translate import Translator
from aep_emulator.realistic_qs import SESSION_LIMIT_MESSAGE

log = logging.getLogger(__name__)

_FLUSH_BYTES = 256 * 1024
_STARTUP_TIMEOUT = 30.0


class _Writer:
    """Buffers small backend messages; large row chunks go out in few ``sendall`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, parts: Sequence[bytes]) -> None:
        self._parts.extend(parts)
        self._size += sum(map(len, parts))
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self.sock.sendall(data)


class QueryServiceServer:
    """PostgreSQL wire-protocol front of the emulator's DuckDB database, with Query Service's rules.

    ``connect`` returns a new cursor of the shared database (one per session and per query, so a
    timeout interrupts exactly one query); ``authenticate(user, password, database)`` raises
    ``PermissionError(message)`` to refuse a login (FATAL 28P01); ``list_tables()`` names the
    readable tables (``name``, ``dataSetId``, ``dataSet``, ``description``: ``SHOW TABLES``).
    ``before_statement(sql)`` runs before each statement (fault injection: it may delay, raise a
    ``QueryServiceError`` to fail the statement, or an ``OSError`` to drop the connection).
    ``max_rows`` (50,000) and ``timeout_seconds`` (600) are production's ad hoc limits,
    ``max_explicit_limit`` (100,000) its cap on a query's own ``LIMIT``. ``over_limit`` says what a
    result above ``max_rows`` does: ``"truncate"`` (production's implicit LIMIT) or ``"error"`` (53400).
    ``max_sessions()`` is how many sessions the org may have at once (0 = no limit; asked at each
    login, so it can change at run time): a login past it fails with FATAL 53300 "Session Limit
    Reached" (see ``emulator/realistic_qs.py``). Every session authenticates as the org, so all count.
    ``scans`` is the scan-cost model (:mod:`.scans`): what each query reads and costs in time, and
    the statistics (default: no cost, and no dataset read is recognised).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        authenticate: Callable[[str, str, str], None],
        list_tables: Callable[[], list[dict[str, Any]]],
        max_rows: int = 50_000,
        timeout_seconds: float = 600.0,
        max_explicit_limit: int = 100_000,
        over_limit: str = "truncate",
        before_statement: Callable[[str], None] | None = None,
        max_sessions: Callable[[], int] | None = None,
        scans: ScanModel | None = None,
    ) -> None:
        if over_limit not in ("truncate", "error"):
            raise ValueError(f"over_limit must be 'truncate' or 'error', not {over_limit!r}")
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._connect = connect
        self._authenticate = authenticate
        self._list_tables = list_tables
        self._before_statement = before_statement
        self._max_sessions = max_sessions
        self._sessions = 0  # admitted sessions (logged in, not yet closed)
        self.limits = Limits(
            max_rows=max_rows,
            max_explicit_limit=max_explicit_limit,
            timeout_seconds=timeout_seconds,
            over_limit=over_limit,
        )
        self.translator = Translator()
        self.scans = scans if scans is not None else ScanModel()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._watchdog: Watchdog | None = None
        self._connections: dict[int, _Connection] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle --
    def start(self) -> None:
        """Listen (port 0 picks a free port, then ``self.port`` is set) and accept in a thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._watchdog = Watchdog()
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"qs-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        log.info(
            "Query Service emulator listening on %s:%d (TLS %s, max_rows=%d, timeout=%gs)",
            self.host,
            self.port,
            "required" if self.ssl_context else "off",
            self.limits.max_rows,
            self.limits.timeout_seconds,
        )

    def stop(self) -> None:
        """Close the listener and every session (running queries are interrupted)."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:
            conn.abort()
        for conn in connections:
            conn.thread.join(timeout=5)
        if self._watchdog is not None:
            self._watchdog.stop()
        self._listener = self._accept_thread = self._watchdog = None
        log.info("Query Service emulator on port %d stopped", self.port)

    def __enter__(self) -> QueryServiceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock, address)
            with self._lock:
                self._connections[id(conn)] = conn
            conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.pop(id(conn), None)

    def _cancel(self, pid: int, secret: int) -> None:
        with self._lock:
            targets = [c for c in self._connections.values() if c.pid == pid and c.secret == secret]
        for conn in targets:
            log.info("cancel request for backend %d", pid)
            if conn.session is not None:
                conn.session.cancel()

    def _admit(self, conn: _Connection) -> None:
        """Count a new session against the org's limit, or refuse it as Query Service does."""
        limit = self._max_sessions() if self._max_sessions is not None else 0
        with self._lock:
            if limit and self._sessions >= limit:
                active = self._sessions
            else:
                self._sessions += 1
                return
        log.info("session %d refused: %d of %d Query Service sessions in use", conn.pid, active, limit)
        # Text: Adobe's guardrails doc; SQLSTATE and detail: guesses (PostgreSQL's too_many_connections).
        raise QueryServiceError(
            err.TOO_MANY_CONNECTIONS,
            SESSION_LIMIT_MESSAGE,
            severity="FATAL",
            detail=f"{active} of the organization's {limit} concurrent Query Service sessions are in use",
            hint="close an idle session or try again later",
        )

    def _release(self) -> None:
        with self._lock:
            self._sessions -= 1

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return self._sessions

    def _new_session(self, conn: _Connection, user: str, database: str, startup: dict[str, str]) -> Session:
        assert self._watchdog is not None
        return Session(
            user=user,
            database=database,
            pid=conn.pid,
            connect=self._connect,
            list_tables=self._list_tables,
            translator=self.translator,
            watchdog=self._watchdog,
            limits=self.limits,
            startup=startup,
            scans=self.scans,
        )


class _Connection:
    """One client: startup/authentication, then the message loop."""

    _pids = iter(range(10_000, 2**31))
    _pid_lock = threading.Lock()

    def __init__(self, server: QueryServiceServer, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.address = address
        with self._pid_lock:
            self.pid = next(self._pids)
        self.secret = secrets.randbits(31)
        self.session: Session | None = None
        self.admitted = False  # counted against the session limit
        self.thread = threading.Thread(target=self._run, name=f"qs-conn-{self.pid}", daemon=True)

    def abort(self) -> None:
        if self.session is not None:
            self.session.interrupt_for_shutdown()
        try:
            # The plain socket shutdown, also for an SSLSocket: its own shutdown() would tear down
            # the TLS object under the thread that is reading from it.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _run(self) -> None:
        reader = pg.MessageReader(self.sock)
        try:
            if self._startup(reader):
                self._loop(reader)
        except pg.ConnectionClosed:
            pass
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection %d ended: %s", self.pid, exc)
        except QueryServiceError as exc:
            self._fatal(exc)
        except Exception:  # never let one client's failure take the server down
            log.exception("connection %d failed", self.pid)
            self._fatal(
                QueryServiceError(
                    err.INTERNAL_ERROR, "internal error in the Query Service emulator", severity="FATAL"
                )
            )
        finally:
            if self.session is not None:
                self.session.close()
            if self.admitted:
                self.server._release()
            self._close_socket()
            self.server._forget(self)

    def _close_socket(self) -> None:
        if isinstance(self.sock, ssl.SSLSocket) and not self.server._stopping.is_set():
            # Say close_notify: libpq reports an "unexpected eof" SSL error otherwise (notably after
            # an encrypted CancelRequest, where the server is the one that ends the connection).
            try:
                self.sock.settimeout(0.5)
                self.sock = self.sock.unwrap()  # type: ignore[assignment]
            except (OSError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _fatal(self, exc: QueryServiceError) -> None:
        exc.severity = "FATAL"
        try:
            self.sock.sendall(pg.error_response(exc))
        except OSError:
            pass

    # -- startup --
    def _startup(self, reader: pg.MessageReader) -> bool:
        self.sock.settimeout(_STARTUP_TIMEOUT)
        tls = False
        while True:
            code, payload = reader.read_startup()
            if code == pg.SSL_REQUEST:
                if self.server.ssl_context is not None and not tls:
                    self.sock.sendall(b"S")
                    self.sock = self.server.ssl_context.wrap_socket(self.sock, server_side=True)
                    reader.replace_socket(self.sock)
                    tls = True
                else:
                    self.sock.sendall(b"N")
                continue
            if code == pg.GSSENC_REQUEST:
                self.sock.sendall(b"N")  # psql >= 12 asks first; Query Service does not do GSSAPI
                continue
            if code == pg.CANCEL_REQUEST:
                pid, secret = struct.unpack("!ii", payload[:8])
                self.server._cancel(pid, secret)
                return False
            if code >> 16 == 3:
                break
            raise QueryServiceError(
                err.PROTOCOL_VIOLATION, f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}"
            )
        if self.server.ssl_context is not None and not tls:
            raise QueryServiceError(
                err.INVALID_AUTHORIZATION_SPECIFICATION,
                "SSL connection is required: connect with sslmode=require (or verify-ca / verify-full)",
            )
        params = pg.parse_startup_params(payload)
        unsupported = [k for k in params if k.startswith("_pq_.")]
        if code & 0xFFFF or unsupported:
            self.sock.sendall(pg.negotiate_protocol_version(0, unsupported))
        user = params.get("user", "")
        database = params.get("database") or user
        self.sock.sendall(pg.AUTH_CLEARTEXT)
        kind, body = reader.read_message()
        if kind != b"p":
            raise QueryServiceError(err.PROTOCOL_VIOLATION, f"expected a password message, got {kind!r}")
        password = body.rstrip(b"\x00").decode("utf-8")
        try:
            self.server._authenticate(user, password, database)
        except PermissionError as exc:
            log.info("authentication failed for user %r on %r: %s", user, database, exc)
            raise QueryServiceError(err.INVALID_PASSWORD, str(exc) or "Invalid password") from exc
        self.server._admit(self)
        self.admitted = True
        self.session = self.server._new_session(self, user, database, params)
        out = [pg.AUTH_OK]
        for key, name in REPORTED.items():
            out.append(pg.parameter_status(name, self.session.settings.get(key, "")))
        out += [pg.backend_key_data(self.pid, self.secret), pg.ready_for_query("I")]
        self.sock.sendall(b"".join(out))
        self.sock.settimeout(None)
        log.debug("session %d: user %r database %r from %s", self.pid, user, database, self.address)
        return True

    # -- messages --
    def _loop(self, reader: pg.MessageReader) -> None:
        assert self.session is not None
        session = self.session
        extended = ExtendedProtocol(session)
        writer = _Writer(self.sock)
        skipping = False  # after an error in an extended batch: ignore everything up to Sync
        while True:
            kind, body = reader.read_message()
            if kind == b"X":
                return
            if skipping and kind not in (b"S", b"Q"):
                continue
            try:
                if kind == b"Q":
                    skipping = False
                    try:
                        sql = body[:-1].decode("utf-8")
                        self._statement_starts(sql)
                        session.simple_query(sql, writer.write)
                    except Exception as exc:  # noqa: BLE001 - reported to the client, session goes on
                        self._error(session, writer, exc)
                    writer.write([pg.ready_for_query(session.tx_status)])
                    writer.flush()
                elif kind == b"S":
                    skipping = False
                    extended.sync()
                    writer.write([pg.ready_for_query(session.tx_status)])
                    writer.flush()
                elif kind == b"H":
                    writer.flush()
                else:
                    self._extended(extended, kind, body, writer)
            except (OSError, pg.ConnectionClosed):
                raise
            except Exception as exc:  # noqa: BLE001 - reported to the client, session goes on
                self._error(session, writer, exc)
                skipping = True

    def _statement_starts(self, sql: str) -> None:
        if self.server._before_statement is not None:
            self.server._before_statement(sql)

    def _error(self, session: Session, writer: _Writer, exc: Exception) -> None:
        """Send an ErrorResponse; FATAL errors end the connection, anything unexpected is XX000."""
        if isinstance(exc, (OSError, pg.ConnectionClosed)):
            raise exc
        if not isinstance(exc, QueryServiceError):
            # A bug in the emulator, not in the client's SQL: say so, log it, keep the session.
            log.exception("session %d: internal error", session.pid)
            exc = QueryServiceError(
                err.INTERNAL_ERROR, f"internal error in the Query Service emulator: {exc!r}"
            )
        if exc.severity == "FATAL":
            raise exc
        log.debug("session %d: %s %s", session.pid, exc.sqlstate, exc.message)
        session.fail()
        writer.write([pg.error_response(exc)])

    def _extended(self, extended: ExtendedProtocol, kind: bytes, body: bytes, writer: _Writer) -> None:
        p = pg.PayloadParser(body)
        if kind == b"P":
            name, sql = p.cstring(), p.cstring()
            oids = [p.int32() for _ in range(p.int16())]
            self._statement_starts(sql)
            extended.parse(name, sql, oids)
            writer.write([pg.PARSE_COMPLETE])
        elif kind == b"B":
            portal, statement = p.cstring(), p.cstring()
            param_formats = [p.int16() for _ in range(p.int16())]
            values: list[bytes | None] = []
            for _ in range(p.int16()):
                length = p.int32()
                values.append(None if length < 0 else p.raw(length))
            result_formats = [p.int16() for _ in range(p.int16())]
            extended.bind(portal, statement, param_formats, values, result_formats)
            writer.write([pg.BIND_COMPLETE])
        elif kind == b"D":
            target, name = p.raw(1), p.cstring()
            if target == b"S":
                oids, columns = extended.describe_statement(name)
                writer.write(
                    [
                        pg.parameter_description(oids),
                        pg.row_description(columns, [0] * len(columns)) if columns else pg.NO_DATA,
                    ]
                )
            else:
                described = extended.describe_portal(name)
                writer.write([pg.row_description(*described) if described else pg.NO_DATA])
        elif kind == b"E":
            name, max_rows = p.cstring(), p.int32()
            extended.execute(name, max_rows, writer.write)
        elif kind == b"C":
            target, name = p.raw(1), p.cstring()
            if target == b"S":
                extended.close_statement(name)
            else:
                extended.close_portal(name)
            writer.write([pg.CLOSE_COMPLETE])
        elif kind in (b"d", b"c", b"f"):
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED, "COPY is not supported by the Query Service emulator"
            )
        elif kind == b"F":
            raise QueryServiceError(err.FEATURE_NOT_SUPPORTED, "function calls are not supported")
        else:
            raise QueryServiceError(err.PROTOCOL_VIOLATION, f"Unsupported message type {kind!r}")
