"""An events load's plan: the interval it publishes, what it replaces and reads, and who goes first (pure).

A run publishes the membership changes of one interval as an events batch. Live events batches of a
job must cover disjoint intervals, so a run whose interval overlaps live ones publishes their hull once
(:func:`airflow_cja_audiences.runs.events_hull`) and replaces them; the exports that prove its events
are chosen by :func:`airflow_cja_audiences.runs.choose_event_sources`. Two runs of one job may plan
overlapping intervals at once (a backfill beside the schedule): of the overlapping claims, the one
created first goes on and the other gives way (:func:`airflow_cja_audiences.runs.events_publish_conflict`).

Giving way is not a failure: this module raises :class:`GiveWay` (plan again at ``until``), which the
operator turns into a reschedule. Catalog batches and batch replacement:
https://developer.adobe.com/experience-platform-apis/references/catalog/ and
https://experienceleague.adobe.com/en/docs/experience-platform/ingestion/batch/api-overview
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_cja_audiences import runs, sql
from airflow_cja_audiences.errors import AepConfigError
from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.pipeline.batches import LabelOf, events_batches
from airflow_cja_audiences.pipeline.ports import BatchAborter, BatchLister, QueryLister
from airflow_cja_audiences.pipeline.prepare import ExportHistory, QueryAll
from airflow_cja_audiences.pipeline.refusals import PipelineRefusal
from airflow_cja_audiences.runs import BatchLabel

log = logging.getLogger(__name__)

#: How long an events run that gave way to an overlapping one waits before it plans again.
RECLAIM_SECONDS = 60


class EventsShrinkError(PipelineRefusal):
    """Re-publishing an interval would replace more live events than the run found (the guard)."""


class GiveWay(Exception):
    """Another run's overlapping claim goes first: plan again at ``until`` (nothing of this run is live)."""

    def __init__(self, what: str, until: datetime) -> None:
        super().__init__(f"{what}; planning again at {runs.utc_iso(until)}")
        self.what = what
        self.until = until


@dataclass(frozen=True)
class EventsPlan:
    """What an events load publishes: its interval (``hull``), what it replaces and what it reads."""

    requested: tuple[datetime, datetime]
    hull: tuple[datetime, datetime]
    replaced: tuple[Batch, ...]
    sources: runs.EventSources

    @property
    def window(self) -> sql.TimeWindow:
        return sql.TimeWindow(self.hull[0], self.hull[1])

    @property
    def replaced_ids(self) -> set[str]:
        return {b.id for b in self.replaced}

    def label(self, *, job_id: str, export_batch_id: str, run_id: str) -> BatchLabel:
        """The run's batch label: its scope is the hull, not the requested interval."""
        window = self.window
        return BatchLabel.for_run(
            job_id=job_id,
            kind="events",
            export_batch_id=export_batch_id,
            run_id=run_id,
            interval_start=window.start,
            interval_end=window.end,
        )


def plan_events(
    ingestion: BatchLister,
    dataset_id: str,
    *,
    job_id: str,
    export_batch_id: str,
    interval_start: str | None,
    interval_end: str | None,
    exports: ExportHistory,
    labels: LabelOf | None = None,
) -> EventsPlan:
    """The interval to publish (the run's, widened over the live intervals it overlaps), the batches it
    replaces, and the exports that prove its events (this run's export always among them)."""
    if not (interval_start and interval_end):
        raise AepConfigError("an events load needs interval_start and interval_end")
    requested = (runs.parse_utc(interval_start), runs.parse_utc(interval_end))
    live = [
        (b, lbl)
        for b, lbl in events_batches(ingestion.list_batches(dataset_id), job_id, labels)
        if b.is_success
    ]
    hull, taken = runs.events_hull(requested, [lbl.interval for _, lbl in live])  # type: ignore[misc]
    replaced = tuple(live[i][0] for i in taken)
    if hull != requested:
        log.info(
            "Events interval [%s, %s) overlaps live events batches %s: publishing their hull "
            "[%s, %s) once instead",
            runs.utc_iso(requested[0]),
            runs.utc_iso(requested[1]),
            [b.id for b in replaced],
            runs.utc_iso(hull[0]),
            runs.utc_iso(hull[1]),
        )
    must_read = (
        export_batch_id,
        *(lbl.export_batch_id for i, (_, lbl) in enumerate(live) if i in taken),
    )
    sources = runs.choose_event_sources(exports.since(hull[0]), hull, must_read=must_read)
    if export_batch_id not in sources.batch_ids:  # its job is not listed (yet): read it all the same
        sources = runs.EventSources(
            batches=(*sources.batches, runs.ExportRef(export_batch_id, 0)),
            untimed_pair=sources.untimed_pair,
            dropped=sources.dropped,
        )
    if sources.dropped:
        log.warning(
            "%d exports of [%s, %s) are not read (at most %d per run): events only they prove are missing",
            sources.dropped,
            runs.utc_iso(hull[0]),
            runs.utc_iso(hull[1]),
            runs.MAX_EVENT_SOURCES,
        )
    log.info(
        "Events of [%s, %s) read from %d exports: %s",
        runs.utc_iso(hull[0]),
        runs.utc_iso(hull[1]),
        len(sources.batches),
        ", ".join(f"{e.batch_id} ({e.at})" for e in sources.batches),
    )
    return EventsPlan(requested, hull, replaced, sources)


def guard(plan: EventsPlan, events: int, *, force: bool) -> None:
    """Never publish fewer events for an interval than are live in it (an export they were read from
    was reverted, or an earlier version published more): keep what is live, unless forced."""
    live = sum(b.record_count for b in plan.replaced)
    if events >= live:
        return
    window = plan.window
    message = (
        f"re-publishing events of [{window.start}, {window.end}) would replace {live} live events "
        f"(batches {[b.id for b in plan.replaced]}) with {events}: the exports that proved the others are "
        f"gone, or an earlier version of this package published them. The live events are kept; trigger "
        f"with force_replace=true to replace them anyway."
    )
    if not force:
        raise EventsShrinkError(
            message, advice="trigger the DAG with force_replace=true to replace them anyway"
        )
    log.warning("%s -- forced, replacing anyway", message)


@dataclass(frozen=True)
class EventCounts:
    counts: dict[str, dict[str, Any]]
    coverage: dict[str, Any]


@dataclass(frozen=True)
class EventsRead:
    """What prepare_events reads from the plan's sources and untimed pair, in one statement (one scan
    of each): the totals the identity check and the guard use, and the per-audience rows
    (:data:`airflow_cja_audiences.sql.EVENTS_READ_COLUMNS`) :func:`event_counts` uses."""

    total: int  # distinct change rows in the window
    identified: int  # of them, those with a person id (the events published)
    rows: Sequence[Sequence[Any]]


def read_events(query_all: QueryAll, q: sql.MembershipQuery, plan: EventsPlan) -> EventsRead:
    """Count the plan's change events per audience and in total, and the entries between its untimed
    pair, in one statement (:func:`airflow_cja_audiences.sql.events_read_sql`): every statement is a
    scan of the batches it reads."""
    pair = plan.sources.untimed_pair
    rows = query_all(
        sql.events_read_sql(
            q,
            plan.window,
            plan.sources.batch_ids,
            (pair[0].batch_id, pair[1].batch_id) if pair is not None else None,
        )
    )
    return EventsRead(
        sum(int(r[1]) + int(r[3]) for r in rows), sum(int(r[2]) + int(r[4]) for r in rows), rows
    )


def event_counts(audience_ids: Sequence[str], plan: EventsPlan, read: EventsRead) -> EventCounts:
    """Entered/exited per audience in the plan's interval, the entries no export can date (between
    the untimed pair) as ``entered_untimed``, all from ``read`` (no statement of its own); and what
    the counts cover."""
    window = plan.window
    pair = plan.sources.untimed_pair
    counts: dict[str, dict[str, Any]] = {a: {"entered": 0, "exited": 0} for a in audience_ids}
    if pair is not None:
        for audience_id in audience_ids:
            counts[audience_id]["entered_untimed"] = 0
    for audience_id, _, entered, _, exited, untimed in read.rows:
        # events of the NULL person are in the totals only: nothing publishes them
        counts[audience_id]["entered"] = int(entered)
        counts[audience_id]["exited"] = int(exited)
        if pair is not None:
            counts[audience_id]["entered_untimed"] = int(untimed)
    coverage: dict[str, Any] = {
        "interval": [window.start, window.end],
        "requested": [runs.utc_iso(plan.requested[0]), runs.utc_iso(plan.requested[1])],
        "sources": [{"batch_id": e.batch_id, "at": e.at if e.at_ms else None} for e in plan.sources.batches],
        "untimed_window": [pair[0].at, pair[1].at] if pair else None,
        "dropped_sources": plan.sources.dropped,
    }
    if pair is None:
        log.warning(
            "No two consecutive full exports of this job bracket [%s, %s): entries that AEP no longer "
            "shows as realized cannot be counted, let alone published",
            *coverage["interval"],
        )
    return EventCounts(counts, coverage)


# -- claims: who publishes an overlapping interval first ------------------------------------------------


def open_claims(
    ingestion: BatchLister,
    dataset_id: str,
    job_id: str,
    *,
    labels: LabelOf | None = None,
    queries: QueryLister | None = None,
    now: datetime,
) -> list[runs.OpenEventsBatch]:
    """Every claim on this job's events intervals: its events batches (live or open, whoever wrote
    them) and, with ``queries``, its in-flight events batch queries (server path, listed through the
    Query Service REST API; their names are their batch labels)."""
    claims = [
        runs.OpenEventsBatch(
            batch.id,
            other.interval,  # type: ignore[arg-type]
            int(batch.created or 0),
            other.run_key,
            live=batch.is_success,
        )
        for batch, other in events_batches(ingestion.list_batches(dataset_id), job_id, labels)
    ]
    if queries is not None:
        since = int((now - runs.ABANDONED_AFTER).timestamp() * 1000)
        listed = queries.recent_queries(created_after_ms=since)
        claims += runs.events_query_claims(((q.id, q.name, q.state, q.created_ms()) for q in listed), job_id)
    return claims


def claim_batch(
    plan: EventsPlan,
    ingestion: BatchAborter,
    mine: Batch,
    claims: list[runs.OpenEventsBatch],
    *,
    now: datetime,
) -> None:
    """Client path: this run's open batch is its claim. Give way when another run publishes an
    overlapping interval (:func:`runs.events_publish_conflict`): abort this batch and try again later."""
    label = BatchLabel.parse(mine.external_id)
    if label is None:
        raise AepConfigError(f"batch {mine.id} has no batch label of this package: {mine.external_id!r}")
    reason = runs.events_publish_conflict(
        mine_id=mine.id,
        mine_created_ms=int(mine.created or 0),
        run_key=label.run_key,
        interval=plan.hull,
        replaced=plan.replaced_ids,
        others=claims,
    )
    if reason is None:
        return
    ingestion.abort_batch(mine.id)
    raise GiveWay(f"{reason}: this run's events batch {mine.id} is aborted", give_way_until(now))


def wait_for_earlier_claims(
    plan: EventsPlan, label: BatchLabel, claims: list[runs.OpenEventsBatch], *, now: datetime
) -> None:
    """Server path (no batch before the batch query writes one): give way while an overlapping
    interval of another run is being written (its batch query in flight, or its batch open), so this
    run plans again once that one is live. distill_events checks again after submitting (two runs may
    pass this at once; the query created first goes on: :func:`.distill.claim_query`)."""
    reason = runs.events_publish_conflict(
        mine_id="",
        mine_created_ms=int(now.timestamp() * 1000),
        run_key=label.run_key,
        interval=plan.hull,
        replaced=plan.replaced_ids,
        others=claims,
    )
    if reason is not None:
        raise GiveWay(f"{reason}: no batch query submitted", give_way_until(now))


def give_way_until(now: datetime) -> datetime:
    return now + timedelta(seconds=RECLAIM_SECONDS)
