"""Fetch rate of the emulator's Query Service: rows/s to psycopg2 and psycopg 3 over TLS.

Runs ``python -m benchmarks.query_service_fetch [--rows 1000000]``. One run:

* starts the Query Service emulator in its own process (so the clients do not share its GIL) over an
  export-shaped table of ``rows / 2`` profiles with two member audiences each, TLS with a private CA
  (clients use ``sslmode=verify-full``);
* reads the membership rows ``(personID, audienceId, status, qualificationTime)`` - the explode +
  filter + ``concat(date_format ...)`` query shape the pipeline sends - with each client, in a fresh process:

  - ``psycopg2 named cursor`` (DECLARE/FETCH, itersize 10,000), ``psycopg2 fetchall``,
    ``psycopg 3 server cursor``, ``psycopg 3 fetchall``; and 4 psycopg2 named-cursor clients at once;

* in two server modes: ``stream`` - the query ends with ``LIMIT 0``, Query Service's documented
  override of the row cap, so rows stream while DuckDB produces them; ``capped`` - the server's row
  cap is raised above the result and the query has no LIMIT, so the server must hold the whole result
  before the first row;
* also prints the server-side encoding rate alone (DuckDB query -> DataRow bytes, no socket).

The fetch floor was about 1.2 M rows/s per client on a 2-core machine when the performance targets
were set (docs/ARCHITECTURE.md, "Performance targets").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow_cja_audiences.sql import iso_utc
from benchmarks import _qs_server

ROOT = Path(__file__).resolve().parent.parent
TABLE = "bench_export"
QUERY = f"""SELECT personID, key AS audienceId, value.status AS status,
       {iso_utc("value.lastQualificationTime")} AS qualificationTime
FROM (SELECT _bench.identification.core.email AS personID, explode(segmentMembership.ups)
      FROM {TABLE} WHERE _acp_batchid = 'bench-batch')
WHERE key IN ('aud-a', 'aud-b') AND value.status IN ('realized', 'existing')"""
CLIENTS = ("psycopg2 named cursor", "psycopg2 fetchall", "psycopg 3 server cursor", "psycopg 3 fetchall")


def build_table(db: Any, rows: int) -> None:
    """``rows / 2`` profiles, each a member of aud-a and aud-b, plus an exited aud-c (filtered out)."""
    member = "STRUCT(status VARCHAR, lastQualificationTime TIMESTAMP, version VARCHAR, validUntil TIMESTAMP)"
    db.execute(f"""CREATE TABLE {TABLE} (
        _bench STRUCT(identification STRUCT(core STRUCT(email VARCHAR))),
        segmentMembership STRUCT(ups MAP(VARCHAR, {member})),
        _acp_batchid VARCHAR, _acp_system_metadata STRUCT(acp_sourceBatchId VARCHAR))""")
    db.execute(f"""
        INSERT INTO {TABLE}
        SELECT {{'identification': {{'core': {{'email': printf('person%08d@example.com', i)}}}}}},
               {{'ups': map_from_entries(list_transform(['aud-a', 'aud-b', 'aud-c'], lambda a: {{
                   'key': a,
                   'value': CAST({{'status': CASE WHEN a = 'aud-c' THEN 'exited'
                                               WHEN i % 2 = 0 THEN 'realized' ELSE 'existing' END,
                                  'lastQualificationTime': TIMESTAMP '2026-10-01' + to_seconds(i % 5000000),
                                  'version': '1', 'validUntil': NULL}} AS {member})}}))}},
               'bench-batch', {{'acp_sourceBatchId': 'bench-batch'}}
        FROM range({rows // 2}) r(i)""")


# --- server process -----------------------------------------------------------------------------


def start_server(state_dir: Path, rows: int, max_rows: int) -> _qs_server.ServerProcess:
    return _qs_server.ServerProcess(
        "benchmarks.query_service_fetch", state_dir, "--rows", str(rows), "--max-rows", str(max_rows)
    )


# --- client processes ---------------------------------------------------------------------------


def fetch(client: str, dsn: dict[str, Any], sql: str) -> tuple[int, float]:
    """Read every row with one client; return (rows, seconds), connection set-up excluded."""
    if client.startswith("psycopg2"):
        import psycopg2

        conn = psycopg2.connect(**dsn)
        started = time.perf_counter()
        if client == "psycopg2 named cursor":
            cur = conn.cursor("bench")
            cur.itersize = 10_000
            cur.execute(sql)
            count = sum(1 for _ in cur)
        else:
            cur = conn.cursor()
            cur.execute(sql)
            count = len(cur.fetchall())
    else:
        import psycopg

        conn = psycopg.connect(**dsn)
        started = time.perf_counter()
        if client == "psycopg 3 server cursor":
            cur = conn.cursor(name="bench")
            cur.itersize = 10_000
            cur.execute(sql)
            count = sum(1 for _ in cur)
        else:
            count = len(conn.execute(sql).fetchall())
    elapsed = time.perf_counter() - started
    conn.close()
    return count, elapsed


def run_clients(client: str, dsn: dict[str, Any], sql: str, parallel: int = 1) -> list[tuple[int, float]]:
    """Run ``parallel`` client processes at once (started together) and collect their results."""
    job = json.dumps({"client": client, "dsn": dsn, "sql": sql})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.query_service_fetch", "--client"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(parallel)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(job)
        proc.stdin.close()
    results = []
    for proc in procs:
        assert proc.stdout is not None
        out = proc.stdout.read()
        if proc.wait(timeout=600):
            raise RuntimeError(f"{client} failed (exit {proc.returncode})")
        results.append(tuple(json.loads(out)))
    return results  # type: ignore[return-value]


def server_encoding_rate(rows: int) -> float:
    """Rows/s of the server's own work for the query: translate, run in DuckDB, build DataRow bytes."""
    import duckdb

    from aep_emulator.query_service.encoding import datarow_sql
    from aep_emulator.query_service.translate import Translator

    db = duckdb.connect()
    build_table(db, rows)

    class Ctx:
        drop_system_columns = True

        def describe(self, sql: str) -> list[tuple[str, Any]]:
            cur = db.cursor()
            cur.execute(sql)
            return [(d[0], d[1]) for d in cur.description]

        def tables(self) -> dict[str, str]:
            return {TABLE: TABLE}

        def session_function(self, name: str, args: Any) -> str | None:
            return None

    translation = Translator().translate(QUERY, Ctx())
    types = [t for _, t in Ctx().describe(f"SELECT * FROM ({translation.sql}) LIMIT 0")]
    started = time.perf_counter()
    cur = db.cursor()
    cur.execute(datarow_sql(translation.sql, types, auto_to_json=False))
    count = 0
    while chunk := cur.fetchmany(10_000):
        b"".join([r[0] for r in chunk])
        count += len(chunk)
    assert count == rows, count
    return count / (time.perf_counter() - started)


def main() -> int:
    """No target of its own (it measures the fetch floor ``benchmarks.transform`` is compared with):
    exit 0 when every client read every row, non-zero otherwise (an assertion or a failed client)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per client (the median is printed)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-rows", type=int, default=50_000, help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _qs_server.serve(args.serve, TABLE, lambda db: build_table(db, args.rows), args.max_rows)
        return 0
    if args.client:
        job = json.loads(sys.stdin.read())
        print(json.dumps(fetch(job["client"], job["dsn"], job["sql"])))
        return 0

    rows = args.rows
    print(
        f"Query Service emulator fetch benchmark: {rows:,} rows x 4 text columns, TLS (verify-full), "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"  server-side encoding only (DuckDB -> DataRow bytes): {server_encoding_rate(rows):>12,.0f} rows/s"
    )
    modes = {"stream": (QUERY + "\nLIMIT 0", 50_000), "capped": (QUERY, rows + 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, (sql, max_rows) in modes.items():
            server = start_server(Path(tmp) / mode, rows, max_rows)
            try:
                print(
                    f"  mode {mode} ({'LIMIT 0 override, rows stream' if mode == 'stream' else 'row cap raised to ' + format(max_rows, ',') + ', result held before sending'}):"
                )
                for client in CLIENTS:
                    runs = [run_clients(client, server.dsn, sql)[0] for _ in range(args.repeat)]
                    assert all(count == rows for count, _ in runs), runs
                    rate = statistics.median(count / seconds for count, seconds in runs)
                    print(f"    {client:<26} {rate:>12,.0f} rows/s")
                results = run_clients("psycopg2 named cursor", server.dsn, sql, parallel=4)
                total = sum(count for count, _ in results) / max(seconds for _, seconds in results)
                print(f"    {'4 x psycopg2 named cursor':<26} {total:>12,.0f} rows/s in total")
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
