"""What a run publishes, and the batch labels that make replacement decidable from AEP alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_cja_audiences.runs import (
    BatchLabel,
    ExportRef,
    OpenEventsBatch,
    choose_event_sources,
    events_hull,
    events_publish_conflict,
    events_query_claims,
    plan_run,
    utc_iso,
)

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
    assert plan.export_statuses == ("realized", "existing", "exited")  # exits tell exits from untraced people


def test_manual_events_interval_from_the_trigger_form():
    plan = plan_run(
        run_type="manual",
        interval=None,
        publish_events=True,
        now=NOW,
        manual_interval=DAY,
        force_snapshot=False,
    )
    assert (plan.snapshot, plan.events) == (False, True)


def test_interval_older_than_exit_retention_warns_naming_it():
    old = (NOW - timedelta(days=40), NOW - timedelta(days=39))
    plan = plan_run(run_type="backfill", interval=old, publish_events=True, now=NOW)
    assert (
        len(plan.warnings) == 1 and plan.interval_start in plan.warnings[0] and "30 days" in plan.warnings[0]
    )
    assert not plan_run(run_type="backfill", interval=DAY, publish_events=True, now=NOW).warnings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"run_type": "backfill", "interval": DAY, "publish_events": False}, "publish nothing"),
        ({"run_type": "scheduled", "interval": (DAY[1], DAY[0]), "publish_events": True}, "not after"),
        (
            {"run_type": "scheduled", "interval": (NOW, NOW + timedelta(days=1)), "publish_events": True},
            "future",
        ),
    ],
)
def test_impossible_plans_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_run(now=NOW, **kwargs)


def test_labels_round_trip_and_name_their_slot():
    snap = BatchLabel.for_run(job_id="luma", kind="snapshot", export_batch_id="01ABC", run_id="scheduled__x")
    again = BatchLabel.for_run(job_id="luma", kind="snapshot", export_batch_id="01DEF", run_id="scheduled__y")
    events = BatchLabel.for_run(
        job_id="luma",
        kind="events",
        export_batch_id="01ABC",
        run_id="r",
        interval_start="2026-11-28T02:00:00Z",
        interval_end="2026-11-29T02:00:00Z",
    )
    assert BatchLabel.parse(snap.external_id) == snap
    assert snap.supersedes(again) and not snap.supersedes(events) and not events.supersedes(snap)
    assert events.scope == "20261128T020000Z_20261129T020000Z" and events.interval == DAY
    other_job = BatchLabel.for_run(job_id="other", kind="snapshot", export_batch_id="01ABC", run_id="r")
    assert not snap.supersedes(other_job)
    for foreign in (
        None,
        "",
        "somebody-else's-batch",
        "cjaaud|x|weird|s|b|r",
        "cjaaud|bad id!|snapshot|s|b|r",
    ):
        assert BatchLabel.parse(foreign) is None


def _events_label(start: datetime, end: datetime) -> BatchLabel:
    return BatchLabel.for_run(
        job_id="luma",
        kind="events",
        export_batch_id="01ABC",
        run_id="r",
        interval_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        interval_end=end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def test_events_batches_supersede_the_intervals_inside_theirs_only():
    week = _events_label(DAY[0] - timedelta(days=6), DAY[1])
    assert week.supersedes(_events_label(*DAY))
    assert not _events_label(*DAY).supersedes(week)
    shifted = _events_label(DAY[0] + timedelta(hours=1), DAY[1] + timedelta(hours=1))  # 02:00 -> 03:00
    assert not shifted.supersedes(_events_label(*DAY))


def test_backfill_ignores_the_trigger_forms_interval_and_says_so():
    """The Backfill dialog's "override parameters" gives every run the same form values."""
    form = (DAY[0] - timedelta(days=3), DAY[0] - timedelta(days=2))
    plan = plan_run(
        run_type="backfill",
        interval=DAY,
        publish_events=True,
        now=NOW,
        manual_interval=form,
        force_snapshot=True,
    )
    assert (plan.snapshot, plan.events) == (False, True)
    assert (plan.interval_start, plan.interval_end) == ("2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z")
    assert any("ignored" in w and "2026-11-25T02:00:00Z" in w for w in plan.warnings)
    assert any("publish_snapshot is ignored" in w for w in plan.warnings)


H = timedelta(hours=1)


@pytest.mark.parametrize(
    "live, hull, taken",
    [
        ([], DAY, []),
        ([(DAY[0] - 24 * H, DAY[0]), (DAY[1], DAY[1] + 24 * H)], DAY, []),  # touching is not overlapping
        ([(DAY[0] + H, DAY[1] + H)], (DAY[0], DAY[1] + H), [0]),  # schedule moved from 02:00 to 03:00
        ([(DAY[0] + 2 * H, DAY[0] + 3 * H), (DAY[0] - 5 * H, DAY[0] + H)], (DAY[0] - 5 * H, DAY[1]), [0, 1]),
        # transitively: the first widens the hull into the second
        ([(DAY[1] + H, DAY[1] + 30 * H), (DAY[1] - H, DAY[1] + 2 * H)], (DAY[0], DAY[1] + 30 * H), [0, 1]),
    ],
)
def test_events_hull_covers_every_overlapping_live_interval(live, hull, taken):
    assert events_hull(DAY, live) == (hull, taken)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def test_event_sources_are_the_exports_during_the_interval_and_the_first_after_it():
    before = ExportRef("B0", _ms(DAY[0] - 20 * H))
    during = ExportRef("B1", _ms(DAY[0] + H))
    filtered = ExportRef("F1", _ms(DAY[0] + 2 * H), filtered=True)
    after = ExportRef("B2", _ms(DAY[1] + timedelta(seconds=30)))
    later = ExportRef("B3", _ms(DAY[1] + 24 * H))
    chosen = choose_event_sources([later, after, filtered, during, before], DAY, must_read=("B3",))
    assert chosen.batch_ids == ["B1", "F1", "B2", "B3"]
    assert chosen.untimed_pair == (during, after)  # consecutive full exports around the interval's end
    # Nothing made before the interval's end: no pair to count untimed entries with.
    assert choose_event_sources([after], DAY).untimed_pair is None
    assert choose_event_sources([before, after], DAY).untimed_pair == (before, after)


def test_event_sources_are_bounded():
    many = [ExportRef(f"B{i:03d}", _ms(DAY[0] + timedelta(minutes=i))) for i in range(30)]
    chosen = choose_event_sources(many, DAY, limit=10)
    assert len(chosen.batches) == 10 and chosen.dropped == 20


def _open(
    batch_id: str, interval, created: int, live: bool = False, run_key: str = "other"
) -> OpenEventsBatch:
    return OpenEventsBatch(batch_id, interval, created, run_key, live)


def test_the_first_of_two_overlapping_open_batches_publishes_the_other_waits():
    shifted = (DAY[0] + H, DAY[1] + H)
    kwargs = {"run_key": "mine", "interval": DAY, "replaced": set()}
    assert (
        events_publish_conflict(mine_id="M", mine_created_ms=100, others=[_open("X", shifted, 200)], **kwargs)
        is None
    )
    assert "being published" in events_publish_conflict(
        mine_id="M", mine_created_ms=100, others=[_open("X", shifted, 50)], **kwargs
    )
    # An open batch left behind by a run that died hours ago does not block anyone for ever.
    assert (
        events_publish_conflict(
            mine_id="M", mine_created_ms=7 * 3600_000, others=[_open("X", shifted, 50)], **kwargs
        )
        is None
    )
    # A live batch this run planned to replace is no conflict; one that went live since is.
    assert (
        events_publish_conflict(
            mine_id="M",
            mine_created_ms=100,
            others=[_open("X", shifted, 50, live=True)],
            run_key="mine",
            interval=DAY,
            replaced={"X"},
        )
        is None
    )
    assert "went live" in events_publish_conflict(
        mine_id="M", mine_created_ms=100, others=[_open("X", shifted, 50, live=True)], **kwargs
    )
    # Disjoint intervals and this run's own earlier batches never conflict.
    assert (
        events_publish_conflict(
            mine_id="M",
            mine_created_ms=100,
            others=[_open("X", (DAY[1], DAY[1] + 24 * H), 50), _open("Y", DAY, 50, run_key="mine")],
            **kwargs,
        )
        is None
    )


def _label(interval: tuple[datetime, datetime], run_id: str, job_id: str = "job1") -> str:
    return BatchLabel.for_run(
        job_id=job_id,
        kind="events",
        export_batch_id="01JEXPORTBATCH0000000000001",
        run_id=run_id,
        interval_start=utc_iso(interval[0]),
        interval_end=utc_iso(interval[1]),
    ).external_id


def test_in_flight_events_queries_are_claims_of_their_named_interval():
    shifted = (DAY[0] + H, DAY[1] + H)
    listed = [
        ("Q1", _label(shifted, "other"), "IN_PROGRESS", 50),
        ("Q2", _label(shifted, "other"), "SUCCESS", 40),  # ended: its batch speaks for it
        ("Q3", _label(shifted, "other"), "FAILED", 30),  # wrote nothing
        ("Q4", _label(shifted, "other", job_id="job2"), "SUBMITTED", 20),  # another job
        ("Q5", "SELECT 1", "SUBMITTED", 10),  # not ours
        ("Q6", None, "SUBMITTED", 10),
        ("Q7", _label(shifted, "mine"), "submitted", 5),
    ]
    claims = events_query_claims(listed, "job1")
    assert [(c.batch_id, c.interval, c.created_ms, c.live, c.what) for c in claims] == [
        ("Q1", shifted, 50, False, "events batch query"),
        ("Q7", shifted, 5, False, "events batch query"),
    ]
    kwargs = {"run_key": claims[1].run_key, "interval": DAY, "replaced": set()}
    # Asked before submitting (mine_id "", created now): an earlier overlapping query means wait.
    reason = events_publish_conflict(mine_id="", mine_created_ms=100, others=claims, **kwargs)
    assert reason is not None and "events batch query Q1" in reason and "being published" in reason
    # Submitted first: the other query's run gives way, this one goes on (its own Q7 is no conflict).
    assert events_publish_conflict(mine_id="Q7", mine_created_ms=5, others=claims, **kwargs) is None
    # A batch query and an open batch count alike: the earlier of the two goes on.
    batch = _open("B", shifted, 60)
    assert events_publish_conflict(mine_id="Q0", mine_created_ms=55, others=[batch], **kwargs) is None
    assert "events batch B" in (
        events_publish_conflict(mine_id="Q0", mine_created_ms=65, others=[batch], **kwargs) or ""
    )
