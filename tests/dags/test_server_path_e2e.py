"""The server path (Data Distiller) end to end: for the same emulator data, the snapshot and the change
events batch queries write equal the client path's, record for record, and both equal the emulator's
membership truth (its snapshot and its membership timeline).

Two jobs over the same audiences, one per path, run with ``dag.test()``. Then memberships change and
the server job runs again: its new batch (written by a batch query, no ``externalId``) replaces the
previous one (exactly one live batch), the report's entered/exited counts are computed against the
previous snapshot's export, and no row of the snapshot passed through the worker (no file was
uploaded into the profile dataset's batches).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from airflow_cja_audiences.dag_factory import build_dag
from airflow_cja_audiences.transform import stable_id

from aep_truth import JobView
from dag_runs import interval_end as _interval_end
from dag_runs import job as _job
from dag_runs import run as _run

pytestmark = pytest.mark.slow
PERSON = "personID"


def _without_id(records: list[dict]) -> dict[str, dict]:
    """Records by person, ``_id`` left out (it includes the job id, which differs between the jobs)."""
    out = {r[PERSON]: {k: v for k, v in r.items() if k != "_id"} for r in records}
    assert len(out) == len(records), "a person appears in two live records"
    return out


def _events_without_id(records: list[dict], tenant: str) -> dict[tuple, dict]:
    """Event records by (person, audience, event type, timestamp), ``_id`` left out."""
    t = f"_{tenant}"
    out = {
        (r[t][PERSON], r[t]["audienceMembershipId"], r[t]["audienceEventType"], r["timestamp"]): {
            k: v for k, v in r.items() if k != "_id"
        }
        for r in records
    }
    assert len(out) == len(records), "an event appears in two live records"
    return out


def test_server_path_publishes_the_client_paths_records(emu, aep, airflow_db, dags_folder):
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
    client_job = _job(audiences, job_id="e2e_client")
    server_job = _job(audiences, job_id="e2e_server", path="server")
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
        truth = aep.truth_snapshot(audiences)
    finally:
        emu.admin.set_clock(now, frozen=False)

    client_ds = aep.dataset_id(client_job.names.profile_dataset)
    server_ds = aep.dataset_id(server_job.names.profile_dataset)
    client, server = aep.records(client_ds), aep.records(server_ds)
    assert server and _without_id(server) == _without_id(client)
    assert all(r["_id"] == stable_id(server_job.job_id, r[PERSON]) for r in server)
    assert aep.snapshot_memberships(server_ds, tenant) == truth == aep.snapshot_memberships(client_ds, tenant)
    (batch,) = aep.live_batches(server_ds)
    assert batch["files"] == {}, "the server path uploads nothing: Query Service wrote the batch"
    assert any(o.get("type") == "query" for o in batch["relatedObjects"])
    assert batch["recordCount"] == len(server)
    by_audience = {row["id"]: row for row in server_report["audiences"]}
    assert {a: by_audience[a]["members"] for a in audiences} == {
        a: sum(1 for ms in truth.values() for m in ms if m[0] == a) for a in audiences
    }

    # Change events of the same interval: both paths publish the same records, and each one is a true
    # transition of the emulator's membership timeline at its true time (none twice, none that an
    # export showed left out): the truth comes from the emulator's model, not from the provider's SQL.
    start, end = server_report["interval"]
    assert client_report["interval"] == [start, end]
    client_events = aep.records(aep.dataset_id(client_job.names.event_dataset))
    server_events_ds = aep.dataset_id(server_job.names.event_dataset)
    server_events = aep.records(server_events_ds)
    assert server_events, "the frozen day has no membership change: the comparison would prove nothing"
    assert _events_without_id(server_events, tenant) == _events_without_id(client_events, tenant)
    t = f"_{tenant}"
    assert all(
        r["_id"]
        == stable_id(
            server_job.job_id,
            r[t][PERSON],
            r[t]["audienceMembershipId"],
            r[t]["audienceEventType"],
            r["timestamp"],
        )
        for r in server_events
    )
    view = JobView(emu, server_job.job_id, audiences, tenant)
    published = view.check_events(
        server_events_ds, start, end, exact=False, export_dataset_name=server_job.names.export_dataset
    )
    assert sum(published.values()) == len(server_events)  # every record lies in the run's interval
    (events_batch,) = aep.live_batches(server_events_ds)
    assert events_batch["files"] == {}, "the server path uploads nothing: Query Service wrote the batch"
    assert any(o.get("type") == "query" for o in events_batch["relatedObjects"])
    by_audience = {row["id"]: row for row in server_report["audiences"]}
    for audience_id in audiences:
        for event in ("entered", "exited"):
            assert by_audience[audience_id][f"interval_{event}"] == sum(
                n for (_, a, e, _), n in published.items() if (a, e) == (audience_id, event)
            )

    # Memberships change; the server job runs again and replaces its snapshot.
    leaver = min(truth)
    leaver_index = next(r["profile_index"] for r in emu.admin.snapshot(audiences) if r["email"] == leaver)
    for audience_id, _, _ in truth[leaver]:
        emu.admin.set_membership(leaver_index, audience_id, member=False)
    joiner_index = next(i for i in range(600) if emu.admin.profile(i)["email"] not in truth)
    emu.admin.set_membership(joiner_index, audiences[0], member=True)

    state, report = _run(build_dag(server_job), _interval_end(0))
    assert state == "success", report
    second = aep.truth_snapshot(audiences)
    assert aep.snapshot_memberships(server_ds, tenant) == second
    assert leaver not in {r[PERSON] for r in aep.records(server_ds)}
    (new_batch,) = aep.live_batches(server_ds)
    assert new_batch["id"] != batch["id"]
    assert aep.state()["batches"][batch["id"]]["status"] == "inactive"  # the previous snapshot was reverted
    # The second interval's events: true transitions, and the first interval's batch still live beside
    # it (disjoint intervals: nothing replaced, nothing twice).
    second_start, second_end = report["interval"]
    assert second_start >= end
    view.check_events(
        server_events_ds,
        second_start,
        second_end,
        exact=False,
        export_dataset_name=server_job.names.export_dataset,
    )
    assert events_batch["id"] in {b["id"] for b in aep.live_batches(server_events_ds)}
    by_audience = {row["id"]: row for row in report["audiences"]}
    old = {(p, a) for p, ms in truth.items() for a, _, _ in ms}
    new = {(p, a) for p, ms in second.items() for a, _, _ in ms}
    for audience_id in audiences:
        assert by_audience[audience_id]["new"] is False  # the previous server snapshot was found
        assert by_audience[audience_id]["entered"] == sum(1 for _, a in new - old if a == audience_id)


def test_server_path_shrink_guard_reverts_the_new_batch(emu, aep, airflow_db, dags_folder):
    """The batch a query wrote is live when the query ends: a tripped shrink guard reverts it, and the
    previous snapshot stays the only live one."""
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:2]]
    job = _job(audiences, job_id="e2e_guard", publish_events=False, path="server", shrink_guard=0.0)
    dag = dags_folder(job)
    state, report = _run(dag, _interval_end(0))
    assert state == "success", report
    dataset_id = aep.dataset_id(job.names.profile_dataset)
    (first,) = aep.live_batches(dataset_id)
    before = aep.records(dataset_id)

    leaver = min(r[PERSON] for r in before)
    index = next(r["profile_index"] for r in emu.admin.snapshot(audiences) if r["email"] == leaver)
    for audience_id in audiences:
        emu.admin.set_membership(index, audience_id, member=False)
    state, _ = _run(dag, _interval_end(0))
    assert state == "failed"
    assert [b["id"] for b in aep.live_batches(dataset_id)] == [first["id"]]  # the previous snapshot stays
    assert aep.records(dataset_id) == before
    written = [b for b in aep.batches(dataset_id) if b["id"] != first["id"]]
    assert [b["status"] for b in written] == ["inactive"]  # the new batch was written, then reverted

    state, report = _run(dag, _interval_end(0), force_replace=True)  # the drop is real: replace anyway
    assert state == "success", report
    assert leaver not in {r[PERSON] for r in aep.records(dataset_id)}
    assert len(aep.live_batches(dataset_id)) == 1


def test_server_events_give_way_to_an_overlapping_interval_that_went_live(emu, aep, airflow_db, dags_folder):
    """Two runs of a server-path job plan overlapping events intervals; the one whose batch went live
    first stays, the other's batch query is cancelled (or its batch reverted) and its task fails asking
    for prepare_events to plan again; prepare_events waits while an overlapping interval of another run
    is being written; a retry of the first run's distill_events re-attaches to its query."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cja_audiences.hooks.batch_query import BatchQueryHook, query_id_of
    from airflow_cja_audiences.models import Batch
    from airflow_cja_audiences.operators.distill import DistillEventsOperator
    from airflow_cja_audiences.runs import BatchLabel, parse_utc, utc_iso

    audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
    job = _job(audiences, job_id="e2e_claims", path="server")
    dags_folder(job)
    state, report = _run(build_dag(job), _interval_end(1))
    assert state == "success", report
    events_ds = aep.dataset_id(job.names.event_dataset)
    (live,) = aep.live_batches(events_ds)
    queries = BatchQueryHook(sandbox="prod")
    mine = queries.get_query(query_id_of(Batch.model_validate(live)))
    label = BatchLabel.parse(mine.name)
    assert label is not None and label.kind == "events"
    start, end = report["interval"]
    names = {a["id"]: a["name"] for a in emu.admin.state()["audiences"] if a["id"] in audiences}
    export_ds = aep.dataset_id(job.names.export_dataset)
    # What the events tasks of this job read (the first run's export) and where they write.
    events_args = {
        "job": job.model_dump(mode="json"),
        "kind": "events",
        "tenant": emu.credentials.tenant,
        "table_name": aep.state()["datasets"][export_ds]["table"],
        "export_batch_id": label.export_batch_id,
        "audiences": [{"id": a, "name": names[a]} for a in audiences],
        "dataset_id": events_ds,
    }

    def distill(external_id: str, interval: tuple[str, str]) -> DistillEventsOperator:
        return DistillEventsOperator(
            task_id="distill_events",
            **events_args,
            interval_start=interval[0],
            interval_end=interval[1],
            sources=[label.export_batch_id],
            external_id=external_id,
            memberships=1,
            replaced_batch_ids=[],
            poll_interval=0.1,
            deferrable=False,
        )

    shifted = tuple(utc_iso(parse_utc(t) + timedelta(hours=1)) for t in (start, end))
    other = BatchLabel.for_run(
        job_id=job.job_id,
        kind="events",
        export_batch_id=label.export_batch_id,
        run_id="manual__overlapping",
        interval_start=shifted[0],
        interval_end=shifted[1],
    )
    context = {"run_id": "manual__overlapping", "ti": SimpleNamespace(xcom_push=lambda **_: None)}
    with pytest.raises(AirflowFailException, match="went live after this run planned") as failed:
        distill(other.external_id, shifted).execute(context)
    assert "prepare_events" in str(failed.value)
    assert [b["id"] for b in aep.live_batches(events_ds)] == [live["id"]]  # only the first run's events

    # prepare_events of a later run waits (reschedules, to plan again) while another run's overlapping
    # interval is being written: here an open batch of that run; its in-flight batch query counts alike.
    from airflow.sdk.exceptions import AirflowRescheduleException

    from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
    from airflow_cja_audiences.operators.load import PrepareLoadOperator

    later = (end, utc_iso(parse_utc(end) + timedelta(days=1)))
    blocking = BatchLabel.for_run(
        job_id=job.job_id,
        kind="events",
        export_batch_id=label.export_batch_id,
        run_id="backfill__blocking",
        interval_start=utc_iso(parse_utc(later[0]) + timedelta(hours=1)),
        interval_end=utc_iso(parse_utc(later[1]) + timedelta(hours=1)),
    )
    ingestion = BatchIngestionHook(sandbox="prod")
    open_batch = ingestion.create_batch(events_ds, external_id=blocking.external_id)
    pushed: dict = {}
    prepare = PrepareLoadOperator(
        task_id="prepare_events",
        **events_args,
        interval_start=later[0],
        interval_end=later[1],
        export_dataset_id=export_ds,
        open_batch=False,
    )
    later_context = {
        "run_id": "scheduled__later",
        "ti": SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value)),
    }
    with pytest.raises(AirflowRescheduleException):
        prepare.execute(later_context)
    assert "external_id" not in pushed  # gave way before deciding anything
    ingestion.abort_batch(open_batch.id)
    prepare.execute(later_context)
    assert BatchLabel.parse(pushed["external_id"]).interval == tuple(parse_utc(t) for t in later)
    assert pushed["batch_id"] == ""  # the server path opens no batch: the batch query writes it

    # The first run's own task, retried: it finds its query (by name) and writes nothing again.
    result = distill(mine.name, (start, end)).execute(context)
    assert result["query_id"] == mine.id and result["batch_id"] == live["id"]
    assert [b["id"] for b in aep.live_batches(events_ds)] == [live["id"]]
