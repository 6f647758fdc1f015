"""Before a load writes anything: the export is still there and identified, and the plan (pure).

``prepare_*`` reads the export a run's ``export_audiences`` wrote (Query Service, batch system columns:
https://experienceleague.adobe.com/en/docs/experience-platform/query/use-cases/data-exploration) and must
never publish an empty snapshot because the export's rows were reverted, nor a snapshot without person
ids. These checks, the partition plan and the snapshot's per-audience counts are decided here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_cja_audiences import export_check, runs, scanplan, sql, validation
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.errors import AepBadRequestError, AepConfigError, AepError
from airflow_cja_audiences.models import Batch, ExportJob
from airflow_cja_audiences.pipeline.batches import LabelOf
from airflow_cja_audiences.pipeline.ports import BatchCreator, BatchReader, ExportJobs
from airflow_cja_audiences.pipeline.refusals import ClosedBatchError, ExportGoneError, IdentityFieldEmptyError
from airflow_cja_audiences.runs import BatchLabel

log = logging.getLogger(__name__)

#: Runs a statement and returns all its rows (``QueryServiceHook.query_all``).
QueryAll = Callable[[str], Sequence[Sequence[Any]]]


def require_live_export(
    catalog: BatchReader, export_batch_id: str, kind: str, retention_days: float | None
) -> None:
    """Refuse at once to read an export batch whose rows are gone (reverted, deleted, failed).

    Query Service would answer a query over it with zero rows, and the run would publish an empty
    snapshot (or no events) as if the audiences had emptied. This happens when a task of an old run
    is cleared after export retention (or someone in AEP) reverted that run's export.
    """
    batch = catalog.get_batch(export_batch_id)
    if batch.is_success:
        return
    extra = batch.model_extra or {}
    when = (
        runs.utc_iso(datetime.fromtimestamp(batch.updated / 1000, tz=timezone.utc)) if batch.updated else "?"
    )
    by = extra.get("updatedUser") or "unknown"
    retention = (
        f"this job reverts exports older than export_retention_days ({retention_days:g}) that no live "
        f"batch needs"
        if retention_days
        else "this job keeps its exports (export_retention_days is null)"
    )
    raise ExportGoneError(
        f"export batch {export_batch_id}, which this run's export_audiences wrote, is '{batch.status}' (Catalog last "
        f"changed it at {when}, by {by}): its rows are gone, so reading it would publish an empty {kind}. It was "
        f"probably reverted by a later run's prune_exports ({retention}) or in AEP. This run's export cannot be "
        f"read again: clear the whole DAG run, export_audiences included (it starts a new export), or trigger a "
        f"new run.",
        advice="clear the whole DAG run (export_audiences included) or trigger a new run",
    )


def export_job_id(value: Any) -> int | None:
    """The ``export_job_id`` parameter (templated from XCom: may arrive as "", "None" or a string)."""
    if value in (None, "", "None"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AepConfigError(f"export_job_id {str(value)[:50]!r} is not an export job id") from None


def expected_export_rows(
    job_id: int | None,
    export_batch_id: str,
    *,
    jobs: Callable[[], ExportJobs],
    catalog: Callable[[], BatchReader],
) -> export_check.ExpectedRows:
    """What the export says it wrote: its job's ``totalExportedProfileCounter``, else (no count, or no job
    id) its Catalog batch's ``outputRecordCount``. ``jobs``/``catalog`` give the hooks, only when needed."""
    job_counter = (
        jobs().get_export_job(job_id).metrics.get("totalExportedProfileCounter")
        if job_id is not None
        else None
    )
    expected = export_check.expected_rows(
        export_job_id=job_id, export_batch_id=export_batch_id, job_counter=job_counter, catalog_counter=None
    )
    if expected.rows is None:
        batch = catalog().get_batch(export_batch_id)
        expected = export_check.expected_rows(
            export_job_id=job_id,
            export_batch_id=export_batch_id,
            job_counter=None,
            catalog_counter=batch.metrics.get("outputRecordCount"),
        )
    return expected


def require_open_batch(ingestion: BatchReader, batch_id: str) -> None:
    """Files can only go into a batch that is still open: a load task cleared (on its own) after its
    run published or aborted the batch would otherwise retry an upload AEP refuses, for minutes."""
    batch = ingestion.get_batch(batch_id)
    if not batch.is_open:
        raise ClosedBatchError(
            f"batch {batch_id} of this run is '{batch.status}', no longer open for files: this load task "
            f"was probably cleared on its own after its run had published or aborted the batch. One partition "
            f"cannot be loaded again into it: clear the whole DAG run (all its tasks) or trigger a new run.",
            advice="clear the whole DAG run (all its tasks) or trigger a new run",
        )


def check_identified(total: int, identified: int, *, person_field: str, export_batch_id: str) -> None:
    """Fail when not one of ``total`` exported memberships has a person id; warn about those without."""
    if total and not identified:
        raise IdentityFieldEmptyError(
            f"identity.field {person_field} is empty in all {total} exported memberships of batch "
            f"{export_batch_id}: is it the right field, and populated in the profiles?",
            advice="fix identity.field in the jobs file",
        )
    if identified < total:
        log.warning(
            "%d of %d memberships have no %s and are skipped (CJA skips records without a person ID)",
            total - identified,
            total,
            person_field,
        )


def checked_batch_id(batch_id: str) -> str:
    """A batch id from Batch Ingestion goes into URLs, XCom and the clean-up task's template."""
    try:
        return validation.batch_id(batch_id)
    except ValueError as exc:
        raise AepError(f"Batch Ingestion answered with a batch id that is not one: {exc}") from None


def plan_partitions(
    job: RefreshJob, kind: str, rows: int, scan_seconds: float, *, max_map_length: int
) -> Sequence[sql.Partition]:
    """The partitions to map the load over: by rows (each under ``max_rows_per_query``) or by time
    (:func:`airflow_cja_audiences.scanplan.plan_by_time`). Raises :class:`scanplan.PlanError` when no
    plan fits (``measured``: the scan was slow, a retry may fit; else ``max_map_length``, it cannot)."""
    if job.query_partitioning != "time":
        partitions = scanplan.plan_by_rows(rows, job.max_rows_per_query, max_map_length)
        log.info(
            "%s: %d rows in %d partitions of <= %d rows (query_partitioning 'rows': one scan of the export each)",
            kind,
            rows,
            len(partitions),
            job.max_rows_per_query,
        )
        return partitions
    plan = scanplan.plan_by_time(
        rows,
        scan_seconds=scan_seconds,
        rows_per_second=job.query_service_rows_per_second,
        budget_seconds=job.query_time_budget_seconds,
        concurrency=job.query_service_concurrency,
        max_map_length=max_map_length,
    )
    log.info("%s: %s", kind, plan.describe())
    return plan.partitions


def create_target_batch(
    ingestion: BatchCreator, dataset_id: str, label: BatchLabel, predecessors: Sequence[str]
) -> Batch:
    """The target batch. A snapshot replaces the live one by batch replay (``replay.predecessors``):
    AEP swaps them when the new batch succeeds, so the two are never live at once, and a batch that
    fails, is aborted (shrink guard) or never completes leaves the old one live. When AEP refuses the
    replay (a predecessor changed since it was listed), the batch is created without it and the
    publish task reverts the old one explicitly once the new one succeeded (the fallback)."""
    if not predecessors:
        return ingestion.create_batch(dataset_id, external_id=label.external_id)
    try:
        batch = ingestion.create_batch(
            dataset_id, external_id=label.external_id, replay_predecessors=list(predecessors)
        )
    except AepBadRequestError as exc:
        log.warning(
            "AEP refused a batch replaying %s (%s); creating it without replay: the publish task "
            "reverts the old snapshot explicitly after the new one succeeded",
            list(predecessors),
            exc,
        )
        return ingestion.create_batch(dataset_id, external_id=label.external_id)
    log.info("Batch %s replays (replaces) %s when it succeeds", batch.id, list(predecessors))
    return batch


# -- the job's export history ------------------------------------------------------------------------


def export_ref(job: ExportJob) -> runs.ExportRef:
    """An export job as the run planning sees it: its batch, when it was made, whether time-filtered."""
    return runs.ExportRef(
        batch_id=job.destination.batch_id or "",
        at_ms=int(job.creation_time or 0),
        filtered=any("segmentQualificationTime" in s for s in job.filter.get("segments", [])),
        segment_ids=tuple(job.segment_ids),
    )


class ExportHistory:
    """This job's successful export jobs into its export dataset, newest first, read lazily.

    ``jobs``: opens the listing of SUCCEEDED export jobs, newest first (called at most once, and only
    when something is looked up); ``export_dataset_id`` empty: nothing is listed."""

    def __init__(self, jobs: Callable[[], Iterable[ExportJob]], export_dataset_id: str) -> None:
        self._jobs = jobs
        self._dataset_id = export_dataset_id
        self._seen: list[ExportJob] = []
        self._pages: Iterator[ExportJob] | None = None

    def _more(self) -> ExportJob | None:
        if self._pages is None:
            if not self._dataset_id:
                return None
            self._pages = iter(self._jobs())
        for job in self._pages:
            if (
                job.destination.dataset_id == self._dataset_id
                and job.destination.batch_id
                and job.creation_time
            ):
                self._seen.append(job)
                return job
        return None

    def find(self, batch_id: str) -> runs.ExportRef | None:
        """The export job that wrote ``batch_id`` (None when it is no longer listed)."""
        for seen in self._seen:
            if seen.destination.batch_id == batch_id:
                return export_ref(seen)
        while (job := self._more()) is not None:
            if job.destination.batch_id == batch_id:
                return export_ref(job)
        return None

    def since(self, start: datetime) -> list[runs.ExportRef]:
        """Every export made at or after ``start``, plus the newest full export before it."""
        start_ms = int(start.timestamp() * 1000)
        refs = [export_ref(j) for j in self._seen]
        while not any(r.at_ms < start_ms and not r.filtered for r in refs):
            job = self._more()
            if job is None:
                break
            refs.append(export_ref(job))
        return refs


# -- the snapshot's per-audience counts ----------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotCounts:
    counts: dict[str, dict[str, Any]]
    coverage: dict[str, Any]


def previous_export(previous: Sequence[Batch], labels: LabelOf, export_batch_id: str) -> str | None:
    """The export the live snapshot was made from (None: no live snapshot, or made from this export)."""
    found = next(
        (lbl.export_batch_id for b in previous if (lbl := BatchLabel.parse(b.external_id or labels(b)))),
        None,
    )
    return None if found == export_batch_id else found


@dataclass(frozen=True)
class SnapshotRead:
    """What prepare_snapshot reads from the export, in one statement (one scan of each batch it reads):
    the totals :func:`check_identified` checks, and the per-audience rows :func:`snapshot_counts` uses."""

    total: int  # memberships of the job's audiences with a member status
    identified: int  # of them, those with a person id
    rows: Sequence[Sequence[Any]]  # sql.SNAPSHOT_COUNT_COLUMNS
    previous_export: str | None  # the export the live snapshot was made from (None: none, or this one)


def read_snapshot(
    query_all: QueryAll,
    q: sql.MembershipQuery,
    *,
    previous: Sequence[Batch],
    labels: LabelOf,
    export_batch_id: str,
) -> SnapshotRead:
    """Count this run's export and compare it with the previous snapshot's, in one statement
    (:func:`airflow_cja_audiences.sql.snapshot_counts_sql`): on Query Service every statement over
    the export is a full scan of it."""
    before = previous_export(previous, labels, export_batch_id)
    rows = query_all(sql.snapshot_counts_sql(q, before))
    total = sum(int(r[1]) for r in rows)
    identified = sum(int(r[2]) for r in rows)
    return SnapshotRead(total, identified, rows, before)


def snapshot_counts(
    read: SnapshotRead,
    audience_ids: Sequence[str],
    *,
    exports: ExportHistory,
    export_batch_id: str,
) -> SnapshotCounts:
    """Members; entered/exited between the previous snapshot's export and this one (None where the
    previous snapshot did not have the audience); members without a person id."""
    counts: dict[str, dict[str, Any]] = {
        a: {"members": 0, "entered": 0, "entered_untimed": 0, "exited": 0, "untraced": 0, "unidentified": 0}
        for a in audience_ids
    }
    before = read.previous_export
    for audience_id, memberships, identified, members, entered, untimed, exited, untraced in read.rows:
        counts[audience_id].update(
            members=int(members),
            entered=int(entered),
            entered_untimed=int(untimed),
            exited=int(exited),
            untraced=int(untraced),
            unidentified=int(memberships) - int(identified),
        )
    earlier = exports.find(before) if before else None
    for audience_id, value in counts.items():
        new = before is None or (earlier is not None and audience_id not in earlier.segment_ids)
        value["new"] = new
        if new:  # no earlier snapshot of this audience: its members did not "enter"
            for key in ("entered", "entered_untimed", "exited", "untraced"):
                value[key] = None
    if before is None:
        log.info("No previous snapshot of this job: no entered/exited counts for this run")
    current = exports.find(export_batch_id)
    coverage = {
        "from": earlier.at if earlier else None,
        "from_batch_id": before,
        "to": current.at if current else None,
        "to_batch_id": export_batch_id,
    }
    return SnapshotCounts(counts, coverage)
