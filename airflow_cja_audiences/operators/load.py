"""Query Service -> CJA batch: plan the partitions, then query, transform and upload each one (step 5).

Adapters: the checks, the plan and the counts are :mod:`airflow_cja_audiences.pipeline.prepare`, an
events run's interval, guard, counts and claims :mod:`airflow_cja_audiences.pipeline.events`, a
partition's splitting :mod:`airflow_cja_audiences.pipeline.split`; these operators run the queries,
the uploads and the XCom plumbing, and turn a give-way into a reschedule.

``PrepareLoadOperator`` counts what the export holds for this job, checks the identity field, plans
hash partitions (sized by time, see :mod:`airflow_cja_audiences.scanplan`: each ``LIMIT 0`` query
within a time budget, from the time the counting query took to scan the export; or by rows, each under
Query Service's 50,000-row cap), computes per-audience counts and opens the target batch.
``LoadPartitionOperator`` (mapped over the partitions, one task each, so more workers load in
parallel) streams one partition through a server-side cursor, turns rows into CJA records and
uploads the JSON Lines files into that batch. Nothing is handed between tasks through local disk:
each task uploads what it wrote.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context, conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)

from airflow_cja_audiences import export_check, hooks, runs, scanplan, sql
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.models import ExportJobStatus
from airflow_cja_audiences.operators.base import AdobeBaseOperator, truthy
from airflow_cja_audiences.pipeline import events as event_plans
from airflow_cja_audiences.pipeline import prepare, split
from airflow_cja_audiences.pipeline.batches import QueryLabels
from airflow_cja_audiences.pipeline.batches import events_batches as events_batches  # re-exported
from airflow_cja_audiences.pipeline.batches import live_batches as live_batches  # re-exported
from airflow_cja_audiences.pipeline.distill import ClaimLostError
from airflow_cja_audiences.pipeline.events import RECLAIM_SECONDS as RECLAIM_SECONDS  # re-exported
from airflow_cja_audiences.pipeline.prepare import ExportHistory as _ExportHistory
from airflow_cja_audiences.pipeline.prepare import require_live_export as require_live_export  # re-exported
from airflow_cja_audiences.runs import BatchLabel, Kind

if TYPE_CHECKING:
    from airflow_cja_audiences.transform import TransformSummary

_TEMPLATE_FIELDS = (
    "sandbox",
    "tenant",
    "table_name",
    "export_batch_id",
    "audiences",
    "interval_start",
    "interval_end",
    "dataset_id",
    "enabled",
    "sources",
)


class _ExportReader(AdobeBaseOperator):
    """Reads this run's export through Query Service: which rows the export holds for this job."""

    def __init__(
        self,
        *,
        job: dict[str, Any],
        tenant: str,
        table_name: str,
        export_batch_id: str,
        audiences: list[dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sandbox", job.get("sandbox"))
        kwargs.setdefault("adobe_conn_id", job.get("conn_id") or "adobe_experience_platform_default")
        super().__init__(**kwargs)
        self.job = job
        self.tenant = tenant
        self.table_name = table_name
        self.export_batch_id = export_batch_id
        self.audiences = audiences

    @cached_property
    def job_config(self) -> RefreshJob:
        return RefreshJob.model_validate(self.job)

    def query(self) -> sql.MembershipQuery:
        try:
            return sql.build_membership_query(
                self.job_config,
                table=self.table_name,
                batch_id=self.export_batch_id,
                tenant=self.tenant,
                audience_ids=[a["id"] for a in self.audiences],
            )
        except ValueError as exc:
            raise AirflowFailException(f"invalid query input: {exc}") from exc

    @cached_property
    def query_service(self) -> Any:
        # Shares the task's platform hook: its token, retry policy and retry counts.
        return hooks.query_service.QueryServiceHook(
            self.adobe_conn_id,
            sandbox=self.sandbox,
            platform_hook=self.hook(hooks.platform.AdobePlatformHook),
        )

    def ingestion(self) -> Any:
        return self.hook(hooks.ingestion.BatchIngestionHook)

    def check_export_read(self, q: sql.MembershipQuery, export_job_id: Any) -> None:
        """Fail before writing anything when the batch filter does not find the rows the export job
        (``export_job_id``, else its Catalog batch) says it wrote (see :mod:`airflow_cja_audiences.export_check`)."""
        from airflow_cja_audiences.hooks.query_service import QueryServiceError

        expected = prepare.expected_export_rows(
            prepare.export_job_id(export_job_id),
            self.export_batch_id,
            jobs=lambda: self.hook(hooks.segmentation.SegmentationHook),
            catalog=lambda: self.hook(hooks.catalog.CatalogHook),
        )
        try:
            ((read,),) = self.query_service.query_all(sql.export_rows_sql(q))
        except QueryServiceError as exc:
            raise _query_failed(f"counting the export's rows failed: {exc}", exc) from exc
        verdict = export_check.check_read(expected, int(read), batch_id_column=q.batch_id_column)
        if verdict.ok:
            self.log.info("Export read check: %s", verdict.message)
            return
        if verdict.retryable:
            raise AirflowException(verdict.message)
        raise AirflowFailException(verdict.message)


class CheckExportReadOperator(_ExportReader):
    """Once per run, before anything reads the export for publishing: the export batch is still live,
    and the batch filter finds as many rows as the export job says it wrote.

    A filter on the wrong batch column reads nothing, and an empty read would publish an empty
    snapshot (no events) as if the audiences had emptied. One task checks for both kinds: every
    statement over the export is a full scan of it on Query Service, so the check is not repeated
    in each ``prepare_*`` (they run with ``check_export=False`` after it).
    """

    template_fields = ("sandbox", "tenant", "table_name", "export_batch_id", "audiences", "export_job_id")

    def __init__(self, *, export_job_id: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_job_id = export_job_id  # whose count the read must match (else its Catalog batch's)

    def execute(self, context: Context) -> None:
        require_live_export(
            self.ingestion(),
            self.export_batch_id,
            "snapshot (or no events)",
            self.job_config.export_retention_days,
        )
        self.check_export_read(self.query(), self.export_job_id)
        self.log_retries()


class _MembershipQueryOperator(_ExportReader):
    """Shared parameters: what the export holds for this job and where the records go."""

    template_fields = _TEMPLATE_FIELDS

    def __init__(
        self,
        *,
        kind: Kind,
        dataset_id: str,
        interval_start: str | None = None,
        interval_end: str | None = None,
        enabled: bool | str = True,
        sources: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in ("snapshot", "events"):
            raise ValueError(f"kind must be 'snapshot' or 'events', not {kind!r}")
        self.kind: Kind = kind
        self.dataset_id = dataset_id
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.enabled = enabled
        self.sources = sources  # events: the export batches to read (prepare_events decides)

    def _skip_unless_enabled(self) -> None:
        if not truthy(self.enabled):
            raise AirflowSkipException(f"this run publishes no {self.kind}")

    def window(self) -> sql.TimeWindow | None:
        if self.kind != "events":
            return None
        if not (self.interval_start and self.interval_end):
            raise AirflowFailException("an events load needs interval_start and interval_end")
        return sql.TimeWindow(self.interval_start, self.interval_end)

    @property
    def by_time(self) -> bool:
        """Partitions sized by time: queries end with ``LIMIT 0`` (no row cap)."""
        return self.job_config.query_partitioning == "time"

    def rows_sql(self, partition: sql.Partition) -> str:
        window = self.window()
        q = self.query()
        if window is None:
            text = sql.membership_sql(q, partition)
        else:
            text = sql.events_sql(q, window, partition, list(self.sources or ()) or None)
        return sql.lift_row_cap(text) if self.by_time else text

    def label(self, context: Context) -> BatchLabel:
        return BatchLabel.for_run(
            job_id=self.job_config.job_id,
            kind=self.kind,
            export_batch_id=self.export_batch_id,
            run_id=context["run_id"],
            interval_start=self.interval_start,
            interval_end=self.interval_end,
        )


class PrepareLoadOperator(_MembershipQueryOperator):
    """Count, check identities, plan partitions, compute per-audience counts, open the target batch.

    Return value: the partitions (``[{modulus, remainder}, ...]``) to map the load over. XCom keys:
    ``batch_id`` ("" when there is nothing to upload), ``external_id`` (the batch label, "" when disabled),
    ``memberships``, ``audience_counts`` (audience id -> counts), ``previous_batch_ids``, and for the
    load tasks ``sources`` (the export batches to read) with ``interval_start``/``interval_end`` (the
    events interval actually published: the run's, widened to the live intervals it overlaps).

    When the run publishes nothing of this kind (``enabled`` false) it returns no partitions and
    pushes empty values rather than skipping, so downstream tasks can still read its keys.
    """

    operator_extra_links = (AepBatchLink(),)

    def __init__(
        self,
        *,
        export_dataset_id: str = "",
        export_job_id: int | str | None = None,
        check_export: bool = True,
        force: bool | str = False,
        open_batch: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", False)  # the return value is the list to map over
        super().__init__(**kwargs)
        self.export_dataset_id = export_dataset_id
        self.export_job_id = export_job_id  # whose counts the read must match (else its Catalog batch's)
        # False where a CheckExportReadOperator ran before (the refresh DAG's check_export_read): the
        # read check is a full scan of the export, worth doing once per run, not once per prepare.
        self.check_export = check_export
        self.force = force
        # False on the server path: a batch query writes the batch, so none is opened and no
        # partitions are planned (prepare only counts, checks identities and labels the run).
        self.open_batch = open_batch

    template_fields = (*_TEMPLATE_FIELDS, "export_dataset_id", "export_job_id", "force")

    def execute(self, context: Context) -> list[dict[str, int]]:
        if not truthy(self.enabled):
            self.log.info("This run publishes no %s", self.kind)
            _push(
                context,
                {
                    "batch_id": NO_BATCH,
                    "external_id": "",
                    "memberships": 0,
                    "audience_counts": None,
                    "previous_batch_ids": [],
                    "sources": [],
                    "interval_start": "",
                    "interval_end": "",
                    "coverage": None,
                },
            )
            return []
        from airflow_cja_audiences.hooks.query_service import QueryServiceError

        q, ingestion = self.query(), self.ingestion()
        # A reverted export first (one Catalog call, a clear message), then the rows read vs the job's count.
        require_live_export(ingestion, self.export_batch_id, self.kind, self.job_config.export_retention_days)
        if self.check_export:  # before anything is written: an empty read must never publish
            self.check_export_read(q, self.export_job_id)
        exports = self._export_history()
        if self.kind == "events":
            events = event_plans.plan_events(
                ingestion,
                self.dataset_id,
                job_id=self.job_config.job_id,
                export_batch_id=self.export_batch_id,
                interval_start=self.interval_start,
                interval_end=self.interval_end,
                exports=exports,
                labels=query_labels(self),
            )
            window, sources = events.window, events.sources.batch_ids
            label = events.label(
                job_id=self.job_config.job_id, export_batch_id=self.export_batch_id, run_id=context["run_id"]
            )
        else:
            events, window, sources, label = None, None, None, self.label(context)
        previous = (
            list(events.replaced)
            if events
            else live_batches(ingestion, self.dataset_id, label, labels=query_labels(self))
        )
        # One statement counts everything prepare needs from the export (totals, per-audience counts,
        # the comparison with the previous snapshot's export or the events' untimed pair): each
        # statement is a full scan of it.
        started = time.monotonic()
        events_read: event_plans.EventsRead | None = None
        snapshot_read: prepare.SnapshotRead | None = None
        try:
            if events:
                events_read = event_plans.read_events(self.query_service.query_all, q, events)
                total, identified = events_read.total, events_read.identified
            else:
                snapshot_read = prepare.read_snapshot(
                    self.query_service.query_all,
                    q,
                    previous=previous,
                    labels=query_labels(self),
                    export_batch_id=self.export_batch_id,
                )
                total, identified = snapshot_read.total, snapshot_read.identified
        except QueryServiceError as exc:
            raise _query_failed(f"counting the export failed: {exc}", exc) from exc
        # The count reads the export batches the partition queries will (a snapshot's also reads the
        # previous snapshot's export, an events one its untimed pair): its duration is this run's
        # measured scan time (start-up and queueing included, so on the safe side).
        scan_seconds = time.monotonic() - started
        prepare.check_identified(
            total, identified, person_field=q.person_field, export_batch_id=self.export_batch_id
        )
        if events:
            with events_decision(self.log):
                event_plans.guard(events, identified, force=truthy(self.force))
        partitions = self._plan(identified, scan_seconds) if self.open_batch else []
        if events and events_read is not None:
            found = event_plans.event_counts([a["id"] for a in self.audiences], events, events_read)
            counts, coverage = found.counts, found.coverage
        elif snapshot_read is not None:
            counts, coverage = self._snapshot_counts(snapshot_read, exports)
        batch_id = NO_BATCH
        if identified and self.open_batch:
            batch = ingestion.find_batch(
                self.dataset_id, external_id=label.external_id
            ) or self._create_batch(ingestion, label, [] if events else [b.id for b in previous])
            batch_id = prepare.checked_batch_id(batch.id)
            push_batch_link(context, ingestion.settings, batch_id)
            if events:  # client path: this run's open batch is its claim
                now = datetime.now(timezone.utc)
                with events_decision(self.log):
                    event_plans.claim_batch(
                        events, ingestion, batch, self._event_claims(ingestion, now, queries=False), now=now
                    )
        elif identified and events:  # server path: no batch before the batch query writes one
            now = datetime.now(timezone.utc)
            with events_decision(self.log):
                event_plans.wait_for_earlier_claims(
                    events, label, self._event_claims(ingestion, now, queries=True), now=now
                )
        self.log.info(
            "%s: %d memberships (%d with a person id) in %d partitions; batch %s; replaces %s",
            self.kind,
            total,
            identified,
            len(partitions),
            batch_id,
            [b.id for b in previous] or "nothing",
        )
        _push(
            context,
            {
                "batch_id": batch_id,
                "memberships": identified,
                "audience_counts": counts,
                "previous_batch_ids": [b.id for b in previous],
                "external_id": label.external_id,
                "sources": sources or [],
                "coverage": coverage,
                "interval_start": window.start if window else "",
                "interval_end": window.end if window else "",
            },
        )
        self.log_retries()
        return [p.to_dict() for p in partitions]

    def _create_batch(self, ingestion: Any, label: BatchLabel, predecessors: list[str]) -> Any:
        """The target batch, replaying (replacing) ``predecessors`` when AEP accepts it
        (:func:`airflow_cja_audiences.pipeline.prepare.create_target_batch`)."""
        return prepare.create_target_batch(ingestion, self.dataset_id, label, predecessors)

    def _plan(self, rows: int, scan_seconds: float) -> Sequence[sql.Partition]:
        """The partitions to map the load over; fails before anything is mapped when no plan fits
        Airflow's ``max_map_length`` (not retried) or the time budget (retried: the scan was measured)."""
        max_map_length = conf.getint("core", "max_map_length", fallback=scanplan.DEFAULT_MAX_MAP_LENGTH)
        try:
            return prepare.plan_partitions(
                self.job_config, self.kind, rows, scan_seconds, max_map_length=max_map_length
            )
        except scanplan.PlanError as exc:
            # A slow scan may be a busy moment (retried); max_map_length is not (fails at once).
            error = AirflowException if exc.measured else AirflowFailException
            raise error(f"planning the {self.kind} load: {exc}") from None

    def _event_claims(self, ingestion: Any, now: datetime, *, queries: bool) -> list[runs.OpenEventsBatch]:
        """This job's claims on events intervals: its events batches and, with ``queries`` (server
        path), its in-flight events batch queries (:func:`~airflow_cja_audiences.pipeline.events.open_claims`)."""
        return event_plans.open_claims(
            ingestion,
            self.dataset_id,
            self.job_config.job_id,
            labels=query_labels(self),
            queries=self.hook(hooks.batch_query.BatchQueryHook) if queries else None,
            now=now,
        )

    # -- snapshot --------------------------------------------------------------------------------

    def _snapshot_counts(
        self, read: prepare.SnapshotRead, exports: _ExportHistory
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Members, entered/exited since the previous snapshot, members without a person id
        (:func:`airflow_cja_audiences.pipeline.prepare.snapshot_counts`)."""
        found = prepare.snapshot_counts(
            read,
            [a["id"] for a in self.audiences],
            exports=exports,
            export_batch_id=self.export_batch_id,
        )
        return found.counts, found.coverage

    def _export_history(self) -> _ExportHistory:
        """This job's successful export jobs into its export dataset, newest first, read lazily."""
        return _ExportHistory(
            lambda: self.hook(hooks.segmentation.SegmentationHook).iter_export_jobs(
                status=ExportJobStatus.SUCCEEDED.value
            ),
            self.export_dataset_id,
        )


@contextmanager
def events_decision(log: Any) -> Iterator[None]:
    """Translate what :mod:`~airflow_cja_audiences.pipeline.events` (and the server path's claim)
    decide: a give-way into a reschedule (plan again later, nothing of this run is live), a refusal
    into ``AirflowFailException`` with its message unchanged and the typed refusal chained."""
    try:
        yield
    except event_plans.GiveWay as way:
        log.warning("%s; planning again at %s", way.what, runs.utc_iso(way.until))
        raise AirflowRescheduleException(way.until) from way
    except (event_plans.EventsShrinkError, ClaimLostError) as exc:
        raise AirflowFailException(str(exc)) from exc


def _counted(batches: Iterator[Sequence[Any]], received: list[int]) -> Iterator[Sequence[Any]]:
    """Pass ``batches`` through, adding their rows to ``received[0]`` (did rows arrive before a failure?)."""
    for batch in batches:
        received[0] += len(batch)
        yield batch


def _query_failed(message: str, exc: Any) -> Exception:
    """A Query Service failure (``exc``, a ``QueryServiceError``) with what was being done: still typed,
    so the base operator's fail-fast stops a permanent one (authentication, a bad statement) and a
    transient one is retried (raise it ``from exc``)."""
    return type(exc)(message, exc.sqlstate, transient=exc.transient, permanent=exc.permanent)


# Airflow 3 reads a stored None XCom as "not pushed": publish_* and abort_open_batches template
# ``batch_id``/``external_id``, and would fail with XComNotFound. "No batch" is therefore "".
NO_BATCH = ""


def _push(context: Context, values: dict[str, Any]) -> None:
    for key, value in values.items():
        context["ti"].xcom_push(key=key, value=value)


def query_labels(op: Any) -> QueryLabels:
    """The label of a batch a Query Service batch query wrote (server path): its query's name.
    Makes no call for batches no query wrote; one per batch and task for the others."""
    from airflow_cja_audiences.hooks.batch_query import query_id_of

    return QueryLabels(
        query_id_of,
        lambda batch: op.hook(hooks.batch_query.BatchQueryHook).label_of_batch(batch),
        cache=op.__dict__.setdefault("_query_batch_labels", {}),
    )


class LoadPartitionOperator(_MembershipQueryOperator):
    """Query one partition, transform its rows into CJA records, upload the files into the batch.

    A partition that turns out over Query Service's row limit, or that ran into its time limit while
    returning rows, is split in two and each half loaded (files are uploaded only after a partition's
    query completed, so a failed or split partition leaves nothing behind); a time limit reached
    before the first row fails with advice, since every partition scans the whole export
    (:func:`airflow_cja_audiences.scanplan.limit_reaction`). File names are deterministic, so a retried task replaces its files.

    XCom (return value): ``{partition, rows, records, files, bytes, skipped_rows, splits}``.
    """

    template_fields = (*_TEMPLATE_FIELDS, "batch_id", "partition")

    def __init__(
        self, *, batch_id: str, partition: dict[str, int], max_split_depth: int = 6, **kwargs: Any
    ) -> None:
        kwargs.setdefault("multiple_outputs", False)  # mapped: downstream reads the list of results
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.partition = partition
        self.max_split_depth = max_split_depth

    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_unless_enabled()
        self._require_open_batch()
        require_live_export(
            self.ingestion(), self.export_batch_id, self.kind, self.job_config.export_retention_days
        )
        from airflow_cja_audiences.transform import RecordSpec

        part = sql.Partition.from_dict(self.partition)
        spec = RecordSpec.from_job(
            self.job_config,
            tenant=self.tenant,
            audience_names={a["id"]: a["name"] for a in self.audiences},
            events=self.kind == "events",
        )
        totals = split.LoadTotals(partition=part.to_dict())
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cja-load-") as tmp:
            split.load_partition(
                part,
                query=functools.partial(self._query, spec=spec, tmp=Path(tmp)),
                upload=self._upload,
                totals=totals,
                by_time=self.by_time,
                row_limit=self.job_config.query_service_row_limit,
                max_depth=self.max_split_depth,
            )
        seconds = (
            time.monotonic() - started
        )  # logged only: the result stays the same when the task is retried
        self.log.info(
            "Partition %s: %d rows -> %d records in %d files (%d bytes) uploaded to batch %s in %.1f s "
            "(%.0f rows/s; compare query_service_rows_per_second: %g)",
            part.label,
            totals.rows,
            totals.records,
            totals.files,
            totals.bytes,
            self.batch_id,
            seconds,
            totals.rows / seconds if seconds > 0 else 0.0,
            self.job_config.query_service_rows_per_second,
        )
        self.log_retries()
        return totals.to_dict()

    def _require_open_batch(self) -> None:
        """Files can only go into a batch that is still open: a load task cleared (on its own) after its
        run published or aborted the batch would otherwise retry an upload AEP refuses, for minutes."""
        prepare.require_open_batch(self.ingestion(), self.batch_id)

    def _query(self, part: sql.Partition, *, spec: Any, tmp: Path) -> TransformSummary | split.LimitHit:
        """Run one partition's query into JSON Lines files; a 53400 (row cap, time limit) is returned for
        :func:`~airflow_cja_audiences.pipeline.split.load_partition` to decide on, any other failure raised."""
        from airflow_cja_audiences.hooks.query_service import QueryServiceError
        from airflow_cja_audiences.transform import write_jsonl

        prefix = f"{self.kind}-part-{part.modulus:05d}-{part.remainder:05d}"
        received = [0]  # rows the current attempt got before it ended

        def attempt() -> TransformSummary:
            received[0] = 0
            return write_jsonl(
                _counted(self.query_service.stream(self.rows_sql(part)), received),
                spec,
                tmp,
                prefix,
                max_file_bytes=self.job_config.max_file_bytes,
            )

        try:
            # A transient failure re-runs the whole partition query; files keep their names, so the
            # next attempt overwrites what the failed one wrote, and only its own files are uploaded.
            return self.query_service.retrying(attempt)
        except QueryServiceError as exc:
            if not exc.is_limit:
                raise _query_failed(f"partition {part.label}: {exc}", exc) from exc
            return split.LimitHit(exc.limit_kind or "unknown", received[0], exc.server_message, exc)

    def _upload(self, summary: TransformSummary) -> None:
        ingestion = self.ingestion()
        for written in summary.files:
            ingestion.upload_file(
                self.batch_id, self.dataset_id, f"{self.kind}/{written.path.name}", written.path
            )
            written.path.unlink()
