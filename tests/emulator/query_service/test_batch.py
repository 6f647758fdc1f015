"""Query Service batch queries (``POST /queries`` with ``INSERT INTO``): states, the batch they write,
errors for bad SQL, cancel, listing. The written records are checked against the export they were
computed from, and read back the way an ingested batch is."""

from __future__ import annotations

import time
from typing import Any

from emulator_testkit import TENANT, Aep

QUERIES = "/data/foundation/query/queries"
TERMINAL = {"SUCCESS", "FAILED", "KILLED", "TIMEOUT"}


def _submit(aep: Aep, sql: str, name: str = "test query", status: int = 202) -> dict:
    return aep.ok(
        aep.api.call("POST", QUERIES, json={"dbName": "prod:all", "sql": sql, "name": name}), status
    )


def _wait(aep: Aep, query_id: str, timeout: float = 30.0) -> tuple[dict, list[str]]:
    """The terminal query object, and every state seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        query = aep.ok(aep.api.call("GET", f"{QUERIES}/{query_id}"))
        if not seen or seen[-1] != query["state"]:
            seen.append(query["state"])
        if query["state"] in TERMINAL:
            return query, seen
        assert time.monotonic() < deadline, f"query {query_id} still {query['state']}"
        time.sleep(0.02)


def _table(aep: Aep, dataset_id: str) -> str:
    dataset = aep.ok(aep.api.call("GET", f"/data/foundation/catalog/dataSets/{dataset_id}"))[dataset_id]
    return dataset["tags"]["adobe/pqs/table"][0]


def _exported(aep: Aep) -> tuple[str, str, dict[str, Any]]:
    """An export of the first audience: (export table, export batch id, audience)."""
    audience = aep.audiences()[0]
    export_ds = aep.union_dataset()
    job = aep.export(
        export_ds, [{"segmentId": audience["id"], "segmentNs": "ups", "status": ["realized", "existing"]}]
    )
    assert job["status"] == "SUCCEEDED"
    return _table(aep, export_ds), job["destination"]["batchId"], audience


def _insert_sql(target: str, export_table: str, batch_id: str, audience_id: str) -> str:
    return (
        f"INSERT INTO {target}\n"
        f"SELECT personID, named_struct('audienceMembershipId', key, 'audienceMembershipName', 'Fans') AS _{TENANT}\n"
        f"FROM (SELECT _{TENANT}.identification.core.email AS personID, explode(segmentMembership.ups) FROM {export_table}\n"
        f"      WHERE _acp_system_metadata.acp_sourceBatchId = '{batch_id}' AND _{TENANT}.identification.core.email IS NOT NULL)\n"
        f"WHERE key = '{audience_id}' AND value.status IN ('realized', 'existing')"
    )


def test_insert_into_writes_a_batch_catalog_shows_and_the_dataset_serves(aep: Aep) -> None:
    export_table, export_batch, audience = _exported(aep)
    _, dataset_id = aep.cja_dataset()
    created = _submit(aep, _insert_sql(_table(aep, dataset_id), export_table, export_batch, audience["id"]))
    assert created["state"] == "SUBMITTED" and created["client"] == "API"
    assert created["request"]["name"] == "test query"
    query, seen = _wait(aep, created["id"])
    assert query["state"] == "SUCCESS", query["errors"]
    assert seen[-1] == "SUCCESS" and set(seen) <= {"SUBMITTED", "IN_PROGRESS", "SUCCESS"}
    assert query["isInsertInto"] is True and query["errors"] == []

    batches = [
        b
        for b in aep.emu.admin.state()["sandboxes"]["prod"]["batches"].values()
        if {"type": "query", "id": query["id"]} in b["relatedObjects"]
    ]
    assert len(batches) == 1
    batch = aep.batch(batches[0]["id"])
    assert batch["status"] == "success"
    assert {"type": "dataSet", "id": dataset_id} in batch["relatedObjects"]
    assert batch["recordCount"] == query["rowCount"] > 0
    records = aep.emu.admin.dataset_records(dataset_id)
    assert len(records) == query["rowCount"]
    assert all(
        r[f"_{TENANT}"] == {"audienceMembershipId": audience["id"], "audienceMembershipName": "Fans"}
        for r in records
    )
    # The same rows an ad hoc reader sees: the export's members of the audience, from the truth.
    truth = {row["email"] for row in aep.emu.admin.snapshot([audience["id"]], ["realized", "existing"])}
    assert {r["personID"] for r in records} == truth

    assert aep.emu.admin.stats()["tableScans"][f"batch:{export_table}"] == 1  # one read of the export

    listed = aep.ok(aep.api.call("GET", QUERIES, params={"limit": 5}))
    assert [q["id"] for q in listed["queries"]][:1] == [query["id"]]


def test_bad_sql_fails_the_query_and_writes_nothing(aep: Aep) -> None:
    _, dataset_id = aep.cja_dataset()
    target = _table(aep, dataset_id)
    cases = {
        f"INSERT INTO {target} SELEC personID": "42601",  # not a SELECT
        f"INSERT INTO {target} SELECT personID FROM WHERE": "42601",
        f"INSERT INTO {target} (SELECT 'a' AS personID)": "42601",  # documented: not parenthesised
        f"INSERT INTO {target} SELECT x FROM no_such_table": "42P01",
        "INSERT INTO no_such_dataset SELECT 'a' AS personID": "42P01",
        f"INSERT INTO {target} SELECT 'a' AS personID, 42 AS notInTheSchema": "42804",
        "SELECT 1": "0A000",  # REST returns no rows: only INSERT INTO is a batch query here
        "CREATE TABLE t AS (SELECT 1 AS a)": "0A000",
    }
    for sql, code in cases.items():
        query, _ = _wait(aep, _submit(aep, sql)["id"])
        assert query["state"] == "FAILED", sql
        assert query["errors"] and query["errors"][0]["code"] == code, (sql, query["errors"])
        assert query["errors"][0]["message"]
    assert aep.emu.admin.dataset_records(dataset_id) == []
    live = [
        b
        for b in aep.emu.admin.state()["sandboxes"]["prod"]["batches"].values()
        if b["status"] == "success" and {"type": "dataSet", "id": dataset_id} in b["relatedObjects"]
    ]
    assert live == []


def test_request_errors(aep: Aep) -> None:
    assert aep.api.call("POST", QUERIES, json={"dbName": "dev:all", "sql": "SELECT 1"}).status_code == 400
    assert aep.api.call("POST", QUERIES, json={"dbName": "prod:all"}).status_code == 400
    assert (
        aep.api.call("POST", QUERIES, json={"dbName": "prod:all", "sql": "x", "bogus": 1}).status_code == 400
    )
    assert aep.api.call("GET", f"{QUERIES}/00000000-0000-0000-0000-000000000000").status_code == 404
    assert aep.api.call("GET", QUERIES, params={"orderby": "name"}).status_code == 400


def test_cancel_a_finished_query_conflicts(aep: Aep) -> None:
    _, dataset_id = aep.cja_dataset()
    query, _ = _wait(aep, _submit(aep, f"INSERT INTO {_table(aep, dataset_id)} SELECT 'a' AS personID")["id"])
    assert query["state"] == "SUCCESS", query["errors"]
    assert aep.api.call("PATCH", f"{QUERIES}/{query['id']}", json={"op": "cancel"}).status_code == 409
    assert aep.api.call("PATCH", f"{QUERIES}/{query['id']}", json={"op": "nope"}).status_code == 400
