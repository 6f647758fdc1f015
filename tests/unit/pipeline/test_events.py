"""pipeline.events: the interval an events run publishes, its guard, its counts, and who gives way."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from unit.pipeline.fakes import EXPORT, Ingestion, Queries, Query, batch, events_label, export_job

from airflow_cja_audiences import sql
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.errors import AepConfigError, is_permanent
from airflow_cja_audiences.pipeline import events, prepare
from airflow_cja_audiences.runs import ABANDONED_AFTER, BatchLabel

DAY1, DAY2, DAY3, DAY4 = (f"2026-11-0{d}T00:00:00Z" for d in (1, 2, 3, 4))
NOW = datetime(2026, 11, 5, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _label(start: str, end: str, run_id: str = "r1", export_batch_id: str = EXPORT) -> BatchLabel:
    return BatchLabel.for_run(
        job_id="job",
        kind="events",
        export_batch_id=export_batch_id,
        run_id=run_id,
        interval_start=start,
        interval_end=end,
    )


def _events_batch(batch_id, label, status="success", records=0, created=NOW_MS - 1000):
    return batch(batch_id, status, label, records=records).model_copy(update={"created": created})


def _export(job_id: int, batch_id: str, at: str, timed: bool = False):
    segment = {"segmentId": "aud-1", **({"segmentQualificationTime": {}} if timed else {})}
    return export_job(
        job_id,
        destination={"datasetId": "exports", "batchId": batch_id},
        creationTime=int(_at(at).timestamp() * 1000),
        filter={"segments": [segment]},
    )


def _history(*jobs):
    return prepare.ExportHistory(lambda: iter(jobs), "exports")


def _plan(ingestion, start=DAY2, end=DAY3, exports=(), export_batch_id=EXPORT):
    return events.plan_events(
        ingestion,
        "events-ds",
        job_id="job",
        export_batch_id=export_batch_id,
        interval_start=start,
        interval_end=end,
        exports=_history(*exports),
    )


def test_the_interval_widens_over_overlapping_live_batches_and_reads_their_exports(caplog):
    overlapping = _events_batch("live-1", _label(DAY1, "2026-11-02T12:00:00Z", "r0", export_batch_id="OLD"))
    touching = _events_batch("live-2", _label(DAY3, DAY4, "r0"))  # shares only the end instant
    open_other = _events_batch("open", _label(DAY1, DAY4, "r9"), status="loading")  # not live: no hull
    with caplog.at_level(logging.INFO):
        plan = _plan(
            Ingestion(overlapping, touching, open_other),
            exports=[_export(3, "NEW", "2026-11-02T06:00:00Z"), _export(2, "OLD", "2026-10-31T00:00:00Z")],
        )
    assert plan.requested == (_at(DAY2), _at(DAY3))
    assert plan.hull == (_at(DAY1), _at(DAY3))
    assert [b.id for b in plan.replaced] == ["live-1"] and plan.replaced_ids == {"live-1"}
    assert (plan.window.start, plan.window.end) == (DAY1, DAY3)
    # The replaced batch's export is read (a re-publication never proves less), and this run's export
    # too although no listed job names it yet.
    assert set(plan.sources.batch_ids) == {"NEW", "OLD", EXPORT}
    assert "publishing their hull" in caplog.text
    label = plan.label(job_id="job", export_batch_id=EXPORT, run_id="r1")
    assert label.interval == plan.hull and label.kind == "events"


def test_no_overlap_publishes_the_requested_interval():
    plan = _plan(Ingestion(_events_batch("live", _label(DAY3, DAY4, "r0"))))
    assert plan.hull == plan.requested and plan.replaced == ()
    assert plan.sources.batch_ids == [EXPORT]


def test_an_events_plan_needs_an_interval():
    with pytest.raises(AepConfigError, match="needs interval_start and interval_end") as err:
        _plan(Ingestion(), start=None)
    assert is_permanent(err.value)


def test_guard_keeps_more_live_events_unless_forced(caplog):
    plan = _plan(Ingestion(_events_batch("live", _label(DAY1, DAY3, "r0"), records=10)))
    events.guard(plan, 10, force=False)  # as many: fine
    with pytest.raises(events.EventsShrinkError) as err:
        events.guard(plan, 4, force=False)
    assert str(err.value) == (
        f"re-publishing events of [{DAY1}, {DAY3}) would replace 10 live events (batches ['live']) with 4: the "
        "exports that proved the others are gone, or an earlier version of this package published them. The "
        "live events are kept; trigger with force_replace=true to replace them anyway."
    )
    assert is_permanent(err.value) and "force_replace=true" in err.value.advice
    with caplog.at_level(logging.WARNING):
        events.guard(plan, 4, force=True)
    assert "-- forced, replacing anyway" in caplog.text


def _query():
    job = RefreshJob.model_validate(
        {"job_id": "job", "audiences": [{"id": "aud-1"}], "identity": {"field": "_{tenant}.email"}}
    )
    return sql.build_membership_query(job, table="t", batch_id=EXPORT, tenant="acme", audience_ids=["aud-1"])


def test_event_counts_add_the_untimed_entries_between_two_full_exports():
    plan = _plan(
        Ingestion(),
        exports=[_export(3, "AFTER", "2026-11-03T06:00:00Z"), _export(2, "BEFORE", "2026-11-01T06:00:00Z")],
    )
    statements = []

    def query_all(text):
        statements.append(text)
        # audience, entered (of them with a person id), exited (of them with a person id), untimed
        return [("aud-1", 6, 5, 0, 0, 3), ("aud-2", 1, 0, 2, 2, 0)]

    read = events.read_events(query_all, _query(), plan)
    assert (read.total, read.identified) == (9, 7)
    found = events.event_counts(["aud-1", "aud-2"], plan, read)
    assert found.counts == {
        "aud-1": {"entered": 5, "exited": 0, "entered_untimed": 3},
        "aud-2": {"entered": 0, "exited": 2, "entered_untimed": 0},
    }
    assert found.coverage["interval"] == [DAY2, DAY3]
    assert found.coverage["untimed_window"] == ["2026-11-01T06:00:00Z", "2026-11-03T06:00:00Z"]
    assert {s["batch_id"] for s in found.coverage["sources"]} == {"AFTER", EXPORT}
    # one statement reads the sources and the untimed pair (BEFORE is no source) for all the counts
    assert plan.sources.batch_ids == ["AFTER", EXPORT]
    assert statements == [sql.events_read_sql(_query(), plan.window, ["AFTER", EXPORT], ("BEFORE", "AFTER"))]


def test_event_counts_without_a_bracketing_pair_warn_that_untimed_entries_are_missing(caplog):
    plan = _plan(Ingestion())
    statements = []

    def query_all(text):
        statements.append(text)
        return [("aud-1", 2, 1, 0, 0, 0)]

    read = events.read_events(query_all, _query(), plan)
    with caplog.at_level(logging.WARNING):
        found = events.event_counts(["aud-1"], plan, read)
    assert found.counts == {"aud-1": {"entered": 1, "exited": 0}}
    assert found.coverage["untimed_window"] is None
    assert "No two consecutive full exports" in caplog.text
    assert statements == [sql.events_read_sql(_query(), plan.window, plan.sources.batch_ids, None)]


def test_a_run_whose_batch_came_second_aborts_it_and_gives_way():
    plan = _plan(Ingestion())
    mine = _events_batch("mine", _label(DAY2, DAY3, "r1"), status="loading", created=NOW_MS - 100)
    earlier = _events_batch("theirs", _label(DAY2, DAY4, "r2"), status="loading", created=NOW_MS - 500)
    ingestion = Ingestion(mine, earlier)
    claims = events.open_claims(ingestion, "events-ds", "job", now=NOW)
    with pytest.raises(events.GiveWay) as way:
        events.claim_batch(plan, ingestion, mine, claims, now=NOW)
    assert ingestion.aborted == ["mine"]
    assert way.value.until == NOW + timedelta(seconds=events.RECLAIM_SECONDS)
    assert "events batch theirs" in way.value.what and way.value.what.endswith("batch mine is aborted")
    assert str(way.value).endswith("planning again at 2026-11-05T00:01:00Z")


def test_the_first_claim_goes_on_and_a_replaced_live_batch_is_no_conflict():
    live = _events_batch("live", _label(DAY1, DAY3, "r0"), records=3)
    plan = _plan(Ingestion(live))
    mine = _events_batch("mine", plan.label(job_id="job", export_batch_id=EXPORT, run_id="r1"), "loading")
    later = _events_batch("later", _label(DAY2, DAY4, "r2"), status="loading", created=NOW_MS)
    ingestion = Ingestion(live, mine, later)
    events.claim_batch(
        plan, ingestion, mine, events.open_claims(ingestion, "events-ds", "job", now=NOW), now=NOW
    )
    assert ingestion.aborted == []


def test_the_server_path_waits_for_an_earlier_in_flight_query_of_another_run():
    plan = _plan(Ingestion())
    label = plan.label(job_id="job", export_batch_id=EXPORT, run_id="r1")
    other = _label(DAY2, DAY4, "r2").external_id
    queries = Queries(
        Query("q-own", name=label.external_id, created=NOW_MS - 9000),  # this run's: no claim against it
        Query("q-done", state="SUCCESS", name=other, created=NOW_MS - 8000),  # ended: its batch says
        Query("q-other", name=other, created=NOW_MS - 7000),
    )
    claims = events.open_claims(Ingestion(), "events-ds", "job", queries=queries, now=NOW)
    assert queries.asked_since == [NOW_MS - int(ABANDONED_AFTER.total_seconds() * 1000)]
    assert [c.batch_id for c in claims] == ["q-own", "q-other"]
    with pytest.raises(events.GiveWay, match="events batch query q-other .* no batch query submitted"):
        events.wait_for_earlier_claims(plan, label, claims, now=NOW)
    events.wait_for_earlier_claims(plan, label, claims[:1], now=NOW)  # only its own: goes on


def test_claims_leave_out_other_jobs_and_failed_batches():
    mine = _events_batch("other-job", events_label(DAY2, DAY3, job_id="elsewhere", run_id="r2"), "loading")
    failed = _events_batch("failed", _label(DAY2, DAY3, "r2"), status="failed")
    assert events.open_claims(Ingestion(mine, failed), "events-ds", "job", now=NOW) == []
