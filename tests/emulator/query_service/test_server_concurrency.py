"""Several clients at once, and a fetch-rate measurement (printed, not asserted)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import psycopg2
import pytest

PARTITION_SQL = """SELECT personID, key
FROM (SELECT _demoemea.identification.core.email AS personID, explode(segmentMembership.ups)
      FROM {table} WHERE _acp_system_metadata.acp_sourceBatchId = '{source}')
WHERE key = 'aud-A' AND pmod(hash(personID), 8) = {bucket}"""


def test_four_clients_at_once(dsn: dict[str, Any], qs: Any) -> None:
    """Four sessions (two psycopg2, two psycopg 3) read different partitions concurrently."""

    def read(bucket: int) -> set[tuple[str, str]]:
        sql = PARTITION_SQL.format(table=qs.BIG_TABLE, source=qs.BIG_BATCH[1], bucket=bucket)
        if bucket % 2:
            with psycopg.connect(**dsn) as conn:
                return {tuple(r) for r in conn.execute(sql).fetchall()}
        with psycopg2.connect(**dsn) as conn, conn.cursor(f"part{bucket}") as cur:
            cur.itersize = 5000
            cur.execute(sql)
            return set(cur)

    results: list[set[tuple[str, str]]] = []
    for first in (0, 4):
        with ThreadPoolExecutor(max_workers=4) as pool:
            results += list(pool.map(read, range(first, first + 4)))
    union = set().union(*results)
    assert sum(len(r) for r in results) == len(union)  # disjoint partitions
    assert union == {(qs.big_email(i), "aud-A") for i in range(qs.BIG_PROFILES)}


def test_fetch_rate_is_reported(dsn: dict[str, Any], qs: Any) -> None:
    """Rows/s of a psycopg2 named cursor over TLS (see benchmarks/query_service_fetch.py for 1M rows)."""
    sql = (
        f"SELECT _demoemea.identification.core.email, person.name.firstName, _acp_batchid FROM {qs.BIG_TABLE} "
        "LIMIT 0"
    )  # the documented override of the row cap: a plain streamed read
    with psycopg2.connect(**dsn) as conn, conn.cursor("rate") as cur:
        cur.itersize = 10_000
        started = time.perf_counter()
        cur.execute(sql)
        rows = sum(1 for _ in cur)
        elapsed = time.perf_counter() - started
    assert rows == qs.BIG_PROFILES
    print(
        f"\nQuery Service emulator: {rows:,} rows x 3 text columns via psycopg2 named cursor over TLS: "
        f"{rows / elapsed:,.0f} rows/s"
    )


def test_session_limit_refuses_the_sixth_client_with_production_error(
    database: Any, tls: Any, qs: Any
) -> None:
    """With the org's limit at 5 (realistic mode), 8 clients connecting at once: 5 get a session,
    the others are refused with "Session Limit Reached" (SQLSTATE 53300, psycopg2 and psycopg 3); a
    slot freed by a closed session is usable again at once, and the limit can change at run time."""
    limit = {"value": 5}
    server = qs.start_server(database, tls, max_sessions=lambda: limit["value"])
    dsn = qs.dsn_for(server, tls)
    held: list[Any] = []

    def connect(i: int) -> Any:
        try:
            conn = psycopg.connect(**dsn) if i % 2 else psycopg2.connect(**dsn)
        except (psycopg.OperationalError, psycopg2.OperationalError) as exc:
            return exc
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        return conn

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(connect, range(8)))
        held = [o for o in outcomes if not isinstance(o, Exception)]
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert len(held) == 5 and len(refused) == 3, outcomes
        assert server.active_sessions == 5
        for exc in refused:
            assert "Session Limit Reached" in str(exc), exc
            assert "5 of the organization's 5" in str(exc), exc
        # Neither driver keeps the SQLSTATE of an error sent while connecting: clients see the text only
        # (the provider's hook therefore recognises the message).
        with pytest.raises(psycopg.OperationalError, match="FATAL:  Session Limit Reached") as info:
            psycopg.connect(**dsn)
        assert info.value.sqlstate is None
        with pytest.raises(psycopg2.OperationalError, match="FATAL:  Session Limit Reached") as info2:
            psycopg2.connect(**dsn)
        assert info2.value.pgcode is None

        held.pop().close()
        _wait_for(lambda: server.active_sessions == 4)
        again = connect(1)
        assert not isinstance(again, Exception), again
        held.append(again)

        limit["value"] = 0  # no limit: a sixth session is admitted
        held.append(connect(0))
        assert not isinstance(held[-1], Exception) and server.active_sessions == 6
    finally:
        for conn in held:
            conn.close()
        server.stop()
    assert server.active_sessions == 0


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Until the server has seen a client's Terminate (it ends the session in its own thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
