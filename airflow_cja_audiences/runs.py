"""What one DAG run publishes, and how its batches are labelled in AEP (pure, no Airflow import).

A run publishes the profile **snapshot** (who is in which audience now) and/or the membership
**change events** of its data interval. Scheduled and manual runs refresh the snapshot; backfill
runs only fill their interval's events, so history never overwrites the current snapshot.

Events are published exactly once, whatever intervals the runs have: the live events batches of a
job always cover pairwise disjoint intervals. A run whose interval overlaps live batches widens its
own to their hull (:func:`events_hull`), re-reads every event of the hull and replaces them all, so
overlapping manual intervals, schedule changes and re-runs never publish an event twice.

Batches carry a label in ``externalId`` (job, kind, scope, export batch, run). AEP keeps it with the
batch, so "which batches does this one replace" and "what did the previous snapshot export" are
answered from AEP itself, not from Airflow's metadata (which a user may clear).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, cast

from airflow_cja_audiences import validation as v

Kind = Literal["snapshot", "events"]
EXIT_RETENTION = timedelta(days=30)  # AEP forgets exited memberships after 30 days
_LABEL_PREFIX = "cjaaud"
_SEP = "|"


def utc_iso(instant: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` and whole seconds (the form the SQL builder accepts)."""
    if instant.tzinfo is None:
        raise ValueError(f"{instant!r} has no time zone")
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(iso: str) -> str:
    return iso.replace("-", "").replace(":", "")


@dataclass(frozen=True)
class RunPlan:
    """The decision of one run: what to publish, for which interval, and with which export."""

    snapshot: bool
    events: bool
    interval_start: str | None  # RFC 3339 UTC; both set when events is True
    interval_end: str | None
    warnings: tuple[str, ...] = ()

    @property
    def export_statuses(self) -> tuple[str, ...]:
        """Always all three: members for the snapshot, ``realized``/``exited`` prove events, and
        ``exited`` tells an exit from a member the report can no longer trace."""
        return ("realized", "existing", "exited")

    @property
    def qualification_window(self) -> tuple[str | None, str | None]:
        """The export's ``segmentQualificationTime`` filter: only for events-only (backfill) runs;
        the snapshot export must never be time-filtered."""
        if self.events and not self.snapshot:
            return self.interval_start, self.interval_end
        return None, None

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot,
            "events": self.events,
            "interval_start": self.interval_start,
            "interval_end": self.interval_end,
            "export_statuses": list(self.export_statuses),
            "qualification_start": self.qualification_window[0],
            "qualification_end": self.qualification_window[1],
            "warnings": list(self.warnings),
        }


def plan_run(
    *,
    run_type: str,
    interval: tuple[datetime, datetime] | None,
    publish_events: bool,
    now: datetime,
    manual_interval: tuple[datetime, datetime] | None = None,
    force_snapshot: bool | None = None,
) -> RunPlan:
    """Decide what a run publishes.

    :param run_type: Airflow's DagRunType value (``scheduled``, ``manual``, ``backfill``, ...).
    :param interval: the run's data interval, when it has one (manual runs have none).
    :param manual_interval: an events interval given in a manual run's trigger form.
    :param force_snapshot: override (e.g. a manual events-only run sets False).
    """
    backfill = run_type in ("backfill", "backfill_job")  # the value, or the enum member name
    warnings: list[str] = []
    if backfill:
        # The UI's Backfill dialog can "override parameters": every run of the backfill would then carry
        # the same manual interval (and publish it N times over). A backfill run publishes its own
        # data interval's events and never the snapshot, whatever the form said.
        if manual_interval is not None:
            warnings.append(
                f"backfill run: the trigger form's events interval [{utc_iso(manual_interval[0])}, "
                f"{utc_iso(manual_interval[1])}) is ignored; a backfill run publishes its own data "
                f"interval"
            )
            manual_interval = None
        if force_snapshot:
            warnings.append(
                "backfill run: publish_snapshot is ignored; backfill runs never replace the snapshot"
            )
        force_snapshot = None
    snapshot = not backfill if force_snapshot is None else force_snapshot
    window = manual_interval or interval
    events = publish_events and window is not None
    start = end = None
    if window is not None and events:
        s, e = window
        if e <= s:
            raise ValueError(f"data interval end {utc_iso(e)} is not after its start {utc_iso(s)}")
        if e > now:
            raise ValueError(
                f"data interval [{utc_iso(s)}, {utc_iso(e)}) ends in the future ({utc_iso(now)})"
            )
        start, end = utc_iso(s), utc_iso(e)
        if s < now - EXIT_RETENTION:
            warnings.append(
                f"interval [{start}, {end}) starts more than {EXIT_RETENTION.days} days ago: AEP has "
                f"purged exits older than {utc_iso(now - EXIT_RETENTION)}, so only what this job's "
                f"exports of that time still show can be published; the report counts the rest "
                f"as not recoverable"
            )
    if not snapshot and not events:
        raise ValueError(
            "this run would publish nothing: a backfill run needs an interval and publish_events"
        )
    return RunPlan(
        snapshot=snapshot, events=events, interval_start=start, interval_end=end, warnings=tuple(warnings)
    )


@dataclass(frozen=True)
class BatchLabel:
    """Identity of a batch we write, stored in its ``externalId``."""

    job_id: str
    kind: Kind
    scope: str  # "current" for snapshots; the compact interval for events
    export_batch_id: str
    run_key: str

    def __post_init__(self) -> None:
        v.job_id(self.job_id)
        v.batch_id(self.export_batch_id)
        for part in (self.scope, self.run_key):
            if not part or _SEP in part:
                raise ValueError(f"invalid batch label part {part!r}")

    @classmethod
    def for_run(
        cls,
        *,
        job_id: str,
        kind: Kind,
        export_batch_id: str,
        run_id: str,
        interval_start: str | None = None,
        interval_end: str | None = None,
    ) -> BatchLabel:
        if kind == "events":
            if not (interval_start and interval_end):
                raise ValueError("an events batch needs its interval")
            scope = f"{_compact(interval_start)}_{_compact(interval_end)}"
        else:
            scope = "current"
        run_key = hashlib.sha256(run_id.encode()).hexdigest()[:12]
        return cls(job_id=job_id, kind=kind, scope=scope, export_batch_id=export_batch_id, run_key=run_key)

    @property
    def external_id(self) -> str:
        return _SEP.join(
            (_LABEL_PREFIX, self.job_id, self.kind, self.scope, self.export_batch_id, self.run_key)
        )

    @classmethod
    def parse(cls, external_id: str | None) -> BatchLabel | None:
        """The label of one of our batches, or None for any other batch."""
        parts = (external_id or "").split(_SEP)
        if len(parts) != 6 or parts[0] != _LABEL_PREFIX or parts[2] not in ("snapshot", "events"):
            return None
        try:
            return cls(
                job_id=parts[1],
                kind=cast(Kind, parts[2]),
                scope=parts[3],
                export_batch_id=parts[4],
                run_key=parts[5],
            )
        except ValueError:
            return None

    @property
    def interval(self) -> tuple[datetime, datetime] | None:
        """An events batch's interval (None for a snapshot)."""
        return scope_interval(self.scope) if self.kind == "events" else None

    def supersedes(self, other: BatchLabel) -> bool:
        """Whether publishing this batch replaces ``other``: same job and kind, and for events an
        interval inside this one's (a run publishes the hull of the intervals it overlaps)."""
        if (self.job_id, self.kind) != (other.job_id, other.kind):
            return False
        if self.kind == "snapshot":
            return self.scope == other.scope
        mine, theirs = self.interval, other.interval
        return mine is not None and theirs is not None and mine[0] <= theirs[0] and theirs[1] <= mine[1]


# ---------------------------------------------------------------------------------------------
# Events intervals: the hull a run publishes, and who may publish it
# ---------------------------------------------------------------------------------------------


def parse_utc(text: str) -> datetime:
    """An RFC 3339 UTC instant (``...Z``) as an aware datetime."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"{v.shown(text)} is not an RFC 3339 UTC instant ending in 'Z'")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


def scope_interval(scope: str) -> tuple[datetime, datetime] | None:
    """The interval of an events batch's scope (``20261128T020000Z_20261129T020000Z``), or None."""
    try:
        start, end = (
            datetime.strptime(part, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            for part in scope.split("_")
        )
    except ValueError:
        return None
    return (start, end) if start < end else None


def overlaps(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    """Whether two half-open intervals share an instant (touching ends do not)."""
    return a[0] < b[1] and b[0] < a[1]


def events_hull(
    interval: tuple[datetime, datetime], live: list[tuple[datetime, datetime]]
) -> tuple[tuple[datetime, datetime], list[int]]:
    """The smallest interval that contains ``interval`` and every live interval overlapping it,
    transitively; and the indexes of those live intervals (the batches it replaces).

    Live events batches cover disjoint intervals (this function keeps it so), so after publishing
    the hull and reverting what it contains, each event time lies in at most one live batch.
    """
    start, end = interval
    taken: set[int] = set()
    grown = True
    while grown:
        grown = False
        for i, other in enumerate(live):
            if i not in taken and overlaps((start, end), other):
                taken.add(i)
                start, end = min(start, other[0]), max(end, other[1])
                grown = True
    return (start, end), sorted(taken)


@dataclass(frozen=True)
class OpenEventsBatch:
    """Another run's claim on an events interval of the same job: its events batch as Catalog lists
    it, or (server path) its events batch query while Query Service still runs it."""

    batch_id: str  # the batch's id, or the query's
    interval: tuple[datetime, datetime]
    created_ms: int
    run_key: str
    live: bool  # succeeded (published); else still open
    what: str = "events batch"  # how messages name it: "events batch" or "events batch query"


#: Query Service states of a batch query that may still write a batch (spec ``query.state``).
QUERY_IN_FLIGHT = ("SUBMITTED", "IN_PROGRESS")


def events_query_claims(
    queries: Iterable[tuple[str, str | None, str, int | None]], job_id: str
) -> list[OpenEventsBatch]:
    """The in-flight events batch queries of ``job_id`` as claims on their intervals (server path).

    ``queries``: ``(query id, name, state, created ms)`` as the Query Service REST API lists them. The
    server path names each batch query after its batch label (:class:`BatchLabel`), so the name says
    job, interval and run. A query that ended is no claim: if it succeeded, its batch is live and is
    listed as a batch; if not, it wrote nothing. Queries named otherwise (anyone's) are left out.
    """
    claims = []
    for query_id, name, state, created_ms in queries:
        label = BatchLabel.parse(name)
        if (
            label is None
            or label.job_id != job_id
            or label.kind != "events"
            or label.interval is None
            or str(state).upper() not in QUERY_IN_FLIGHT
        ):
            continue
        claims.append(
            OpenEventsBatch(
                query_id,
                label.interval,
                int(created_ms or 0),
                label.run_key,
                live=False,
                what="events batch query",
            )
        )
    return claims


#: An open events batch older than this is abandoned (its run died before aborting it): ignored.
ABANDONED_AFTER = timedelta(hours=6)


def events_publish_conflict(
    *,
    mine_id: str,
    mine_created_ms: int,
    run_key: str,
    interval: tuple[datetime, datetime],
    replaced: set[str],
    others: list[OpenEventsBatch],
) -> str | None:
    """Why this run must not publish its events batch yet, or None when it may.

    Two runs of one job can publish overlapping intervals at once (a backfill next to the schedule,
    up to ``max_active_runs`` backfill runs). The rule that keeps the live intervals disjoint: of the
    open batches whose intervals overlap, the one created first goes on; the others give way, and a
    run whose hull was computed before an overlapping batch went live must compute it again.

    On the server path no batch exists before Query Service writes it: the claims are the in-flight
    batch queries (:func:`events_query_claims`) next to the open batches, ``mine_id`` the run's query
    (or ``""`` with ``mine_created_ms`` = now, to ask before submitting one whether an earlier claim
    overlaps: then only earlier claims can conflict).
    """
    for other in others:
        if other.batch_id == mine_id or other.run_key == run_key or not overlaps(interval, other.interval):
            continue
        if other.live and other.batch_id not in replaced:
            return (
                f"{other.what} {other.batch_id} [{utc_iso(other.interval[0])}, {utc_iso(other.interval[1])}) "
                f"went live after this run planned its interval"
            )
        abandoned = other.created_ms < mine_created_ms - ABANDONED_AFTER.total_seconds() * 1000
        if (
            not other.live
            and not abandoned
            and (other.created_ms, other.batch_id) < (mine_created_ms, mine_id)
        ):
            return (
                f"{other.what} {other.batch_id} [{utc_iso(other.interval[0])}, {utc_iso(other.interval[1])}) "
                f"of another run is being published for an overlapping interval"
            )
    return None


# ---------------------------------------------------------------------------------------------
# Which exports prove an interval's events
# ---------------------------------------------------------------------------------------------

#: At most this many export batches are read for one events query (the rest is reported).
MAX_EVENT_SOURCES = 400


@dataclass(frozen=True)
class ExportRef:
    """One export this job made into its export dataset."""

    batch_id: str
    at_ms: int  # the instant the export reflects (its job's creationTime)
    filtered: bool = False  # time-filtered (an events-only run's): proves events, is no full member list
    segment_ids: tuple[str, ...] = ()  # the audiences it exported

    @property
    def at(self) -> str:
        return utc_iso(datetime.fromtimestamp(self.at_ms / 1000, tz=timezone.utc))


@dataclass(frozen=True)
class EventSources:
    """The exports an events query reads, and the pair whose difference bounds what none can date."""

    batches: tuple[ExportRef, ...]
    untimed_pair: tuple[ExportRef, ExportRef] | None  # (before, after) unfiltered, consecutive
    dropped: int = 0  # exports left out past MAX_EVENT_SOURCES

    @property
    def batch_ids(self) -> list[str]:
        return [e.batch_id for e in self.batches]


def choose_event_sources(
    exports: list[ExportRef],
    interval: tuple[datetime, datetime],
    *,
    must_read: tuple[str, ...] = (),
    limit: int = MAX_EVENT_SOURCES,
) -> EventSources:
    """Pick the exports that can prove an event in ``interval``.

    An export at T shows a membership's latest status only: a fresh entry as ``realized`` with its
    time, an exit as ``exited`` for 30 days. So every export made during the interval counts, plus the
    first one made after it (it shows what happened since the one before), plus ``must_read`` (this
    run's export, and those the batches being replaced were read from, so a re-publication never
    proves less than what it replaces). Exports made before the interval cannot show anything in it.

    The untimed pair is the first unfiltered export at or after the interval's end and the unfiltered
    export just before it: people who are members in the later one, not in the earlier one, and not
    ``realized`` entered between the two, but AEP no longer says when.
    """
    start_ms, end_ms = (int(t.timestamp() * 1000) for t in interval)
    ordered = sorted({e.batch_id: e for e in exports}.values(), key=lambda e: (e.at_ms, e.batch_id))
    within = [e for e in ordered if start_ms <= e.at_ms <= end_ms]
    after = next((e for e in ordered if e.at_ms > end_ms), None)
    dropped = max(0, len(within) - limit)
    chosen = within[:limit] + ([after] if after else [])
    chosen += [e for e in ordered if e.batch_id in must_read and e not in chosen]
    full = [e for e in ordered if not e.filtered]
    later = next((i for i, e in enumerate(full) if e.at_ms >= end_ms), None)
    pair = (full[later - 1], full[later]) if later else None
    return EventSources(
        batches=tuple(sorted(chosen, key=lambda e: (e.at_ms, e.batch_id))), untimed_pair=pair, dropped=dropped
    )


# ---------------------------------------------------------------------------------------------
# Export retention: which of this job's export batches may be reverted
# ---------------------------------------------------------------------------------------------

#: Default of ``export_retention_days``: a week of exports stays readable for re-runs and reports.
DEFAULT_EXPORT_RETENTION_DAYS = 7


@dataclass(frozen=True)
class ExportBatch:
    """A successful export batch of this job's export dataset, as the pruning decision sees it."""

    ref: ExportRef  # its instant (the export job's creationTime, else the batch's ``created``)
    created_ms: int  # Catalog's ``created`` of the batch


@dataclass(frozen=True)
class Holder:
    """One of this job's batches (live, or still being published) and the exports it stands on."""

    batch_id: str
    kind: Kind
    export_batch_id: str  # the export its run made (the label's)
    interval: tuple[datetime, datetime] | None = None  # events batches


@dataclass(frozen=True)
class PruneDecision:
    """Every export batch considered, with why it is kept or reverted."""

    keep: dict[str, str]  # batch id -> reason
    revert: dict[str, str]

    def summary(self) -> str:
        return f"{len(self.revert)} to revert, {len(self.keep)} kept"


def exports_to_prune(
    exports: list[ExportBatch], holders: list[Holder], *, now: datetime, retention: timedelta
) -> PruneDecision:
    """Decide which export batches to revert. An export is **kept** when any of these holds:

    1. it is younger than ``retention`` (``now - at < retention``);
    2. it is the newest full (not time-filtered) export: the next snapshot's entered/exited counts
       compare against it;
    3. a live or in-progress snapshot batch of the job was made from it (the label's export);
    4. a live or in-progress events batch may need it again: a re-publication of a hull containing
       the batch's interval reads, through :func:`choose_event_sources`, every export made during the
       interval, the first one after it, the export of the batch's own run, and the full pair that
       brackets the interval's end (the untimed count). Pruning any of them could make a later
       re-publication prove fewer events than are live, and its guard would refuse it.

    Everything else is reverted. The decision only reads what it is given: callers pass the
    complete listings, or must not prune at all.
    """
    if retention <= timedelta(0):
        raise ValueError(f"retention must be positive, not {retention}")
    now_ms = int(now.timestamp() * 1000)
    cutoff_ms = now_ms - int(retention.total_seconds() * 1000)
    refs = [e.ref for e in exports]
    keep: dict[str, str] = {}

    def hold(batch_id: str, reason: str) -> None:
        keep.setdefault(batch_id, reason)

    for holder in holders:
        if holder.kind == "snapshot":
            hold(holder.export_batch_id, f"the snapshot batch {holder.batch_id} was made from it")
        elif holder.interval is not None:
            sources = choose_event_sources(
                refs, holder.interval, must_read=(holder.export_batch_id,), limit=len(refs) + 1
            )
            span = f"[{utc_iso(holder.interval[0])}, {utc_iso(holder.interval[1])})"
            for ref in sources.batches:
                hold(ref.batch_id, f"events batch {holder.batch_id} {span} was proved from it")
            for ref in sources.untimed_pair or ():
                hold(
                    ref.batch_id,
                    f"it brackets the end of events batch {holder.batch_id} {span} (untimed count)",
                )
    full = [e for e in exports if not e.ref.filtered]
    if full:
        newest = max(full, key=lambda e: (e.ref.at_ms, e.created_ms, e.ref.batch_id))
        hold(newest.ref.batch_id, "the newest full export (the next snapshot compares with it)")
    revert: dict[str, str] = {}
    for export in exports:
        batch_id = export.ref.batch_id
        if batch_id in keep:
            continue
        if export.ref.at_ms >= cutoff_ms:
            keep[batch_id] = f"younger than the retention of {_days(retention)}"
            continue
        revert[batch_id] = (
            f"exported {export.ref.at}, older than the retention of {_days(retention)}; no live "
            f"batch of this job needs it"
        )
    return PruneDecision(
        keep={k: v for k, v in keep.items() if k in {e.ref.batch_id for e in exports}}, revert=revert
    )


def _days(span: timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:g} day{'s' if days != 1 else ''}"
