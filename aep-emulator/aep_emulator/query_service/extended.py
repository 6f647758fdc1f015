"""PostgreSQL's extended query protocol (Parse/Bind/Describe/Execute/Close/Sync) over a
:class:`~aep_emulator.query_service.session.Session`, which holds every piece of state: this layer
only checks names and arities and turns messages into session calls.
See https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY.
"""

from __future__ import annotations

from collections.abc import Callable

from aep_emulator.query_service import errors as err
from aep_emulator.query_service import protocol as pg
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.results import expand_formats
from aep_emulator.query_service.session import Portal, Session, row_tag


class ExtendedProtocol:
    """Parse/Bind/Describe/Execute/Close on top of a :class:`Session` (state lives in the session)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def parse(self, name: str, sql: str, param_oids: list[int]) -> None:
        s = self.session
        if name and name in s.statements:
            raise QueryServiceError(
                err.DUPLICATE_PREPARED_STATEMENT, f'prepared statement "{name}" already exists'
            )
        s.statements[name] = s.prepare(sql, param_oids)

    def bind(
        self,
        portal_name: str,
        statement_name: str,
        param_formats: list[int],
        values: list[bytes | None],
        result_formats: list[int],
    ) -> None:
        s = self.session
        statement = s.statements.get(statement_name)
        if statement is None:
            raise QueryServiceError(
                err.INVALID_SQL_STATEMENT_NAME, f'prepared statement "{statement_name}" does not exist'
            )
        expected = max(statement.param_count, len(statement.param_oids))
        if len(values) != expected:
            raise QueryServiceError(
                err.PROTOCOL_VIOLATION,
                f"bind message supplies {len(values)} parameters, but prepared statement "
                f'"{statement_name}" requires {expected}',
            )
        formats = expand_formats(param_formats, len(values)) if values else []
        oids = statement.param_oids
        params = [
            pg.decode_parameter(v, oids[i] if i < len(oids) else 0, formats[i]) for i, v in enumerate(values)
        ]
        old = s.portals.get(portal_name)
        if old is not None:
            if portal_name:
                raise QueryServiceError(err.DUPLICATE_CURSOR, f'portal "{portal_name}" already exists')
            s.drop_portal(old)
        s.portals[portal_name] = Portal(portal_name, statement, params, list(result_formats))

    def describe_statement(self, name: str) -> tuple[list[int], list[pg.Column] | None]:
        s = self.session
        statement = s.statements.get(name)
        if statement is None:
            raise QueryServiceError(
                err.INVALID_SQL_STATEMENT_NAME, f'prepared statement "{name}" does not exist'
            )
        count = max(statement.param_count, len(statement.param_oids))
        oids = [
            statement.param_oids[i] if i < len(statement.param_oids) and statement.param_oids[i] else pg.TEXT
            for i in range(count)
        ]
        return oids, s.describe_statement(statement)

    def describe_portal(self, name: str) -> tuple[list[pg.Column], list[int]] | None:
        s = self.session
        portal = self._portal(name)
        if portal.outcome is None and portal.statement.kind == "query":
            # Starting the query is how its shape is known; Execute then streams the same result.
            with s.query_scope():
                portal.outcome = s.execute_statement(portal.statement, portal.params, portal.result_formats)
        if portal.outcome is not None:
            rows = portal.outcome.rows
            return (rows.columns, rows.formats) if rows is not None else None
        columns = s.describe_statement(portal.statement)
        if columns is None:
            return None
        return columns, expand_formats(portal.result_formats, len(columns))

    def execute(self, name: str, max_rows: int, write: Callable[[list[bytes]], None]) -> None:
        s = self.session
        portal = self._portal(name)
        with s.query_scope():
            if portal.outcome is None:
                portal.outcome = s.execute_statement(portal.statement, portal.params, portal.result_formats)
            outcome = portal.outcome
            if portal.statement.kind == "empty":
                write([pg.EMPTY_QUERY])
                return
            if outcome.rows is None:
                write([pg.command_complete(outcome.tag)])
                write([pg.parameter_status(n, v) for n, v in outcome.reported])
                return
            count, done = s.send_rows(outcome, max_rows if max_rows > 0 else None, write)
            write([pg.command_complete(row_tag(outcome, count)) if done else pg.PORTAL_SUSPENDED])

    def close_statement(self, name: str) -> None:
        self.session.statements.pop(name, None)

    def close_portal(self, name: str) -> None:
        portal = self.session.portals.get(name)
        if portal is not None:
            self.session.drop_portal(portal)

    def sync(self) -> None:
        """End of an extended-protocol batch: outside a transaction block its portals are gone."""
        s = self.session
        if s.tx_status == "I":
            for portal in [p for p in s.portals.values() if not p.holdable]:
                s.drop_portal(portal)

    def _portal(self, name: str) -> Portal:
        portal = self.session.portals.get(name)
        if portal is None:
            raise QueryServiceError(err.INVALID_CURSOR_NAME, f'portal "{name}" does not exist')
        return portal
