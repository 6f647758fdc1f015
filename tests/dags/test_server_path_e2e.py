"""The server path (Data Distiller) end to end: for the same emulator data, the snapshot a batch query
writes equals the client path's, record for record, and both equal the emulator's membership truth.

Two jobs over the same audiences, one per path, run with ``dag.test()``. Then memberships change and
the server job runs again: its new batch (written by a batch query, no ``externalId``) replaces the
previous one (exactly one live batch), the report's entered/exited counts are computed against the
previous snapshot's export, and no row of the snapshot passed through the worker (no file was
uploaded into the profile dataset's batches).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from airflow_cja_audiences.dag_factory import build_dag
from airflow_cja_audiences.transform import stable_id

from dag_runs import interval_end as _interval_end
from dag_runs import job as _job
from dag_runs import run as _run

pytestmark = pytest.mark.slow
PERSON = "personID"


def _prod(emu) -> dict:
    return emu.admin.state()["sandboxes"]["prod"]


def _dataset_id(emu, name: str) -> str:
    matches = [i for i, d in _prod(emu)["datasets"].items() if d["name"] == name]
    assert len(matches) == 1, f"{len(matches)} datasets named {name!r}"
    return matches[0]


def _records(emu, dataset_id: str) -> list[dict]:
    return emu.admin.dataset_records(dataset_id)


def _without_id(records: list[dict]) -> dict[str, dict]:
    """Records by person, ``_id`` left out (it includes the job id, which differs between the jobs)."""
    out = {r[PERSON]: {k: v for k, v in r.items() if k != "_id"} for r in records}
    assert len(out) == len(records), "a person appears in two live records"
    return out


def _memberships(records: list[dict], tenant: str) -> dict[str, set[tuple]]:
    return {
        r[PERSON]: {
            (m["audienceMembershipId"], m["status"], m["lastQualificationTime"])
            for m in r[f"_{tenant}"]["audienceMembership"]
        }
        for r in records
    }


def _truth(emu, audience_ids: list[str]) -> dict[str, set[tuple]]:
    truth: dict[str, set[tuple]] = defaultdict(set)
    for row in emu.admin.snapshot(audience_ids, ["realized", "existing"]):
        truth[row["email"]].add((row["audience_id"], row["status"], row["last_qualification_time"]))
    return dict(truth)


def _live(emu, dataset_id: str) -> list[dict]:
    return [
        b
        for b in _prod(emu)["batches"].values()
        if b["status"] == "success" and {"type": "dataSet", "id": dataset_id} in b["relatedObjects"]
    ]


def test_server_path_publishes_the_client_paths_records(emu, airflow_db, dags_folder):
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
    client_job = _job(audiences, job_id="e2e_client", publish_events=False)
    server_job = _job(audiences, job_id="e2e_server", publish_events=False, path="server")
    dags_folder(client_job, server_job)
    tenant = emu.credentials.tenant
    now = emu.admin.clock()["now"]
    # Both paths read exports of the same instant: the clock stands still (a day back) for both runs.
    day_before = emu.admin.advance_clock(-86_400)["now"]
    emu.admin.set_clock(day_before, frozen=True)
    try:
        state, client_report = _run(build_dag(client_job), _interval_end(1))
        assert state == "success", client_report
        state, server_report = _run(build_dag(server_job), _interval_end(1))
        assert state == "success", server_report
        truth = _truth(emu, audiences)
    finally:
        emu.admin.set_clock(now, frozen=False)

    client_ds = _dataset_id(emu, client_job.names.profile_dataset)
    server_ds = _dataset_id(emu, server_job.names.profile_dataset)
    client, server = _records(emu, client_ds), _records(emu, server_ds)
    assert server and _without_id(server) == _without_id(client)
    assert all(r["_id"] == stable_id(server_job.job_id, r[PERSON]) for r in server)
    assert _memberships(server, tenant) == truth == _memberships(client, tenant)
    (batch,) = _live(emu, server_ds)
    assert batch["files"] == {}, "the server path uploads nothing: Query Service wrote the batch"
    assert any(o.get("type") == "query" for o in batch["relatedObjects"])
    assert batch["recordCount"] == len(server)
    by_audience = {row["id"]: row for row in server_report["audiences"]}
    assert {a: by_audience[a]["members"] for a in audiences} == {
        a: sum(1 for ms in truth.values() for m in ms if m[0] == a) for a in audiences
    }

    # Memberships change; the server job runs again and replaces its snapshot.
    leaver = min(truth)
    leaver_index = next(r["profile_index"] for r in emu.admin.snapshot(audiences) if r["email"] == leaver)
    for audience_id, _, _ in truth[leaver]:
        emu.admin.set_membership(leaver_index, audience_id, member=False)
    joiner_index = next(i for i in range(600) if emu.admin.profile(i)["email"] not in truth)
    emu.admin.set_membership(joiner_index, audiences[0], member=True)

    state, report = _run(build_dag(server_job), _interval_end(0))
    assert state == "success", report
    second = _truth(emu, audiences)
    records = _records(emu, server_ds)
    assert _memberships(records, tenant) == second
    assert leaver not in {r[PERSON] for r in records}
    (new_batch,) = _live(emu, server_ds)
    assert new_batch["id"] != batch["id"]
    assert _prod(emu)["batches"][batch["id"]]["status"] == "inactive"  # the previous snapshot was reverted
    by_audience = {row["id"]: row for row in report["audiences"]}
    old = {(p, a) for p, ms in truth.items() for a, _, _ in ms}
    new = {(p, a) for p, ms in second.items() for a, _, _ in ms}
    for audience_id in audiences:
        assert by_audience[audience_id]["new"] is False  # the previous server snapshot was found
        assert by_audience[audience_id]["entered"] == sum(1 for _, a in new - old if a == audience_id)


def test_server_path_shrink_guard_reverts_the_new_batch(emu, airflow_db, dags_folder):
    """The batch a query wrote is live when the query ends: a tripped shrink guard reverts it, and the
    previous snapshot stays the only live one."""
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:2]]
    job = _job(audiences, job_id="e2e_guard", publish_events=False, path="server", shrink_guard=0.0)
    dag = dags_folder(job)
    state, report = _run(dag, _interval_end(0))
    assert state == "success", report
    dataset_id = _dataset_id(emu, job.names.profile_dataset)
    (first,) = _live(emu, dataset_id)
    before = _records(emu, dataset_id)

    leaver = min(r[PERSON] for r in before)
    index = next(r["profile_index"] for r in emu.admin.snapshot(audiences) if r["email"] == leaver)
    for audience_id in audiences:
        emu.admin.set_membership(index, audience_id, member=False)
    state, _ = _run(dag, _interval_end(0))
    assert state == "failed"
    assert [b["id"] for b in _live(emu, dataset_id)] == [first["id"]]  # the previous snapshot stays
    assert _records(emu, dataset_id) == before
    written = [
        b
        for b in _prod(emu)["batches"].values()
        if b["id"] != first["id"] and {"type": "dataSet", "id": dataset_id} in b["relatedObjects"]
    ]
    assert [b["status"] for b in written] == ["inactive"]  # the new batch was written, then reverted

    state, report = _run(dag, _interval_end(0), force_replace=True)  # the drop is real: replace anyway
    assert state == "success", report
    assert leaver not in {r[PERSON] for r in _records(emu, dataset_id)}
    assert len(_live(emu, dataset_id)) == 1
