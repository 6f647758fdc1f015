"""Change events against the emulator's membership timeline: the true transitions, each exactly once.

The oracle is ``/emulator/truth/transitions`` (what happened, from the timeline), never a re-derivation
of events from statuses. The emulator's clock is frozen at each run's interval end, as if AEP evaluated
its audiences right at the schedule tick: then consecutive exports prove every single transition of
an interval exactly (``JobView.check_events(exact=True)``). What no export can prove (an entry and an
exit inside one interval: AEP keeps the exit only) is checked to be left out, not invented.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_cja_audiences.config import RefreshJob

from aep_truth import JobView
from dag_runs import interval_end as _interval_end
from dag_runs import job as _job
from dag_runs import run as _run

pytestmark = pytest.mark.slow
DAY = timedelta(days=1)


def _iso(instant: datetime) -> str:
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run_at(emu, dag, end: datetime, clock: datetime | None = None, **conf) -> dict:
    """Run the DAG for the interval ending at ``end`` with AEP's data time frozen at ``clock`` (default
    ``end``). A logical date that ran before re-runs that run (with its conf)."""
    emu.admin.set_clock(_iso(clock or end), frozen=True)
    state, report = _run(dag, end, **conf)
    assert state == "success", report
    return report


def _member_at(emu, audience: str, at: datetime) -> int:
    rows = emu.admin.snapshot([audience], ["realized", "existing"], at=_iso(at))
    return sorted(rows, key=lambda r: r["profile_index"])[0]["profile_index"]


def _non_member_at(emu, audience: str, at: datetime, skip: set[int]) -> int:
    members = {
        r["profile_index"]
        for r in emu.admin.snapshot([audience], ["realized", "existing", "exited"], at=_iso(at))
    }
    return next(i for i in range(600) if i not in members and i not in skip)


def _setup(emu, dags_folder, job_id: str, schedule: str = "0 2 * * *") -> tuple[RefreshJob, object, JobView]:
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
    job = _job(audiences, job_id=job_id, schedule=schedule)
    return job, dags_folder(job), JobView(emu, job.job_id, audiences, emu.credentials.tenant)


def _transition_counts(view: JobView, start: str, end: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {a: {"entered": 0, "exited": 0} for a in view.audiences}
    for (_, audience, event, _), n in view.truth_transitions(start, end).items():
        counts[audience][event] += n
    return counts


def test_three_daily_runs_publish_exactly_the_true_transitions(emu, airflow_db, dags_folder):
    job, dag, view = _setup(emu, dags_folder, "history")
    ends = [_interval_end(days) for days in (3, 2, 1, 0)]
    a0, a1 = view.audiences[:2]
    moved: dict[str, tuple] = {}
    published = []
    for k, end in enumerate(ends):
        start = end - DAY
        if k == 2:  # mid-interval: one person enters, another leaves, at 14:00 of the interval
            joiner = _non_member_at(emu, a0, end, set())
            leaver = _member_at(emu, a1, start)
            emu.admin.set_membership(joiner, a0, member=True, at=_iso(start + timedelta(hours=12)))
            emu.admin.set_membership(leaver, a1, member=False, at=_iso(start + timedelta(hours=12)))
            moved = {
                "joiner": (
                    emu.admin.profile(joiner)["email"],
                    a0,
                    "entered",
                    _iso(start + timedelta(hours=12)),
                ),
                "leaver": (
                    emu.admin.profile(leaver)["email"],
                    a1,
                    "exited",
                    _iso(start + timedelta(hours=12)),
                ),
            }
        if k == 3:  # enters and leaves inside one interval: AEP keeps only the exit
            brief = _non_member_at(emu, a0, end, set())
            emu.admin.set_membership(brief, a0, member=True, at=_iso(start + timedelta(hours=3)))
            emu.admin.set_membership(brief, a0, member=False, at=_iso(start + timedelta(hours=9)))
            email = emu.admin.profile(brief)["email"]
            moved = {
                "brief_entry": (email, a0, "entered", _iso(start + timedelta(hours=3))),
                "brief_exit": (email, a0, "exited", _iso(start + timedelta(hours=9))),
            }
        report = _run_at(emu, dag, end)
        events_ds = view.dataset_id(job.names.event_dataset)
        s, e = _iso(start), _iso(end)
        assert report["events_window"]["interval"] == [s, e]
        if k < 3:
            records = view.check_events(events_ds, s, e, exact=True)
            truth = _transition_counts(view, s, e)
            for row in report["audiences"]:  # the report counts what was published, and nothing was untimed
                assert (row["interval_entered"], row["interval_exited"]) == (
                    truth[row["id"]]["entered"],
                    truth[row["id"]]["exited"],
                ), row
                assert row["interval_entered_untimed"] == (0 if k > 0 else None)
        else:
            records = view.check_events(
                events_ds, s, e, exact=False, export_dataset_name=job.names.export_dataset
            )
            missing = set(view.truth_transitions(s, e)) - set(records)
            assert missing == {moved["brief_entry"]}, missing  # the only thing AEP cannot show
        if k == 2:
            assert moved["joiner"] in records and moved["leaver"] in records
        if k == 3:
            assert moved["brief_exit"] in records
        published.append(sum(records.values()))
        # Every earlier interval is still exactly there, once.
        view.check_events(events_ds, _iso(ends[0] - DAY), _iso(ends[min(k, 2)]), exact=True)
    assert all(published), published
    live = view.live_batches(view.dataset_id(job.names.event_dataset), "events")
    assert sorted(b.label.scope for b in live) == sorted(
        f"{_iso(e - DAY)}_{_iso(e)}".replace("-", "").replace(":", "") for e in ends
    )
    print(f"\n[history] events published per day: {published}")


def test_overlapping_intervals_never_publish_an_event_twice(emu, airflow_db, dags_folder):
    job, dag, view = _setup(emu, dags_folder, "overlap")
    end = _interval_end(1)
    first = end - 2 * DAY

    # A daily run, then a manual run whose events interval covers it and the day after.
    _run_at(emu, dag, end - DAY)
    events_ds = view.dataset_id(job.names.event_dataset)
    view.check_events(events_ds, _iso(first), _iso(end - DAY), exact=True)
    report = _run_at(
        emu,
        dag,
        end,
        events_interval_start=_iso(first),
        events_interval_end=_iso(end),
        publish_snapshot=False,
    )
    assert report["events_window"]["interval"] == [_iso(first), _iso(end)]
    view.check_events(events_ds, _iso(first), _iso(end), exact=True)

    # The first day again, a day later (a re-run, or a backfill of a day the manual interval covered).
    report = _run_at(
        emu, dags_folder(job), end - DAY, clock=end
    )  # a fresh DAG: dag.test() keeps the last conf
    assert report["events_window"]["interval"] == [_iso(first), _iso(end)]  # widened over the live batch
    assert report["events_window"]["requested"] == [_iso(first), _iso(end - DAY)]
    view.check_events(events_ds, _iso(first), _iso(end), exact=True)

    # The schedule moves from 02:00 to 03:00: the first 03:00 interval overlaps the 02:00 ones.
    moved = _job(view.audiences, job_id="overlap", schedule="0 3 * * *")
    report = _run_at(emu, dags_folder(moved), end + timedelta(hours=1))
    assert report["events_window"]["interval"] == [_iso(first), _iso(end + timedelta(hours=1))]
    records = view.check_events(events_ds, _iso(first), _iso(end + timedelta(hours=1)), exact=True)
    (live,) = view.live_batches(events_ds, "events")  # one live batch: its predecessors were replaced
    assert sum(records.values()) == report["events"]["records"]
    print(
        f"\n[overlap] {sum(records.values())} events over [{_iso(first)}, {_iso(end + timedelta(hours=1))}), "
        f"one live batch {live.id}"
    )
