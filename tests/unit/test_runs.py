"""What a run publishes, and the batch labels that make replacement decidable from AEP alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_cja_audiences.runs import BatchLabel, plan_run

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=timezone.utc)
DAY = (datetime(2026, 11, 28, 2, tzinfo=timezone.utc), datetime(2026, 11, 29, 2, tzinfo=timezone.utc))


def test_scheduled_run_publishes_snapshot_and_interval_events_from_one_unfiltered_export():
    plan = plan_run(run_type="scheduled", interval=DAY, publish_events=True, now=NOW)
    assert (plan.snapshot, plan.events) == (True, True)
    assert (plan.interval_start, plan.interval_end) == ("2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z")
    assert plan.export_statuses == ("realized", "existing", "exited")
    assert plan.qualification_window == (None, None)  # the snapshot export is never time-filtered


@pytest.mark.parametrize("run_type", ["backfill", "backfill_job"])
def test_backfill_publishes_only_its_events_with_a_filtered_export(run_type):
    plan = plan_run(run_type=run_type, interval=DAY, publish_events=True, now=NOW)
    assert (plan.snapshot, plan.events) == (False, True)
    assert plan.qualification_window == ("2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z")


def test_manual_run_without_interval_refreshes_the_snapshot_only():
    plan = plan_run(run_type="manual", interval=None, publish_events=True, now=NOW)
    assert (plan.snapshot, plan.events) == (True, False)
    assert plan.export_statuses == ("realized", "existing")


def test_manual_events_interval_from_the_trigger_form():
    plan = plan_run(run_type="manual", interval=None, publish_events=True, now=NOW, manual_interval=DAY,
                    force_snapshot=False)
    assert (plan.snapshot, plan.events) == (False, True)


def test_interval_older_than_exit_retention_warns_naming_it():
    old = (NOW - timedelta(days=40), NOW - timedelta(days=39))
    plan = plan_run(run_type="backfill", interval=old, publish_events=True, now=NOW)
    assert len(plan.warnings) == 1 and plan.interval_start in plan.warnings[0] and "30 days" in plan.warnings[0]
    assert not plan_run(run_type="backfill", interval=DAY, publish_events=True, now=NOW).warnings


@pytest.mark.parametrize("kwargs, message", [
    ({"run_type": "backfill", "interval": DAY, "publish_events": False}, "publish nothing"),
    ({"run_type": "scheduled", "interval": (DAY[1], DAY[0]), "publish_events": True}, "not after"),
    ({"run_type": "scheduled", "interval": (NOW, NOW + timedelta(days=1)), "publish_events": True}, "future"),
])
def test_impossible_plans_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_run(now=NOW, **kwargs)


def test_labels_round_trip_and_name_their_slot():
    snap = BatchLabel.for_run(job_id="luma", kind="snapshot", export_batch_id="01ABC", run_id="scheduled__x")
    again = BatchLabel.for_run(job_id="luma", kind="snapshot", export_batch_id="01DEF", run_id="scheduled__y")
    events = BatchLabel.for_run(job_id="luma", kind="events", export_batch_id="01ABC", run_id="r",
                                interval_start="2026-11-28T02:00:00Z", interval_end="2026-11-29T02:00:00Z")
    assert BatchLabel.parse(snap.external_id) == snap
    assert snap.same_slot(again) and not snap.same_slot(events)
    assert events.scope == "20261128T020000Z_20261129T020000Z"
    other_job = BatchLabel.for_run(job_id="other", kind="snapshot", export_batch_id="01ABC", run_id="r")
    assert not snap.same_slot(other_job)
    for foreign in (None, "", "somebody-else's-batch", "cjaaud|x|weird|s|b|r", "cjaaud|bad id!|snapshot|s|b|r"):
        assert BatchLabel.parse(foreign) is None
