"""The refresh DAG on real Airflow: CeleryExecutor with two workers, scheduler, dag-processor,
triggerer and api-server as separate processes, PostgreSQL metadata DB, Redis broker, the emulator.

The tests run in order on one deployment (session fixture), each building on the previous one:

1. a run triggered through the REST API, and the scheduled run the scheduler adds once the DAG is
   unpaused: both succeed; the snapshot and the interval's events equal the ground truth; which
   worker ran what; deferred tasks waited in the triggerer, not in a worker slot;
2. the api-server's UI API: connection form fields, trigger-form params, extra links that resolve;
3. ``airflow backfill create`` over 7 daily intervals (runs started by the scheduler): each
   interval's events equal the ground truth; the snapshot is untouched; a retention warning names
   exactly the intervals older than 30 days;
4. the scheduled run re-run after the backfill replaces the snapshot (ground truth, one live batch);
5. re-running one backfilled interval replaces its events (one live batch, no duplicates) and
   leaves the snapshot alone.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from airflow_cja_audiences import get_provider_info
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.runs import EXIT_RETENTION

from aep_truth import JobView, interval_scope
from airflow_cluster import poll, ti_name

pytestmark = [pytest.mark.slow, pytest.mark.services]

DEFERRED_TASKS = ("export_audiences", "publish_snapshot", "publish_events")
BACKFILL_DAYS_AGO = range(33, 26, -1)  # 7 daily intervals; the oldest ones beyond the 30-day exit retention
RERUN_DAYS_AGO = 28
RETENTION_WARNING = "starts more than 30 days ago"


def _iso(instant: datetime) -> str:
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _view(dep) -> JobView:
    return JobView(dep.emu, dep.job_id, dep.audiences, dep.emu.credentials.tenant)


def _names(dep):
    return RefreshJob.model_validate(dep.job).names


def _watch_deferrals(dep, run_ids: list[str], seen: dict[str, dict]) -> None:
    """Record task instances seen in state ``deferred`` (with their trigger) while runs are going."""
    for run_id in run_ids:
        for ti in dep.cluster.task_instances(dep.dag_id, run_id):
            if ti["state"] == "deferred":
                seen.setdefault(
                    f"{run_id}/{ti_name(ti)}", {"trigger": ti.get("trigger"), "hostname": ti["hostname"]}
                )


def _deferral_timeline(dep, run_id: str, task_id: str) -> dict:
    """When the task deferred, when its trigger ran in the triggerer, and which worker executions
    surrounded that: proof that no worker slot was held while the trigger waited."""
    cluster = dep.cluster
    task_events = cluster.task_log_events(dep.dag_id, run_id, task_id)
    trigger_events = cluster.task_log_events(dep.dag_id, run_id, task_id, trigger=True)
    deferred = [e["time"] for e in task_events if "Pausing task as DEFERRED" in e.get("event", "")]
    started = [e["time"] for e in trigger_events if e.get("event", "").endswith("starting")]
    fired = [e["time"] for e in trigger_events if e.get("event") == "Trigger fired event"]
    assert deferred and started and fired, (
        f"{run_id}/{task_id}: no deferral in the task log or no trigger log from the triggerer "
        f"(deferred={deferred}, trigger started={started}, fired={fired})"
    )
    executions = sorted(
        (e for e in cluster.worker_executions() if e.run_id == run_id and e.task_id == task_id),
        key=lambda e: e.started,
    )
    assert len(executions) >= 2, (
        f"{run_id}/{task_id}: expected a first execution and a resume, got {executions}"
    )
    first, resume = executions[0], executions[1]
    assert first.finished is not None and first.finished < fired[0] <= resume.started, (
        f"{run_id}/{task_id}: a worker held the task while its trigger waited: first execution "
        f"{first.started}..{first.finished} on {first.worker}, trigger fired {fired[0]}, resume {resume.started}"
    )
    return {
        "deferred": deferred[0],
        "trigger_started": started[0],
        "trigger_fired": fired[0],
        "slot_released": first.finished,
        "resumed": resume.started,
        "first_worker": first.worker,
        "resume_worker": resume.worker,
        "waited_without_slot_s": round((fired[0] - first.finished).total_seconds(), 2),
    }


def _check_snapshot(dep) -> str:
    """The live profile snapshot equals the ground truth at its export; returns its batch id."""
    view = _view(dep)
    return view.check_snapshot(view.dataset_id(_names(dep).profile_dataset))


def _check_interval_events(dep, start: str, end: str) -> tuple[str, int]:
    """See ``JobView.check_interval_events``. Returns (batch, n)."""
    view = _view(dep)
    return view.check_interval_events(
        view.dataset_id(_names(dep).event_dataset), start, end, _names(dep).export_dataset
    )


# ---------------------------------------------------------------------------------------------------
def test_rest_triggered_and_scheduled_runs_on_celery(dep):
    cluster = dep.cluster
    details = cluster.api("GET", f"/api/v2/dags/{dep.dag_id}/details")
    assert details["is_paused"] is True and details["timetable_summary"]
    manual = cluster.trigger(dep.dag_id)  # POST /api/v2/dags/{id}/dagRuns (logical_date null, as the UI does)
    dep.runs["manual"] = manual
    cluster.set_paused(
        dep.dag_id, False
    )  # PATCH /api/v2/dags/{id}; the scheduler adds the latest scheduled run
    scheduled = poll(
        lambda: next(
            (r["dag_run_id"] for r in cluster.dag_runs(dep.dag_id) if r["run_type"] == "scheduled"), None
        ),
        timeout=60,
        what="the scheduler to create the scheduled run",
    )
    dep.runs["scheduled"] = scheduled
    seen: dict[str, dict] = {}
    started = time.monotonic()
    for run_id in (manual, scheduled):
        state = cluster.wait_for_run(
            dep.dag_id, run_id, timeout=240, on_poll=lambda: _watch_deferrals(dep, [manual, scheduled], seen)
        )
        assert state == "success", f"{run_id} ended {state}"
    elapsed = time.monotonic() - started

    runs = {r["dag_run_id"]: r for r in cluster.dag_runs(dep.dag_id)}
    assert runs[manual]["triggered_by"] == "rest_api" and runs[manual]["run_type"] == "manual"
    assert runs[scheduled]["triggered_by"] == "timetable"
    now = datetime.now(timezone.utc)
    end = now.replace(hour=2, minute=0, second=0, microsecond=0)
    end = end if end <= _when(runs[scheduled]["queued_at"]) else end - timedelta(days=1)
    interval = (_iso(end - timedelta(days=1)), _iso(end))
    assert (runs[scheduled]["data_interval_start"], runs[scheduled]["data_interval_end"]) == interval

    dep.facts["snapshot_batch"] = _check_snapshot(dep)
    batch, n_events = _check_interval_events(dep, *interval)
    dep.facts["scheduled_events_batch"], dep.facts["scheduled_interval"] = batch, interval

    # Who ran what: both Celery workers took part; every task that ran went through a worker.
    per_worker = cluster.tasks_per_worker(dep.dag_id, [manual, scheduled])
    ran = [
        t
        for r in (manual, scheduled)
        for t in cluster.task_instances(dep.dag_id, r)
        if t["state"] == "success"
    ]
    assert all(n > 0 for n in per_worker.values()), per_worker
    executed = {(e.run_id, e.task_id, e.map_index) for e in cluster.worker_executions()}
    assert {
        (r, t["task_id"], t["map_index"])
        for r in (manual, scheduled)
        for t in cluster.task_instances(dep.dag_id, r)
        if t["state"] == "success"
    } <= executed

    # Deferred tasks: seen as "deferred" with a trigger through the API, and their timeline shows the
    # worker slot released before the trigger fired in the triggerer, then a new execution.
    assert any(k.endswith("/export_audiences") and v["trigger"] for k, v in seen.items()), seen
    timelines = {
        f"{run_id}/{task}": _deferral_timeline(dep, run_id, task)
        for run_id in (manual, scheduled)
        for task in DEFERRED_TASKS
        if any(
            t["task_id"] == task and t["state"] == "success"
            for t in cluster.task_instances(dep.dag_id, run_id)
        )
    }
    assert f"{manual}/export_audiences" in timelines and f"{scheduled}/publish_events" in timelines
    print(
        f"\n[distributed] 2 runs in {elapsed:.0f} s; {len(ran)} task instances succeeded; "
        f"task instances per Celery worker: {per_worker}; scheduled interval {interval}: {n_events} events"
    )
    print("[distributed] seen deferred through the REST API: " + ", ".join(sorted(seen)))
    for key, t in timelines.items():
        print(
            f"[distributed] {key}: deferred {t['deferred']:%H:%M:%S.%f}, slot released {t['slot_released']:%H:%M:%S.%f} "
            f"({t['first_worker']}), trigger {t['trigger_started']:%H:%M:%S.%f}..{t['trigger_fired']:%H:%M:%S.%f} "
            f"in the triggerer, resumed {t['resumed']:%H:%M:%S.%f} ({t['resume_worker']}); "
            f"{t['waited_without_slot_s']} s waited without a slot"
        )


def test_ui_api_connection_form_params_and_extra_links(dep):
    cluster = dep.cluster
    if "manual" not in dep.runs:
        pytest.fail("needs the runs of test_rest_triggered_and_scheduled_runs_on_celery")
    # Connection form (Admin > Connections > Add): our type, relabelled standard fields, extra fields.
    declared = next(
        c
        for c in get_provider_info()["connection-types"]
        if c["connection-type"] == "adobe_experience_platform"
    )
    hooks = {h["connection_type"]: h for h in cluster.api("GET", "/ui/connections/hook_meta")}
    form = hooks["adobe_experience_platform"]
    assert form["hook_name"] == declared["hook-name"] == "Adobe Experience Platform"
    for field, label in declared["ui-field-behaviour"]["relabeling"].items():
        assert form["standard_fields"][field]["title"] == label, (field, form["standard_fields"][field])
    extra = form["extra_fields"]
    assert set(extra) == set(declared["conn-fields"]) >= {"org_id", "sandbox", "ca_bundle", "ui_url"}
    for name, spec in declared["conn-fields"].items():
        shown = json.dumps(extra[name])
        assert spec["label"] in shown and spec["description"] in shown, (name, extra[name])

    # Trigger form: the DAG's Params with their titles and descriptions.
    params = cluster.api("GET", f"/api/v2/dags/{dep.dag_id}/details")["params"]
    assert set(params) == {
        "force_replace",
        "publish_snapshot",
        "events_interval_start",
        "events_interval_end",
    }
    for name, param in params.items():
        assert param["schema"].get("title") and param.get("description"), f"{name}: {param}"
    assert params["force_replace"]["schema"]["title"] == "Replace even if the snapshot shrinks"

    # Extra links of finished tasks: the URL the worker stored answers from the emulator's "AEP UI".
    checked = {}
    for task_id, link_name in (
        ("ensure_profile_dataset", "AEP dataset"),
        ("export_audiences", "AEP export job"),
        ("publish_snapshot", "AEP batch"),
    ):
        links = cluster.api(
            "GET",
            f"/api/v2/dags/{dep.dag_id}/dagRuns/{dep.runs['manual']}/taskInstances/{task_id}/links",
            params={"map_index": -1},
        )["extra_links"]
        url = links.get(link_name)
        assert url and url.startswith(dep.emu.base_url + "/emulator/ui/"), links
        page = requests.get(url, verify=dep.emu.ca_bundle, timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], (
            url,
            page.status_code,
        )
        checked[task_id] = url
    print(f"\n[distributed] extra links answer 200: {json.dumps(checked)}")


def test_backfill_seven_days_fills_events_and_keeps_the_snapshot(dep):
    cluster, view = dep.cluster, _view(dep)
    if "snapshot_batch" not in dep.facts:
        pytest.fail("needs the snapshot of test_rest_triggered_and_scheduled_runs_on_celery")
    profile_ds = view.dataset_id(_names(dep).profile_dataset)
    snapshot_before = (view.live_batches(profile_ds, "snapshot"), view.snapshot_records(profile_ds))
    end = _when(dep.facts["scheduled_interval"][0])  # backfill intervals end before the scheduled one
    starts = [end - timedelta(days=d) for d in BACKFILL_DAYS_AGO]
    from_date, to_date = starts[0].date().isoformat(), (starts[-1] + timedelta(days=1)).date().isoformat()
    # A manual run first publishes one events interval over two of the days the backfill will cover:
    # those two backfill runs widen theirs to it, contend for it (at most one publishes at a time) and
    # leave each event once.
    covered = (_iso(end - timedelta(days=30)), _iso(end - timedelta(days=28)))
    manual = cluster.trigger(
        dep.dag_id,
        conf={
            "events_interval_start": covered[0],
            "events_interval_end": covered[1],
            "publish_snapshot": False,
        },
    )
    assert cluster.wait_for_run(dep.dag_id, manual, timeout=240) == "success"
    manual_batch, manual_events = _check_interval_events(dep, *covered)
    # Slow exports during the backfill, so its 7 runs' waits overlap: more deferred tasks than worker slots.
    knobs = dep.emu.admin.knobs()  # realistic mode: durations in Adobe seconds on a compressed clock
    default_job_seconds = knobs["export_job_seconds"]
    dep.emu.admin.knobs(export_job_seconds=20 / knobs["time_scale"])  # 20 real seconds
    started = time.monotonic()
    try:
        dry = cluster.cli(
            "backfill",
            "create",
            "--dag-id",
            dep.dag_id,
            "--from-date",
            from_date,
            "--to-date",
            to_date,
            "--dry-run",
        )
        # The UI's "Override parameters" sends the Params form as every run's conf: the backfill runs must
        # ignore its events interval and snapshot switch, and publish their own intervals.
        overridden = {
            "events_interval_start": _iso(starts[0] - timedelta(days=2)),
            "events_interval_end": _iso(starts[0] - timedelta(days=1)),
            "publish_snapshot": True,
        }
        cluster.cli(
            "backfill",
            "create",
            "--dag-id",
            dep.dag_id,
            "--from-date",
            from_date,
            "--to-date",
            to_date,
            "--max-active-runs",
            "7",
            "--dag-run-conf",
            json.dumps(overridden),
        )
        backfill_runs = poll(
            lambda: [r for r in cluster.dag_runs(dep.dag_id) if r["run_type"] == "backfill"] or None,
            timeout=30,
            what="the backfill's runs",
        )
        dep.runs.update({f"backfill-{r['data_interval_start'][:10]}": r["dag_run_id"] for r in backfill_runs})
        cluster.wait_for_runs(dep.dag_id, [r["dag_run_id"] for r in backfill_runs], timeout=300)
    finally:
        dep.emu.admin.knobs(export_job_seconds=default_job_seconds)
    elapsed = time.monotonic() - started

    runs = {r["dag_run_id"]: r for r in cluster.dag_runs(dep.dag_id) if r["run_type"] == "backfill"}
    intervals = sorted(
        (r["data_interval_start"], r["data_interval_end"], run_id) for run_id, r in runs.items()
    )
    assert [s for s, _, _ in intervals] == [_iso(s) for s in starts], (dry.stdout, intervals)
    assert all(r["state"] == "success" for r in runs.values()), {k: r["state"] for k, r in runs.items()}

    totals = {}
    for start, end_, run_id in intervals:
        batch, totals[start[:10]] = _check_interval_events(dep, start, end_)
        tis = {t["task_id"]: t for t in cluster.task_instances(dep.dag_id, run_id)}
        assert tis["publish_snapshot"]["state"] == "skipped" and tis["publish_events"]["state"] == "success"
        # The retention warning names this interval exactly when it starts more than 30 days before the run.
        plan_log = cluster.task_log(dep.dag_id, run_id, "plan_run")
        planned_at = _when(tis["plan_run"]["start_date"])
        old = _when(start) < planned_at - EXIT_RETENTION
        assert "the trigger form's events interval" in plan_log and "is ignored" in plan_log, plan_log[-3000:]
        warned = RETENTION_WARNING in plan_log and f"[{start}, {end_})" in plan_log
        assert warned == old, (
            f"{run_id}: retention warning {'missing' if old else 'unexpected'}:\n{plan_log[-3000:]}"
        )
    assert sum(totals.values()) > 0, "the backfill published no events at all"
    events_ds = view.dataset_id(_names(dep).event_dataset)
    hull = [b for b in view.live_batches(events_ds, "events") if b.label.scope == interval_scope(*covered)]
    if manual_events:  # the manual interval's batch was replaced by one covering the same hull, once
        assert len(hull) == 1 and hull[0].id != manual_batch, (hull, manual_batch)
    covered_runs = [r for s_, _, r in intervals if covered[0] <= s_ < covered[1]]
    gave_way = [
        r for r in covered_runs if "trying again at" in cluster.task_log(dep.dag_id, r, "prepare_events")
    ]
    assert (
        view.live_batches(profile_ds, "snapshot"),
        view.snapshot_records(profile_ds),
    ) == snapshot_before, "the backfill changed the profile snapshot"

    # More tasks waited at once in the triggerer than the workers have slots: waiting holds none.
    overlap = _max_concurrent_triggers(dep, [run_id for _, _, run_id in intervals])
    slots = len(cluster.worker_names) * cluster.spec.worker_concurrency
    assert overlap > slots, f"at most {overlap} triggers waited at once; workers have {slots} slots"
    per_worker = cluster.tasks_per_worker(dep.dag_id, [run_id for _, _, run_id in intervals])
    assert all(n > 0 for n in per_worker.values()), per_worker
    warned = [
        s[:10] for s, _, r in intervals if RETENTION_WARNING in cluster.task_log(dep.dag_id, r, "plan_run")
    ]
    dep.facts["backfill_events"] = totals
    print(
        f"\n[distributed] backfill {from_date}..{to_date}: 7 runs in {elapsed:.0f} s; events per interval {totals}; "
        f"retention warning for {warned}; manual interval {covered} ({manual_events} events) re-published once by "
        f"the backfill runs over it ({len(gave_way)} of {len(covered_runs)} gave way to the other first); "
        f"up to {overlap} deferred tasks waited at once with {slots} worker slots; "
        f"task instances per worker: {per_worker}"
    )


def test_scheduled_run_after_the_backfill_replaces_the_snapshot(dep):
    cluster = dep.cluster
    if "backfill_events" not in dep.facts:
        pytest.fail("needs test_backfill_seven_days_fills_events_and_keeps_the_snapshot")
    scheduled = dep.runs["scheduled"]
    cluster.api("POST", f"/api/v2/dags/{dep.dag_id}/dagRuns/{scheduled}/clear", json={"dry_run": False})
    poll(
        lambda: cluster.dag_run(dep.dag_id, scheduled)["state"] != "success",
        timeout=30,
        interval=0.2,
        what="the cleared run to restart",
    )
    assert cluster.wait_for_run(dep.dag_id, scheduled, timeout=240) == "success"
    assert cluster.dag_run(dep.dag_id, scheduled)["run_type"] == "scheduled"
    batch = _check_snapshot(dep)  # ground truth at the new export, one live snapshot batch
    assert batch != dep.facts["snapshot_batch"], "the scheduled run did not publish a new snapshot"
    events_batch, _ = _check_interval_events(dep, *dep.facts["scheduled_interval"])
    for day in dep.facts["backfill_events"]:  # the backfilled history is still exactly there
        start = _when(f"{day}T02:00:00Z")
        _check_interval_events(dep, _iso(start), _iso(start + timedelta(days=1)))
    print(
        f"\n[distributed] scheduled run re-run after the backfill: snapshot {dep.facts['snapshot_batch']} "
        f"replaced by {batch}; events batch {dep.facts['scheduled_events_batch']} -> {events_batch}"
    )


def test_rerunning_one_interval_replaces_its_events(dep):
    cluster = dep.cluster
    if "backfill_events" not in dep.facts:
        pytest.fail("needs test_backfill_seven_days_fills_events_and_keeps_the_snapshot")
    end = _when(dep.facts["scheduled_interval"][0])
    start = end - timedelta(days=RERUN_DAYS_AGO)
    interval = (_iso(start), _iso(start + timedelta(days=1)))
    view = _view(dep)
    events_ds = view.dataset_id(_names(dep).event_dataset)
    before = [
        b.id for b in view.live_batches(events_ds, "events") if b.label.scope == interval_scope(*interval)
    ]
    profile_ds = view.dataset_id(_names(dep).profile_dataset)
    snapshot_before = (view.live_batches(profile_ds, "snapshot"), view.snapshot_records(profile_ds))
    first = next(r for r in cluster.dag_runs(dep.dag_id) if r["data_interval_start"] == interval[0])
    _wait_for_backfills(cluster, dep.dag_id, timeout=60)  # one backfill at a time per DAG
    cluster.cli(
        "backfill",
        "create",
        "--dag-id",
        dep.dag_id,
        "--from-date",
        start.date().isoformat(),
        "--to-date",
        (start + timedelta(days=1)).date().isoformat(),
        "--reprocess-behavior",
        "completed",
    )
    # The backfill clears the completed run, which runs again under the same run id.
    poll(
        lambda: cluster.dag_run(dep.dag_id, first["dag_run_id"])["end_date"] != first["end_date"],
        timeout=60,
        interval=0.5,
        what="the backfill to clear the completed run",
    )
    assert cluster.wait_for_run(dep.dag_id, first["dag_run_id"], timeout=180) == "success"
    run = cluster.dag_run(dep.dag_id, first["dag_run_id"])
    assert run["run_type"] == "backfill" and run["end_date"] > first["end_date"]
    assert len([r for r in cluster.dag_runs(dep.dag_id) if r["data_interval_start"] == interval[0]]) == 1
    batch, count = _check_interval_events(dep, *interval)  # exactly one live batch, records == truth
    assert batch and batch not in before, f"the re-run did not publish a new batch ({batch}, before {before})"
    assert (view.live_batches(profile_ds, "snapshot"), view.snapshot_records(profile_ds)) == snapshot_before
    print(
        f"\n[distributed] re-ran [{interval[0]}, {interval[1]}): batch {before} replaced by {batch}; "
        f"{count} events (first run: {dep.facts['backfill_events'][interval[0][:10]]})"
    )


# ---------------------------------------------------------------------------------------------------
def _wait_for_backfills(cluster, dag_id: str, timeout: float) -> None:
    """Wait until every backfill of the DAG is complete (the scheduler marks that every 30 s)."""

    def done() -> bool:
        cluster.check_alive()
        backfills = cluster.api("GET", "/api/v2/backfills", params={"dag_id": dag_id})["backfills"]
        return bool(backfills) and all(b["completed_at"] for b in backfills)

    poll(done, timeout=timeout, interval=2.0, what="the backfill to complete")


def _max_concurrent_triggers(dep, run_ids: list[str]) -> int:
    """The most triggers that were waiting at the same moment, from the triggerer's log of each task."""
    edges = []
    for run_id in run_ids:
        for task in DEFERRED_TASKS:
            events = dep.cluster.task_log_events(dep.dag_id, run_id, task, trigger=True)
            starts = [e["time"] for e in events if e.get("event", "").endswith("starting")]
            fired = [e["time"] for e in events if e.get("event") == "Trigger fired event"]
            if starts and fired:
                edges += [(starts[0], 1), (fired[-1], -1)]
    running = best = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        best = max(best, running)
    return best
