"""Several clients at once, and a fetch-rate measurement (printed, not asserted)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import psycopg2

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
    sql = (f"SELECT _demoemea.identification.core.email, person.name.firstName, _acp_batchid FROM {qs.BIG_TABLE} "
           "LIMIT 0")  # the documented override of the row cap: a plain streamed read
    with psycopg2.connect(**dsn) as conn, conn.cursor("rate") as cur:
        cur.itersize = 10_000
        started = time.perf_counter()
        cur.execute(sql)
        rows = sum(1 for _ in cur)
        elapsed = time.perf_counter() - started
    assert rows == qs.BIG_PROFILES
    print(f"\nQuery Service emulator: {rows:,} rows x 3 text columns via psycopg2 named cursor over TLS: "
          f"{rows / elapsed:,.0f} rows/s")
