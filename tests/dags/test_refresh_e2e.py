"""The refresh DAG end to end with ``dag.test()`` against the emulator, checked against its ground truth.

Two runs with memberships changed in between (the emulator's clock moves a day, and two people are
moved in and out explicitly): after each run the CJA profile dataset holds exactly the ground-truth
snapshot (one record per person, people who left gone), the events dataset holds exactly the
interval's entries and exits, and the report's entered/exited counts equal the ground truth.
"""

from __future__ import annotations

import json

import pytest

from aep_truth import JobView
from dag_runs import interval_end as _interval_end
from dag_runs import job as _job
from dag_runs import run as _run

pytestmark = pytest.mark.slow


def test_two_runs_converge_to_ground_truth(emu, aep, airflow_db, dags_folder):
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
    job = _job(audiences)
    dag = dags_folder(job)
    tenant = emu.credentials.tenant
    now = emu.admin.clock()["now"]
    emu.admin.advance_clock(-86_400)
    try:
        state, report1 = _run(dag, _interval_end(1))
        assert state == "success", report1
        profile_ds = aep.dataset_id(job.names.profile_dataset)
        first = aep.truth_snapshot(audiences)
        assert aep.snapshot_memberships(profile_ds, tenant) == first
    finally:
        emu.admin.set_clock(now)

    # Change memberships for the second run: time passes, and two people move explicitly.
    leaver = next(iter(sorted(first)))
    leaver_index = next(r["profile_index"] for r in emu.admin.snapshot(audiences) if r["email"] == leaver)
    for audience_id, _, _ in first[leaver]:
        emu.admin.set_membership(leaver_index, audience_id, member=False)
    joiner_index = next(i for i in range(600) if emu.admin.profile(i)["email"] not in first)
    emu.admin.set_membership(joiner_index, audiences[0], member=True)

    state, report2 = _run(dag, _interval_end(0))
    assert state == "success", report2
    second = aep.truth_snapshot(audiences)
    records = aep.snapshot_memberships(profile_ds, tenant)
    assert records == second
    assert leaver not in records and emu.admin.profile(joiner_index)["email"] in records
    assert len(aep.live_batches(profile_ds)) == 1  # exactly one live snapshot
    # ... and never two: the second run's batch replaced the first by batch replay, in one step (the
    # emulator's record of when each batch was visible; the explicit revert used to leave a window)
    snapshots = sorted(
        (
            b
            for b in aep.batches(profile_ds)
            if b.get("origin") == "ingestion"
            and b.get("completed")
            and b["status"] in ("success", "inactive")
        ),
        key=lambda b: b["completed"],
    )
    assert [b["status"] for b in snapshots] == ["inactive", "success"], snapshots
    assert snapshots[1]["replay"]["predecessors"] == [snapshots[0]["id"]]
    assert snapshots[0]["emulatorLive"]["until"] == snapshots[1]["emulatorLive"]["since"]

    old = {(p, a) for p, ms in first.items() for a, _, _ in ms}
    new = {(p, a) for p, ms in second.items() for a, _, _ in ms}
    by_audience = {row["id"]: row for row in report2["audiences"]}
    for audience_id in audiences:
        row = by_audience[audience_id]
        assert row["members"] == sum(1 for _, a in new if a == audience_id)
        assert row["entered"] == sum(1 for _, a in new - old if a == audience_id)
        # Everyone who left either shows as exited in the new export, or is untraced; never both.
        assert row["exited"] + row["untraced"] == sum(1 for _, a in old - new if a == audience_id)
        assert row["new"] is False
    assert all(row["new"] for row in report1["audiences"]) and report1["audiences"][0]["entered"] is None
    assert all(by_audience[a]["exited"] >= 1 for a, _, _ in first[leaver])  # the leaver's exits are proven

    # The second run's interval events: true transitions at their true times, none twice, none that
    # an export showed left out.
    start, end = report2["interval"]
    view = JobView(emu, job.job_id, audiences, tenant)
    events = view.check_events(
        aep.dataset_id(job.names.event_dataset),
        start,
        end,
        exact=False,
        export_dataset_name=job.names.export_dataset,
    )
    assert events
    assert json.dumps(report2)  # the report is plain JSON (it is also the Asset event's extra)
