"""QueryServiceHook: Query Service through an unmodified PostgresHook, credentials from the Adobe connection.

Query Service speaks the PostgreSQL wire protocol: user = IMS org id, password = an IMS access token,
database ``{sandbox}:all``, TLS required. This hook derives all of that from the Adobe connection
(fetching a fresh token for every new database connection) and streams results through a
server-side cursor so memory does not grow with the result.

A statement that fails because the connection dropped or Query Service was briefly unavailable is
run again on a new connection, with the Adobe connection's retry policy (and counted under route
``query_service.query``): Query Service closes connections now and then, and a whole task retry
for each would make a run slow and, with several queries per task, fragile.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

import tenacity

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import Connection
from airflow.sdk.log import mask_secret

from airflow_cja_audiences import CONN_TYPE, DEFAULT_CONN_ID, scanplan
from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.hooks.platform import AdobePlatformHook

log = logging.getLogger(__name__)

DEFAULT_PORT = 80  # Query Service listens on 80 and still requires TLS
ROW_LIMIT_SQLSTATE = "53400"  # production's ad hoc limits: the row cap *and* the 10-minute timeout
ROUTE = "query_service.query"  # retry counts and logs, like the REST routes
# Connection exceptions (class 08), shutdown/restart/busy (57P01-57P03), too many connections (53300).
_TRANSIENT_SQLSTATES = ("57P01", "57P02", "57P03", "53300")
# Query Service refuses a session past the org's licensed concurrent sessions with this text (Adobe's
# guardrails doc). It comes while connecting, where the drivers keep no SQLSTATE, so the text is what
# identifies it: another client (a person in the UI, another DAG) holds the slots, and a later attempt
# succeeds once one is free - transient, retried with backoff, never a failed statement.
SESSION_LIMIT_TEXT = "session limit reached"
T = TypeVar("T")


class QueryServiceError(AepError):
    """A Query Service statement failed; carries the SQLSTATE and whether trying again may help.

    ``transient``: a new connection may succeed at once (dropped connection, restart). ``permanent``:
    no retry can succeed (authentication refused, TLS certificate not trusted, a statement Query
    Service rejects) - see :func:`airflow_cja_audiences.errors.is_permanent`.
    """

    def __init__(
        self,
        message: str,
        sqlstate: str | None,
        *,
        transient: bool = False,
        permanent: bool = False,
        server_message: str | None = None,
    ):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.transient = transient
        self.permanent = permanent
        self.server_message = (
            server_message if server_message is not None else message
        )  # Query Service's own words

    @property
    def is_limit(self) -> bool:
        """SQLSTATE 53400: the row cap or the 10-minute timeout (see :attr:`limit_kind`)."""
        return self.sqlstate == ROW_LIMIT_SQLSTATE

    @property
    def is_session_limit(self) -> bool:
        """The org's concurrent Query Service sessions are all in use (transient)."""
        return self.sqlstate == "53300" or SESSION_LIMIT_TEXT in str(self).lower()

    @property
    def limit_kind(self) -> scanplan.LimitKind | None:
        """For a 53400: ``"timeout"``, ``"rows"`` or ``"unknown"``, told apart by the server's message
        (not by the statement quoted in ours, which may say LIMIT); None for any other error."""
        return scanplan.limit_kind(self.server_message) if self.is_limit else None


class _QueryServiceConnection(Connection):
    """The derived Postgres connection; its password is an access token, so repr/str never show it."""

    def __repr__(self) -> str:
        return (
            f"Connection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, host={self.host!r}, "
            f"port={self.port!r}, schema={self.schema!r}, login={self.login!r}, password='***')"
        )

    __str__ = __repr__


class QueryServiceHook(PostgresHook):
    """PostgresHook for AEP Query Service built from an ``adobe_experience_platform`` connection.

    :param adobe_conn_id: the Adobe connection (not a Postgres one).
    :param sandbox: overrides the connection's sandbox.
    """

    conn_name_attr = "adobe_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Adobe Experience Platform Query Service"

    def __init__(
        self,
        adobe_conn_id: str = DEFAULT_CONN_ID,
        *,
        sandbox: str | None = None,
        platform_hook: AdobePlatformHook | None = None,
        connect_timeout: int = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(adobe_conn_id=adobe_conn_id, **kwargs)
        self.adobe_conn_id = adobe_conn_id
        self.sandbox_override = sandbox
        self._platform_hook = platform_hook
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        sandbox = f", sandbox={self.sandbox_override!r}" if self.sandbox_override else ""
        return f"{type(self).__name__}(adobe_conn_id={self.adobe_conn_id!r}{sandbox})"

    @cached_property
    def platform(self) -> AdobePlatformHook:
        return self._platform_hook or AdobePlatformHook(self.adobe_conn_id, sandbox=self.sandbox_override)

    @cached_property
    def _endpoint(self) -> tuple[str, int, str]:
        """(host, port, database): from the connection's extras, else Query Service's own answer."""
        s = self.platform.settings
        host, port, database = s.query_service_host, s.query_service_port, s.query_service_database
        if host is None:
            params = self.platform.request_json(
                "GET", "/data/foundation/query/connection_parameters", route="query.connection_parameters"
            )
            host = params.get("host")
            port = port or params.get("port")
            if not host:
                raise AepError(
                    "Query Service did not return a host; set the connection's query_service_host extra"
                )
        return host, int(port or DEFAULT_PORT), database or f"{s.sandbox}:all"

    @property
    def connection(self) -> Connection:  # type: ignore[override]
        """A Postgres connection with a fresh IMS token as password (never stored anywhere)."""
        host, port, database = self._endpoint
        s = self.platform.settings
        token = self.platform.get_access_token()
        mask_secret(token)
        # verify-full: TLS *and* certificate/host checks (Adobe's docs say 'require', which checks nothing).
        extra = {
            "sslmode": "verify-full",
            "sslrootcert": s.ca_bundle or "system",
            "application_name": "airflow-cja-audiences",
            "connect_timeout": self.connect_timeout,
            "gssencmode": "disable",
        }
        return _QueryServiceConnection(
            conn_id=f"{self.adobe_conn_id}__query_service",
            conn_type="postgres",
            host=host,
            port=port,
            login=s.org_id,
            password=token,
            schema=database,
            extra=json.dumps(extra),
        )

    @connection.setter
    def connection(self, value: Any) -> None:  # DbApiHook's setter exists for old providers only
        raise AttributeError("QueryServiceHook derives its connection from the Adobe connection")

    def check(self) -> str:
        """Connect (TLS with certificate checks, IMS token as password) and run ``SELECT 1``.

        Returns what was reached; raises :class:`QueryServiceError` saying what failed and what to check
        (``permanent`` for refused credentials or an untrusted certificate). A connection that cannot be
        opened is reported at once (no retry here: a blocked port would only make the caller wait), except
        when the org's sessions are all in use ("Session Limit Reached"), which waits for a free one; a
        statement that fails on an open connection is run again like any other (:meth:`retrying`).
        """
        host, port, database = self._endpoint
        where = f"Query Service at {host}:{port} (database {database!r})"

        def select_1() -> None:
            try:
                conn = self.get_conn()
            except Exception as exc:
                raise _connect_error(exc, where) from None
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT 1")
                    row = cursor.fetchone()
            except Exception as exc:
                raise _wrap(exc, "SELECT 1") from None
            finally:
                conn.close()
            if not row or row[0] != 1:
                raise QueryServiceError(f"{where} answered SELECT 1 with {row!r}", None, permanent=True)

        self.retrying(select_1)
        return f"{where} answered SELECT 1"

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test for Query Service: TLS, authentication, ``SELECT 1``."""
        try:
            return True, self.check()
        except AepError as exc:
            return False, str(exc)

    def retrying(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which opens its own connection), again after a transient Query Service error."""
        args = self.platform._retrying_args(ROUTE, idempotent=True)
        args["retry"] = tenacity.retry_if_exception(
            lambda e: isinstance(e, QueryServiceError) and e.transient
        )
        return tenacity.Retrying(**args)(work)

    def stream(
        self, sql: str, *, batch_size: int = 10_000, prefetch: int = 2
    ) -> Iterator[Sequence[Sequence[Any]]]:
        """Yield result batches (lists of rows) from a server-side cursor (``DECLARE``/``FETCH``).

        The whole result never sits in memory; Query Service's per-query row limit still applies.
        Rows already yielded cannot be taken back, so a caller that wants a transient failure retried
        consumes the stream inside :meth:`retrying` and discards what a failed attempt produced.
        With ``prefetch`` > 0, up to that many batches are fetched ahead in a background thread, so
        the server's work overlaps the caller's (the driver releases the GIL while it waits).
        """
        from airflow_cja_audiences.transform import prefetch_batches

        conn = _unchained(self.get_conn, "(connecting)")
        error: Exception | None = None
        try:
            with conn.cursor(name=f"cja_{uuid.uuid4().hex[:12]}") as cursor:
                try:
                    cursor.execute(sql)
                    if prefetch > 0:
                        yield from prefetch_batches(cursor, batch_size, depth=prefetch)
                    else:
                        while batch := cursor.fetchmany(batch_size):
                            yield batch
                except Exception as exc:
                    error = _wrap(exc, sql)
                if error is not None:
                    raise error
            conn.rollback()  # read-only; ends the cursor's transaction
        except QueryServiceError as exc:
            error = exc
        except Exception as exc:
            # Closing the server-side cursor on a connection that just dropped fails too, and that error
            # would replace the one that says what happened (a drop to retry, a row limit to split on).
            error = exc.__context__ if isinstance(exc.__context__, QueryServiceError) else _wrap(exc, sql)
        finally:
            conn.close()
        if error is not None:
            # Raised outside every except block (see _unchained): no driver exception, which may hold the
            # connection and so the token, is chained to it.
            error.__context__ = None
            raise error

    def query_all(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a statement whose result is small (counts, aggregates) and return its rows
        (again on a new connection after a transient error)."""
        return self.retrying(lambda: [tuple(r) for r in _unchained(lambda: self.get_records(sql), sql)])


def _unchained(work: Callable[[], T], sql: str) -> T:
    """Run ``work``; a driver error becomes a :class:`QueryServiceError` raised *outside* the except block,
    so the driver's exception is not its ``__context__``: psycopg's error for a failed connection
    attempt holds the libpq connection, whose ``password`` is the IMS access token."""
    error: Exception | None = None
    try:
        return work()
    except Exception as exc:
        error = _wrap(exc, sql)
    raise error


def _connect_error(exc: Exception, where: str) -> Exception:
    """Why a connection could not be opened, with what to check; never retried by :meth:`check`."""
    error = _wrap(exc, "connect")
    if not isinstance(error, QueryServiceError):
        return exc
    hint = (
        "check the connection's ca_bundle (TLS is always verified)"
        if _is_tls(exc)
        else "check the org id, the credentials' Query Service permissions and the sandbox"
        if error.permanent
        else "is the port reachable from the workers (a firewall or proxy may block it; Adobe's is 80)? Set the "
        "query_service_host/query_service_port extras if it is elsewhere"
    )
    if error.is_session_limit:
        hint = (
            "all of the org's concurrent Query Service sessions are in use (other clients, or more load "
            "tasks than the licence allows: keep the Query Service pool below it)"
        )
    return QueryServiceError(
        f"cannot connect to {where}: {_first_line(exc)}; {hint}",
        error.sqlstate,
        permanent=error.permanent,
        transient=error.is_session_limit,
    )


def _is_tls(exc: BaseException) -> bool:
    """The certificate is not trusted (or TLS is misconfigured): not "SSL SYSCALL error: EOF detected"
    and the like, which are connections dropped under TLS and worth a retry."""
    text = str(exc).lower()
    return "certificate verify failed" in text or "invalid sslmode" in text or "sslrootcert" in text


def _login_refused(text: str) -> bool:
    """The server answered the connection with FATAL about who we are or where we asked to go."""
    if "authentication failed" in text:
        return True
    return "fatal:" in text and any(
        w in text for w in ("password", "token", "role", "database", "permission")
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _wrap(exc: Exception, sql: str) -> Exception:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if sqlstate is None and not exc.__class__.__module__.startswith(("psycopg", "psycopg2")):
        return exc
    tls = sqlstate is None and _is_tls(exc)
    session_limit = SESSION_LIMIT_TEXT in str(exc).lower()
    # The drivers give a login the server refused while connecting no SQLSTATE, only its FATAL message.
    refused = sqlstate is None and not session_limit and _login_refused(str(exc).lower())
    # A lost connection has no SQLSTATE; both drivers raise the DB-API OperationalError for it.
    lost = (
        sqlstate is None
        and not (tls or refused)
        and any(c.__name__ == "OperationalError" for c in type(exc).__mro__)
    )
    transient = lost or session_limit or (sqlstate or "").startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
    # Refused credentials (class 28) and an untrusted certificate stay so however often we ask.
    permanent = tls or refused or (sqlstate or "").startswith("28")
    first_line = " ".join(sql.split())[:300]
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0:1]
    return QueryServiceError(
        f"Query Service error {sqlstate or '?'}: {str(exc).strip()} -- in: {first_line}",
        sqlstate,
        transient=transient,
        permanent=permanent,
        server_message=primary if isinstance(primary, str) else " ".join(primary),
    )
