"""Query Service limits: 50,000 rows per ad hoc query, explicit LIMIT cap, statement timeout, cancel."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from contextlib import closing
from typing import Any

import psycopg
import psycopg2
import pytest

MEMBERS_SQL = """SELECT personID, key AS audienceId
FROM (SELECT _demoemea.identification.core.email AS personID, explode(segmentMembership.ups)
      FROM {table} WHERE _acp_batchid = '{batch}')
WHERE key IN ('aud-A', 'aud-B') AND value.status IN ('realized', 'existing'){extra}"""
SLOW_SQL = "SELECT count(*) FROM range(1000000000000) r(i) WHERE i % 7 = 3"


def _members(qs: Any, extra: str = "") -> str:
    return MEMBERS_SQL.format(table=qs.BIG_TABLE, batch=qs.BIG_BATCH[0], extra=extra)


def test_over_the_row_cap_is_cut_silently_as_in_production(dsn: dict[str, Any], qs: Any) -> None:
    """Production applies an implicit LIMIT 50000 to ad hoc results: no error, rows just missing."""
    sql = _members(qs)
    with psycopg2.connect(**dsn) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        assert len(cur.fetchall()) == 50_000
        named = conn.cursor("cut")
        named.execute(sql)
        assert sum(len(b) for b in iter(lambda: named.fetchmany(7_000), [])) == 50_000
    with psycopg.connect(**dsn) as conn:
        assert len(conn.execute(sql).fetchall()) == 50_000


def test_over_the_row_cap_fails_in_error_mode(database: Any, tls: Any, qs: Any) -> None:
    server = qs.start_server(database, tls, over_limit="error")
    try:
        _assert_over_the_cap_fails(qs.dsn_for(server, tls), qs)
    finally:
        server.stop()


def _assert_over_the_cap_fails(dsn: dict[str, Any], qs: Any) -> None:
    sql = _members(qs)
    with psycopg2.connect(**dsn) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg2.errors.ConfigurationLimitExceeded) as info:  # SQLSTATE 53400
            cur.execute(sql)
        assert "50,000 rows" in info.value.pgerror
        conn.rollback()
        named = conn.cursor("too_big")
        with pytest.raises(psycopg2.errors.ConfigurationLimitExceeded):
            named.execute(sql)  # DECLARE fails before any FETCH could return part of the result
            named.fetchmany(10)
        conn.rollback()
        cur.execute(sql + " LIMIT 50000")  # an explicit LIMIT is honoured
        assert len(cur.fetchall()) == 50_000
    with psycopg.connect(**dsn) as conn:
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute(sql)


def test_explicit_limits(dsn: dict[str, Any], qs: Any) -> None:
    with closing(psycopg2.connect(**dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(_members(qs) + " LIMIT 60000")  # above the implicit cap, within the LIMIT cap
        assert len(cur.fetchall()) == 60_000
        with pytest.raises(psycopg2.errors.ConfigurationLimitExceeded, match="LIMIT exceeds max value"):
            cur.execute(_members(qs) + " LIMIT 100001")


def test_limit_zero_override_streams_through_a_named_cursor(dsn: dict[str, Any], qs: Any) -> None:
    """Query Service documents LIMIT 0 as the override of the row cap; rows stream via FETCH."""
    with psycopg2.connect(**dsn) as conn:
        cur = conn.cursor("all_members")
        cur.itersize = 20_000
        cur.execute(_members(qs, " AND key = 'aud-B'") + " LIMIT 0")
        count = 0
        for _person, _audience in cur:
            count += 1
        assert count == qs.BIG_PROFILES


def test_hash_partitioned_read_returns_every_membership_once(dsn: dict[str, Any], qs: Any) -> None:
    expected = {
        (qs.big_email(i), audience) for i in range(qs.BIG_PROFILES) for audience in ("aud-A", "aud-B")
    }
    n = math.ceil(len(expected) / 45_000)
    seen: Counter[tuple[str, str]] = Counter()
    with closing(psycopg2.connect(**dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        for i in range(n):
            cur.execute(_members(qs, f"\n  AND pmod(hash(personID), {n}) = {i}"))
            rows = cur.fetchall()
            assert 0 < len(rows) <= 50_000
            seen.update(rows)
    assert len(expected) == 500_000
    assert set(seen) == expected and set(seen.values()) == {1}


@pytest.fixture(scope="module")
def quick_timeout_dsn(database: Any, tls: Any, qs: Any) -> Any:
    server = qs.start_server(database, tls, timeout_seconds=1.0)
    yield qs.dsn_for(server, tls)
    server.stop()


def test_statement_timeout_interrupts_the_query(quick_timeout_dsn: dict[str, Any]) -> None:
    with closing(psycopg2.connect(**quick_timeout_dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.ConfigurationLimitExceeded, match="Statement timeout"):
            cur.execute(SLOW_SQL)
        assert time.monotonic() - started < 10
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_cancel_request_stops_the_running_query(dsn: dict[str, Any]) -> None:
    # psycopg 3's cancel_safe() waits without holding the GIL; psycopg2's cancel() blocks the whole
    # interpreter, which deadlocks against a server running in the same process as the test.
    with psycopg.connect(**dsn, autocommit=True) as conn:
        cancelled: list[BaseException] = []

        def cancel() -> None:
            try:
                conn.cancel_safe(timeout=5)
            except BaseException as exc:  # surfaced by the assertion below
                cancelled.append(exc)

        timer = threading.Timer(0.5, cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(SLOW_SQL)
        finally:
            timer.join()
        assert not cancelled
        assert conn.execute("SELECT 1").fetchone() == (1,)
