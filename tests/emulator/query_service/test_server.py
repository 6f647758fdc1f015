"""Real clients against the Query Service emulator: psycopg2, psycopg 3, SQLAlchemy, PostgresHook.

Every connection verifies the server certificate against the test CA (``sslmode=verify-full``).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import struct
from contextlib import closing
from decimal import Decimal
from typing import Any

import psycopg
import psycopg2
import psycopg2.extensions
import pytest

TYPES_SQL = """
SELECT 1 AS i4, CAST(2 AS BIGINT) AS i8, CAST(1.5 AS DOUBLE) AS f8, CAST(12.25 AS DECIMAL(10, 2)) AS num,
       true AS yes, 'text é' AS t, DATE '2026-11-28' AS d, TIMESTAMP '2026-11-28 10:11:12.5' AS ts,
       CAST(NULL AS VARCHAR) AS nothing
"""
TYPES_EXPECTED = (
    1,
    2,
    1.5,
    Decimal("12.25"),
    True,
    "text é",
    dt.date(2026, 11, 28),
    dt.datetime(2026, 11, 28, 10, 11, 12, 500000),
    None,
)
# PostgreSQL type OIDs: int4, int8, float8, numeric, bool, text, date, timestamp, text
TYPES_OIDS = [23, 20, 701, 1700, 16, 25, 1082, 1114, 25]


def test_psycopg2_over_verified_tls_with_postgres_types(dsn: dict[str, Any]) -> None:
    with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
        assert conn.info.ssl_in_use
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
        assert conn.info.parameter_status("integer_datetimes") == "on"
        assert conn.info.parameter_status("TimeZone") == "UTC"
        assert conn.info.parameter_status("DateStyle").startswith("ISO")
        cur.execute(TYPES_SQL)
        assert cur.fetchone() == TYPES_EXPECTED
        assert [c.type_code for c in cur.description] == TYPES_OIDS
        assert [c.name for c in cur.description][:3] == ["i4", "i8", "f8"]


def test_psycopg3_text_and_binary_results_and_parameters(dsn: dict[str, Any]) -> None:
    with psycopg.connect(**dsn) as conn:
        assert conn.info.backend_pid > 0
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(TYPES_SQL)
                assert cur.fetchone() == TYPES_EXPECTED
                assert [c.type_code for c in cur.description] == TYPES_OIDS
        params = (
            7,
            2.5,
            True,
            Decimal("3.25"),
            dt.date(2026, 1, 2),
            dt.datetime(2026, 1, 2, 3, 4, 5),
            "it's \\ ok",
        )
        sql = "SELECT %s + 1, %s * 2, NOT %s, %s + 1, %s, %s, %s"
        expected = (
            8,
            5.0,
            False,
            Decimal("4.25"),
            dt.date(2026, 1, 2),
            dt.datetime(2026, 1, 2, 3, 4, 5),
            "it's \\ ok",
        )
        with conn.cursor() as cur:
            cur.execute(sql, params)  # text-format parameters with type OIDs
            assert cur.fetchone() == expected
            cur.execute(sql.replace("%s", "%b"), params)  # binary-format parameters
            assert cur.fetchone() == expected
            for _ in range(8):  # past psycopg's prepare threshold: named statements, Bind only
                cur.execute("SELECT %s::int * 2", (21,))
                assert cur.fetchone() == (42,)


def test_psycopg3_server_cursor_in_binary(dsn: dict[str, Any]) -> None:
    """psycopg 3 asks FETCH for binary rows of a cursor declared as text: the server re-encodes."""
    with psycopg.connect(**dsn) as conn, conn.cursor(name="typed", binary=True) as cur:
        cur.execute(TYPES_SQL + " UNION ALL " + TYPES_SQL)
        assert cur.fetchmany(1) == [TYPES_EXPECTED]
        assert cur.fetchall() == [TYPES_EXPECTED]


def test_plaintext_startup_is_refused(server: Any, dsn: dict[str, Any]) -> None:
    with pytest.raises(psycopg2.OperationalError, match="SSL connection is required"):
        psycopg2.connect(**{**dsn, "sslmode": "disable"})


def test_wrong_token_fails_authentication(dsn: dict[str, Any]) -> None:
    with pytest.raises(psycopg2.OperationalError, match="Invalid authentication token"):
        psycopg2.connect(**{**dsn, "password": "not-a-token"})
    with pytest.raises(psycopg.OperationalError, match="No tables found for dbName"):
        psycopg.connect(**{**dsn, "dbname": "other:all"})


def _startup_packet(code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!ii", 8 + len(payload), code) + payload


def test_gssenc_declined_then_tls_and_cleartext_auth(server: Any, tls: Any, qs: Any) -> None:
    """Raw startup: GSSENCRequest -> 'N', SSLRequest -> 'S', then AuthenticationCleartextPassword."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(_startup_packet(80877104))
        assert raw.recv(1) == b"N"
        raw.sendall(_startup_packet(80877103))
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            params = b"user\x00" + qs.USER.encode() + b"\x00database\x00prod:all\x00\x00"
            sock.sendall(_startup_packet(196608, params))
            kind, length, auth = struct.unpack("!cii", sock.recv(9))
            assert (kind, auth) == (b"R", 3)  # cleartext password, the only type Query Service accepts


def test_newer_protocol_minor_version_is_negotiated_down(server: Any, tls: Any, qs: Any) -> None:
    """A 3.2 startup (libpq 18 can ask for it) gets NegotiateProtocolVersion: 3.0, then auth as usual."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(_startup_packet(80877103))
        assert raw.recv(1) == b"S"
        with ssl.create_default_context(cafile=str(tls.ca)).wrap_socket(
            raw, server_hostname="127.0.0.1"
        ) as sock:
            params = b"user\x00u\x00database\x00prod:all\x00_pq_.future\x00x\x00\x00"
            sock.sendall(_startup_packet((3 << 16) | 2, params))
            negotiate, auth = _read_messages(sock, b"R")
            assert negotiate == (b"v", struct.pack("!ii", 0, 1) + b"_pq_.future\x00")
            assert auth == (b"R", struct.pack("!i", 3))


def test_sqlalchemy_engine_probes_and_pandas(dsn: dict[str, Any], qs: Any) -> None:
    """SQLAlchemy's connect-time probes (version, current_schema, isolation level, hstore) get answers."""
    import pandas as pd
    import sqlalchemy as sa

    url = sa.engine.URL.create(
        "postgresql+psycopg",
        username=dsn["user"],
        password=dsn["password"],
        host=dsn["host"],
        port=dsn["port"],
        database=dsn["dbname"],
    )
    engine = sa.create_engine(url, connect_args={"sslmode": "verify-full", "sslrootcert": dsn["sslrootcert"]})
    try:
        with engine.connect() as conn:
            assert engine.dialect.server_version_info[:2] == (9, 6)
            assert engine.dialect.default_schema_name == "public"
            df = pd.read_sql(
                sa.text(
                    f"SELECT _acp_batchid, count(*) AS n FROM {qs.SMALL_TABLE} "
                    "WHERE _acp_batchid = :batch GROUP BY _acp_batchid"
                ),
                conn,
                params={"batch": qs.BATCHES[0][0]},
            )
        assert df.to_dict("records") == [{"_acp_batchid": qs.BATCHES[0][0], "n": 120}]
    finally:
        engine.dispose()


@pytest.fixture
def hook_conn_id(monkeypatch: pytest.MonkeyPatch, dsn: dict[str, Any]) -> str:
    tls = {"sslmode": "verify-full", "sslrootcert": dsn["sslrootcert"]}
    monkeypatch.setenv(
        "AIRFLOW_CONN_QS_EMULATOR",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": dsn["host"],
                "port": dsn["port"],
                "login": dsn["user"],
                "password": dsn["password"],
                "schema": dsn["dbname"],
                "extra": {**tls, "sqlalchemy_query": tls},
            }
        ),
    )
    return "qs_emulator"


def test_unmodified_postgres_hook(hook_conn_id: str, qs: Any) -> None:
    from airflow.providers.common.sql.hooks.handlers import fetch_all_handler
    from airflow.providers.postgres.hooks.postgres import USE_PSYCOPG3, PostgresHook

    assert USE_PSYCOPG3  # the provider picks psycopg 3 next to SQLAlchemy 2: extended protocol
    hook = PostgresHook(postgres_conn_id=hook_conn_id)
    batch, source = qs.BATCHES[1]
    count_sql = f"SELECT count(*) FROM {qs.SMALL_TABLE} WHERE _acp_system_metadata.acp_sourceBatchId = %s"
    assert hook.get_first(count_sql, parameters=(source,)) == (120,)
    rows = hook.get_records(
        f"SELECT _{qs.TENANT}.identification.core.email FROM {qs.SMALL_TABLE} "
        "WHERE _acp_batchid = %(b)s ORDER BY 1 NULLS LAST LIMIT 3",
        parameters={"b": batch},
    )
    assert [r[0] for r in rows] == ["user000@example.com", "user001@example.com", "user002@example.com"]
    assert hook.run("SELECT 'a' AS x UNION ALL SELECT 'b'", handler=fetch_all_handler) == [("a",), ("b",)]
    df = hook.get_df(count_sql, parameters=(source,))
    assert df.iloc[0, 0] == 120
    with hook.get_conn() as conn, conn.cursor(name="hook_stream") as cur:
        cur.itersize = 50
        cur.execute(f"SELECT _acp_batchid FROM {qs.SMALL_TABLE} WHERE _acp_batchid = %s", (batch,))
        assert sum(1 for _ in cur) == 120


def test_errors_carry_sqlstates_and_the_session_survives(dsn: dict[str, Any], qs: Any) -> None:
    cases = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        ("SELECT * FROM emulator_internal_state", "42P01"),  # the DuckDB file is not the sandbox
        (f"SELECT no_such_column FROM {qs.SMALL_TABLE}", "42703"),
        ("SELECT * FROM read_csv('/etc/passwd')", "0A000"),
        (f"CREATE TABLE x AS SELECT * FROM {qs.SMALL_TABLE}", "0A000"),
        (f"SELECT * FROM {qs.SMALL_TABLE} SNAPSHOT SINCE 123", "0A000"),
        ("SELECT 1/0 = 1, CAST('x' AS INT)", None),  # TRY_CAST semantics: NULL, not an error (Spark)
    ]
    with closing(psycopg2.connect(**dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        for sql, sqlstate in cases:
            if sqlstate is None:
                cur.execute(sql)
                cur.fetchall()
                continue
            with pytest.raises(psycopg2.Error) as info:
                cur.execute(sql)
            assert info.value.pgcode == sqlstate, (sql, info.value.pgerror)
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_an_emulator_bug_is_an_internal_error_not_a_dropped_connection(
    dsn: dict[str, Any], server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sql: str, ctx: Any) -> Any:
        raise RuntimeError("translator bug")

    with closing(psycopg2.connect(**dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        with monkeypatch.context() as patch:
            patch.setattr(server.translator, "translate", broken)
            with pytest.raises(psycopg2.errors.InternalError_) as info:
                cur.execute("SELECT 1")
        assert "translator bug" in info.value.pgerror
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_transaction_status_and_savepoints(dsn: dict[str, Any]) -> None:
    ext = psycopg2.extensions
    with psycopg2.connect(**dsn) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
        with pytest.raises(psycopg2.errors.UndefinedTable):
            cur.execute("SELECT * FROM missing")
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_INERROR
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
        cur.execute("SAVEPOINT before_error")
        with pytest.raises(psycopg2.errors.SyntaxError):
            cur.execute("SELECT FROM WHERE")
        cur.execute("ROLLBACK TO SAVEPOINT before_error")
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
        cur.execute("RELEASE SAVEPOINT before_error")
        conn.commit()
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE


def test_set_show_reset_and_multi_statement_queries(dsn: dict[str, Any]) -> None:
    with psycopg.connect(**dsn, autocommit=True) as conn:
        assert conn.execute("SHOW transaction isolation level").fetchone() == ("read committed",)
        assert conn.execute("show standard_conforming_strings").fetchone() == ("on",)
        conn.execute("SET application_name = 'qs-test'")
        assert conn.info.parameter_status("application_name") == "qs-test"  # ParameterStatus after SET
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("qs-test",)
        conn.execute("RESET application_name")
        assert conn.execute("SHOW application_name").fetchone() == ("",)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SHOW no_such_setting")
    with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
        cur.execute("SET auto_to_json = true; SELECT 1 AS a; SELECT 2 AS b")  # the last result is kept
        assert cur.fetchall() == [(2,)]
        cur.execute("SHOW auto_to_json")
        assert cur.fetchone() == ("true",)


def test_psycopg2_named_cursors(dsn: dict[str, Any], qs: Any) -> None:
    """DECLARE/FETCH/MOVE/CLOSE as psycopg2 sends them, with and without hold."""
    with psycopg2.connect(**dsn) as conn:
        cur = conn.cursor("members")
        cur.itersize = 100
        cur.execute(
            f"SELECT _acp_batchid, _{qs.TENANT}.identification.core.email FROM {qs.SMALL_TABLE} "
            "ORDER BY _acp_batchid"
        )
        assert cur.fetchmany(5)[0][0] == qs.BATCHES[0][0]
        cur.scroll(10)  # MOVE 10: skipped server-side
        rest = cur.fetchall()
        assert len(rest) == len(qs.SMALL_ROWS) - 15
        with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState, match="can only scan forward"):
            cur.scroll(-1)  # the emulator's cursors are NO SCROLL
        conn.rollback()
        held = conn.cursor("held", withhold=True)
        held.execute(f"SELECT _acp_batchid FROM {qs.SMALL_TABLE}")
        conn.commit()  # a WITH HOLD cursor survives the end of its transaction
        assert len(held.fetchall()) == len(qs.SMALL_ROWS)
        held.close()


def test_sql_cursor_prepare_and_explain_commands(dsn: dict[str, Any]) -> None:
    with closing(psycopg2.connect(**dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()

        def run(sql: str) -> tuple[str, list[tuple[Any, ...]] | None]:
            cur.execute(sql)
            return cur.statusmessage, cur.fetchall() if cur.description else None

        with pytest.raises(psycopg2.errors.NoActiveSqlTransaction):
            cur.execute("DECLARE outside CURSOR FOR SELECT 1")
        run("BEGIN")
        assert run("DECLARE c CURSOR FOR SELECT i FROM range(10) r(i) ORDER BY i") == ("DECLARE CURSOR", None)
        assert run("FETCH 2 FROM c") == ("FETCH 2", [(0,), (1,)])
        assert run("MOVE 3 FROM c") == ("MOVE 3", None)
        assert run("FETCH NEXT FROM c") == ("FETCH 1", [(5,)])
        assert run("FETCH ABSOLUTE 9 FROM c") == ("FETCH 1", [(8,)])
        assert run("FETCH ALL FROM c") == ("FETCH 1", [(9,)])
        with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState):
            cur.execute("FETCH PRIOR FROM c")
        run("ROLLBACK")
        assert run("PREPARE twice (int) AS SELECT $1 * 2") == ("PREPARE", None)
        assert run("EXECUTE twice (21)") == ("SELECT 1", [(42,)])
        run("DEALLOCATE twice")
        with pytest.raises(psycopg2.errors.InvalidSqlStatementName):
            cur.execute("EXECUTE twice (1)")
        status, plan = run("EXPLAIN SELECT count(*) FROM range(5) r(i)")
        assert status == "EXPLAIN" and plan


def _read_messages(sock: ssl.SSLSocket, until: bytes) -> list[tuple[bytes, bytes]]:
    messages, buf = [], b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack_from("!i", buf, 1)[0]:
            chunk = sock.recv(65536)
            assert chunk, "server closed the connection"
            buf += chunk
        length = struct.unpack_from("!i", buf, 1)[0]
        messages.append((buf[:1], buf[5 : 1 + length]))
        buf = buf[1 + length :]
        if messages[-1][0] == until:
            return messages


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def test_extended_protocol_row_limits_describe_and_close(server: Any, tls: Any, qs: Any) -> None:
    """Parse/Bind/Describe/Execute(max_rows)/Close/Flush/Sync, as a raw frontend."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(_startup_packet(80877103))
        assert raw.recv(1) == b"S"
        with ssl.create_default_context(cafile=str(tls.ca)).wrap_socket(
            raw, server_hostname="127.0.0.1"
        ) as sock:
            sock.sendall(_startup_packet(196608, b"user\x00u\x00database\x00prod:all\x00\x00"))
            _read_messages(sock, b"R")
            sock.sendall(_msg(b"p", qs.TOKEN.encode() + b"\x00"))
            _read_messages(sock, b"Z")
            sql = b"SELECT * FROM range(5) r(i) WHERE i >= $1\x00"
            sock.sendall(
                _msg(b"P", b"st\x00" + sql + struct.pack("!hi", 1, 20))
                + _msg(b"D", b"Sst\x00")
                # one binary parameter (int8 1), no result format codes (text)
                + _msg(b"B", b"pt\x00st\x00" + struct.pack("!hhhiqh", 1, 1, 1, 8, 1, 0))
                + _msg(b"D", b"Ppt\x00")
                + _msg(b"E", b"pt\x00" + struct.pack("!i", 2))
                + _msg(b"H", b"")
            )
            first = _read_messages(sock, b"s")  # PortalSuspended after 2 rows, sent on Flush
            kinds = [k for k, _ in first]
            assert kinds == [b"1", b"t", b"T", b"2", b"T", b"D", b"D", b"s"]
            assert struct.unpack("!hi", first[1][1]) == (1, 20)  # ParameterDescription: int8
            sock.sendall(
                _msg(b"E", b"pt\x00" + struct.pack("!i", 0))
                + _msg(b"C", b"Ppt\x00")
                + _msg(b"C", b"Sst\x00")
                + _msg(b"S", b"")
            )
            rest = _read_messages(sock, b"Z")
            assert [k for k, _ in rest] == [b"D", b"D", b"C", b"3", b"3", b"Z"]
            assert rest[2][1] == b"SELECT 2\x00"
            sock.sendall(_msg(b"X", b""))
