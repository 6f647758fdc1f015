"""Batch-query timing (realistic mode's ``qs_batch_*`` knobs, query_service/batch.py): queueing and
start-up while SUBMITTED, the scan charged by the scan-cost model, the batch loading for its write and
promoted before the query succeeds, the org's concurrency cap, the 24-hour limit, cancel mid-phase.

Each test sets the knobs on the shared default-mode emulator (reset after the test), so every timing
asserted here is one the knobs caused: with the knobs at 0 the same queries end in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from query_service.test_batch import QUERIES, TERMINAL, _exported, _insert_sql, _submit, _table

from aep_emulator.settings import REALISTIC

from emulator_testkit import Aep


def _batch_of(aep: Aep, query_id: str) -> dict | None:
    for batch in aep.emu.admin.state()["sandboxes"]["prod"]["batches"].values():
        if {"type": "query", "id": query_id} in batch["relatedObjects"]:
            return batch
    return None


def _timeline(aep: Aep, query_id: str, timeout: float = 30.0) -> list[tuple[str, str | None, float]]:
    """Every distinct (query state, its batch's status) seen until the query ends, with the time first seen."""
    started = time.monotonic()
    seen: list[tuple[str, str | None, float]] = []
    while True:
        query = aep.ok(aep.api.call("GET", f"{QUERIES}/{query_id}"))
        batch = _batch_of(aep, query_id)
        pair = (query["state"], batch["status"] if batch else None)
        if not seen or seen[-1][:2] != pair:
            seen.append((*pair, time.monotonic() - started))
        if query["state"] in TERMINAL:
            return seen
        assert time.monotonic() - started < timeout, f"query {query_id} still {pair}: {seen}"
        time.sleep(0.02)


def _when(seen: list[tuple[str, str | None, float]], match: Callable[[str, str | None], bool]) -> float:
    return next(t for state, status, t in seen if match(state, status))


def _query_sql(aep: Aep) -> tuple[str, str]:
    export_table, export_batch, audience = _exported(aep)
    _, dataset_id = aep.cja_dataset()
    return _insert_sql(_table(aep, dataset_id), export_table, export_batch, audience["id"]), dataset_id


def test_realistic_preset_times_batch_queries():
    assert REALISTIC["qs_batch_max_seconds"] == 24 * 3600  # documented: batch queries run up to 24 h
    for knob in (
        "qs_batch_start_seconds",
        "qs_batch_write_seconds_per_million_records",
        "qs_batch_promote_seconds",
        "qs_batch_concurrency",
    ):
        assert REALISTIC[knob] > 0, knob


def test_phases_in_order_each_taking_its_modelled_time(aep: Aep) -> None:
    sql, _ = _query_sql(aep)
    aep.emu.admin.knobs(
        qs_batch_start_seconds=0.6,
        # 0.6 s for the whole write whatever the record count (set below from the export's size)
        qs_batch_promote_seconds=0.6,
        intermediate_statuses=True,
    )
    aep.emu.admin.scans("POST", seconds_per_query=0.5, seconds_per_million_rows=0)
    try:
        aep.emu.admin.scans("DELETE")
        records = len(aep.emu.admin.snapshot([aep.audiences()[0]["id"]], ["realized", "existing"]))
        assert records > 0
        aep.emu.admin.knobs(qs_batch_write_seconds_per_million_records=0.6 * 1_000_000 / records)
        created = _submit(aep, sql)
        seen = _timeline(aep, created["id"])
    finally:
        aep.emu.admin.scans("POST", seconds_per_query=0, seconds_per_million_rows=0)
    pairs = [s[:2] for s in seen]
    assert pairs == [
        ("SUBMITTED", None),
        ("IN_PROGRESS", None),  # the scan (0.5 s of the scan-cost model)
        ("IN_PROGRESS", "loading"),  # the write (0.6 s)
        ("IN_PROGRESS", "staging"),  # the promotion (0.6 s)
        ("SUCCESS", "success"),
    ], seen
    in_progress = _when(seen, lambda q, b: q == "IN_PROGRESS")
    loading = _when(seen, lambda q, b: b == "loading")
    staging = _when(seen, lambda q, b: b == "staging")
    done = _when(seen, lambda q, b: q == "SUCCESS")
    assert in_progress >= 0.5  # start-up (0.6 s, less the time the POST took)
    assert loading - in_progress >= 0.4  # the scan
    assert staging - loading >= 0.5  # the write
    assert done - staging >= 0.5  # the promotion
    stats = aep.emu.admin.scans()
    assert stats["scans"] == 1 and stats["modelled_seconds"] == pytest.approx(0.5)
    query = aep.ok(aep.api.call("GET", f"{QUERIES}/{created['id']}"))
    assert query["rowCount"] == records and query["elapsedTime"] >= 1500


def test_concurrency_cap_keeps_the_next_query_submitted(aep: Aep) -> None:
    sql, _ = _query_sql(aep)
    aep.emu.admin.knobs(qs_batch_concurrency=1, qs_batch_promote_seconds=0.8)
    first = _submit(aep, sql, name="first")
    second = _submit(aep, sql, name="second")
    deadline = time.monotonic() + 10
    while (_batch_of(aep, first["id"]) or {}).get("status") != "processing":
        assert time.monotonic() < deadline, "the first query never reached its promotion"
        time.sleep(0.02)
    # The first holds the org's one slot: the second waits for it, SUBMITTED, without a batch.
    assert aep.ok(aep.api.call("GET", f"{QUERIES}/{second['id']}"))["state"] == "SUBMITTED"
    assert _batch_of(aep, second["id"]) is None
    assert _timeline(aep, first["id"])[-1][0] == "SUCCESS"
    seen_second = _timeline(aep, second["id"])
    assert seen_second[-1][0] == "SUCCESS"
    assert _when(seen_second, lambda q, b: q == "SUCCESS") >= 0.7  # its own promotion, after the first


def test_without_a_cap_two_queries_run_side_by_side(aep: Aep) -> None:
    sql, _ = _query_sql(aep)
    aep.emu.admin.knobs(qs_batch_concurrency=0, qs_batch_promote_seconds=2)
    started = time.monotonic()
    ids = [_submit(aep, sql, name=f"q{i}")["id"] for i in range(2)]
    for query_id in ids:
        assert _timeline(aep, query_id)[-1][0] == "SUCCESS"
    assert 2 <= time.monotonic() - started < 3.8  # one promotion's time, not 2 x 2 s


def test_a_query_past_the_maximum_execution_time_ends_timeout(aep: Aep) -> None:
    sql, dataset_id = _query_sql(aep)
    # Promotion alone (10 s) is over the limit (1 s): the query ends TIMEOUT when the limit falls due.
    aep.emu.admin.knobs(qs_batch_promote_seconds=10, qs_batch_max_seconds=1)
    started = time.monotonic()
    seen = _timeline(aep, _submit(aep, sql)["id"])
    elapsed = time.monotonic() - started
    assert seen[-1][:2] == ("TIMEOUT", "failed"), seen
    assert 0.9 <= elapsed < 6  # the limit, not the 10 s promotion
    queries = aep.ok(aep.api.call("GET", QUERIES, params={"limit": 1}))["queries"]
    assert queries[0]["state"] == "TIMEOUT"
    assert queries[0]["errors"][0]["code"] == "53400"
    assert "maximum execution time" in queries[0]["errors"][0]["message"]
    assert aep.emu.admin.dataset_records(dataset_id) == []  # nothing of it is live


def test_cancel_during_the_promotion_kills_the_query_and_fails_its_batch(aep: Aep) -> None:
    sql, dataset_id = _query_sql(aep)
    aep.emu.admin.knobs(qs_batch_promote_seconds=30)
    created = _submit(aep, sql)
    deadline = time.monotonic() + 10
    while (_batch_of(aep, created["id"]) or {}).get("status") != "processing":
        assert time.monotonic() < deadline, "the batch never reached its promotion"
        time.sleep(0.02)
    started = time.monotonic()
    assert aep.api.call("PATCH", f"{QUERIES}/{created['id']}", json={"op": "cancel"}).status_code == 202
    seen = _timeline(aep, created["id"])
    assert time.monotonic() - started < 5  # the cancel woke the 30 s wait
    assert seen[-1][:2] == ("KILLED", "failed"), seen
    assert aep.emu.admin.dataset_records(dataset_id) == []


def test_cancel_while_queued_ends_killed_before_it_reads(aep: Aep) -> None:
    sql, _ = _query_sql(aep)
    aep.emu.admin.knobs(qs_batch_start_seconds=30)
    aep.emu.admin.scans("DELETE")
    created = _submit(aep, sql)
    assert aep.api.call("PATCH", f"{QUERIES}/{created['id']}", json={"op": "cancel"}).status_code == 202
    seen = _timeline(aep, created["id"], timeout=5)
    assert [s[:2] for s in seen][-1] == ("KILLED", None)
    assert "IN_PROGRESS" not in [s[0] for s in seen]
    assert aep.emu.admin.scans()["scans"] == 0  # it never read the export
