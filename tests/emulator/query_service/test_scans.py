"""Query Service scan-cost model: a query that reads export batches costs modelled time, counted."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from emulator_fixture import start_in_process
from emulator_testkit import Aep, settings


@pytest.fixture(scope="module")
def qs_emu() -> Any:
    # Its own emulator with Query Service and a short statement timeout (the shared one has no pg port).
    with start_in_process(settings(pg_port=0, qs_timeout_seconds=1.5)) as running:
        yield running


def _connect(emu: Any, api: Any) -> psycopg.Connection:
    return emu.pg_connect(api.token(), autocommit=True)


def _exports(emu: Any) -> tuple[Any, str, list[dict]]:
    api = emu.api()
    aep = Aep(emu, api)
    audiences = [a["id"] for a in aep.audiences()]
    dataset = aep.union_dataset("Scanned export")
    table = aep.ok(api.call("GET", f"/data/foundation/catalog/dataSets/{dataset}"))[dataset]["tags"][
        "adobe/pqs/table"
    ][0]
    jobs = [
        aep.export(dataset, [{"segmentId": audiences[i]}], fields="_demoemea.identification.core.email")
        for i in range(2)
    ]
    return api, table, jobs


def test_scans_are_counted_and_cost_modelled_time(qs_emu: Any) -> None:
    api, table, jobs = _exports(qs_emu)
    rows = [j["metrics"]["totalExportedProfileCounter"] for j in jobs]
    assert all(rows)
    qs_emu.admin.scans("DELETE")
    cost = qs_emu.admin.scans(
        "POST", seconds_per_million_rows=1_000_000 / sum(rows) * 0.4, seconds_per_query=0.1
    )
    assert cost["queries"] == 0 and cost["cost"]["seconds_per_query"] == 0.1
    with _connect(qs_emu, api) as conn:
        conn.execute("SELECT 1").fetchall()  # reads no dataset: free, counted as a query only
        started = time.monotonic()
        conn.execute(
            f"SELECT count(*) FROM {table} WHERE _acp_batchid = %s", (jobs[1]["destination"]["batchId"],)
        ).fetchall()
        one_batch = time.monotonic() - started
        started = time.monotonic()
        conn.execute(f"SELECT count(*) FROM {table}").fetchall()  # no batch filter: every live batch
        every_batch = time.monotonic() - started
    stats = qs_emu.admin.scans()
    assert (stats["queries"], stats["scans"], stats["batch_scans"]) == (3, 2, 3)
    assert stats["rows_scanned"] == rows[1] + sum(rows) == stats["largest_scan_rows"] + rows[1]
    expected_one = 0.1 + 0.4 * rows[1] / sum(rows)
    assert stats["modelled_seconds"] == pytest.approx(expected_one + 0.5, abs=0.002)
    assert one_batch >= expected_one - 0.01 and every_batch >= 0.49
    qs_emu.admin.scans("POST", seconds_per_million_rows=0, seconds_per_query=0)
    api.close()


def test_one_statement_over_two_batches_is_one_scan_of_both(qs_emu: Any) -> None:
    """What prepare's folded counts rely on: a statement naming two export batches (this run's and the
    previous snapshot's) is one scan (one start-up cost) reading the rows of both; two statements over
    the same batches are two scans, each paying for its batches again."""
    api, table, jobs = _exports(qs_emu)
    rows = [j["metrics"]["totalExportedProfileCounter"] for j in jobs]
    ids = [j["destination"]["batchId"] for j in jobs]
    qs_emu.admin.scans("DELETE")
    with _connect(qs_emu, api) as conn:
        conn.execute(f"SELECT count(*) FROM {table} WHERE _acp_batchid IN (%s, %s)", ids).fetchall()
        folded = qs_emu.admin.scans()
        for batch in ids:
            conn.execute(f"SELECT count(*) FROM {table} WHERE _acp_batchid = %s", (batch,)).fetchall()
    separate = qs_emu.admin.scans()
    assert (folded["scans"], folded["batch_scans"], folded["rows_scanned"]) == (1, 2, sum(rows))
    assert (separate["scans"], separate["batch_scans"], separate["rows_scanned"]) == (3, 4, 2 * sum(rows))
    api.close()


def test_a_scan_longer_than_the_timeout_fails_with_the_timeout_53400(qs_emu: Any) -> None:
    api, table, _ = _exports(qs_emu)
    qs_emu.admin.scans("POST", seconds_per_million_rows=0, seconds_per_query=30)
    try:
        with _connect(qs_emu, api) as conn:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="[Tt]imeout") as info:
                conn.execute(f"SELECT count(*) FROM {table}").fetchall()
            assert time.monotonic() - started < 10  # interrupted at the 1.5 s timeout, not after 30 s
            assert info.value.sqlstate == "53400"
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    finally:
        qs_emu.admin.scans("POST", seconds_per_million_rows=0, seconds_per_query=0)
        api.close()


def test_bad_costs_are_refused(qs_emu: Any) -> None:
    response = qs_emu.admin.request("POST", "/emulator/query-service/scans", json={"seconds_per_query": -1})
    assert response.status_code == 400 and "seconds_per_query" in response.text
    response = qs_emu.admin.request("POST", "/emulator/query-service/scans", json={"per_row": 1})
    assert response.status_code == 400 and "unknown fields" in response.text
