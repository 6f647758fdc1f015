"""Query Service -> CJA batch: plan the partitions, then query, transform and upload each one (step 5).

``PrepareLoadOperator`` counts what the export holds for this job, checks the identity field, plans
hash partitions that each stay under Query Service's 50,000-row limit, computes per-audience counts
and opens the target batch. ``LoadPartitionOperator`` (mapped over the partitions, one task each,
so more workers load in parallel) streams one partition through a server-side cursor, turns rows
into CJA records and uploads the JSON Lines files into that batch. Nothing is handed between tasks
through local disk: each task uploads what it wrote.
"""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_cja_audiences import hooks, sql, validation
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.operators.base import AdobeBaseOperator, truthy
from airflow_cja_audiences.runs import BatchLabel, Kind

_TEMPLATE_FIELDS = ("sandbox", "tenant", "table_name", "export_batch_id", "audiences", "interval_start",
                    "interval_end", "dataset_id", "enabled")


class _MembershipQueryOperator(AdobeBaseOperator):
    """Shared parameters: what the export holds for this job and where the records go."""

    template_fields = _TEMPLATE_FIELDS

    def __init__(self, *, job: dict[str, Any], kind: Kind, tenant: str, table_name: str, export_batch_id: str,
                 audiences: list[dict[str, Any]], dataset_id: str, interval_start: str | None = None,
                 interval_end: str | None = None, enabled: bool | str = True, **kwargs: Any) -> None:
        kwargs.setdefault("sandbox", job.get("sandbox"))
        kwargs.setdefault("adobe_conn_id", job.get("conn_id") or "adobe_experience_platform_default")
        super().__init__(**kwargs)
        if kind not in ("snapshot", "events"):
            raise ValueError(f"kind must be 'snapshot' or 'events', not {kind!r}")
        self.job = job
        self.kind: Kind = kind
        self.tenant = tenant
        self.table_name = table_name
        self.export_batch_id = export_batch_id
        self.audiences = audiences
        self.dataset_id = dataset_id
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.enabled = enabled

    @cached_property
    def job_config(self) -> RefreshJob:
        return RefreshJob.model_validate(self.job)

    def _skip_unless_enabled(self) -> None:
        if not truthy(self.enabled):
            raise AirflowSkipException(f"this run publishes no {self.kind}")

    def query(self) -> sql.MembershipQuery:
        try:
            return sql.build_membership_query(self.job_config, table=self.table_name, batch_id=self.export_batch_id,
                                              tenant=self.tenant, audience_ids=[a["id"] for a in self.audiences])
        except ValueError as exc:
            raise AirflowFailException(f"invalid query input: {exc}") from exc

    def window(self) -> sql.TimeWindow | None:
        if self.kind != "events":
            return None
        if not (self.interval_start and self.interval_end):
            raise AirflowFailException("an events load needs interval_start and interval_end")
        return sql.TimeWindow(self.interval_start, self.interval_end)

    def rows_sql(self, partition: sql.Partition) -> str:
        window = self.window()
        q = self.query()
        return sql.membership_sql(q, partition) if window is None else sql.events_sql(q, window, partition)

    @cached_property
    def query_service(self) -> Any:
        # Shares the task's platform hook: its token, retry policy and retry counts.
        return hooks.query_service.QueryServiceHook(self.adobe_conn_id, sandbox=self.sandbox,
                                                    platform_hook=self.hook(hooks.platform.AdobePlatformHook))

    def label(self, context: Context) -> BatchLabel:
        return BatchLabel.for_run(job_id=self.job_config.job_id, kind=self.kind,
                                  export_batch_id=self.export_batch_id, run_id=context["run_id"],
                                  interval_start=self.interval_start, interval_end=self.interval_end)

    def ingestion(self) -> Any:
        return self.hook(hooks.ingestion.BatchIngestionHook)


class PrepareLoadOperator(_MembershipQueryOperator):
    """Count, check identities, plan partitions, compute per-audience counts, open the target batch.

    Return value: the partitions (``[{modulus, remainder}, ...]``) to map the load over. XCom keys:
    ``batch_id`` ("" when there is nothing to upload), ``external_id`` (the batch label, "" when disabled),
    ``memberships``, ``audience_counts`` (audience id -> counts), ``previous_batch_ids``.

    When the run publishes nothing of this kind (``enabled`` false) it returns no partitions and
    pushes empty values rather than skipping, so downstream tasks can still read its keys.
    """

    operator_extra_links = (AepBatchLink(),)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", False)  # the return value is the list to map over
        super().__init__(**kwargs)

    def execute(self, context: Context) -> list[dict[str, int]]:
        if not truthy(self.enabled):
            self.log.info("This run publishes no %s", self.kind)
            _push(context, {"batch_id": NO_BATCH, "external_id": "", "memberships": 0, "audience_counts": None,
                            "previous_batch_ids": []})
            return []
        from airflow_cja_audiences.hooks.query_service import QueryServiceError

        q, window = self.query(), self.window()
        try:
            (total, identified), = self.query_service.query_all(sql.count_sql(q, window=window))
        except QueryServiceError as exc:
            raise _query_failed(f"counting the export failed: {exc}", exc) from exc
        if total and not identified:
            raise AirflowFailException(
                f"identity.field {q.person_field} is empty in all {total} exported memberships of batch "
                f"{self.export_batch_id}: is it the right field, and populated in the profiles?")
        if identified < total:
            self.log.warning("%d of %d memberships have no %s and are skipped (CJA skips records without a "
                             "person ID)", total - identified, total, q.person_field)
        partitions = sql.plan_partitions(identified, self.job_config.max_rows_per_query) if identified else []
        label = self.label(context)
        ingestion = self.ingestion()
        previous = live_batches(ingestion, self.dataset_id, label)
        counts = self._audience_counts(q, window, previous)
        batch_id = NO_BATCH
        if identified:
            batch = ingestion.find_batch(self.dataset_id, external_id=label.external_id) or \
                ingestion.create_batch(self.dataset_id, external_id=label.external_id)
            batch_id = _checked_batch_id(batch.id)
            push_batch_link(context, ingestion.settings, batch_id)
        self.log.info("%s: %d memberships (%d with a person id) in %d partitions of <= %d rows; batch %s; "
                      "replaces %s", self.kind, total, identified, len(partitions),
                      self.job_config.max_rows_per_query, batch_id, [b.id for b in previous] or "nothing")
        _push(context, {"batch_id": batch_id, "memberships": identified, "audience_counts": counts,
                        "previous_batch_ids": [b.id for b in previous], "external_id": label.external_id})
        self.log_retries()
        return [p.to_dict() for p in partitions]

    def _audience_counts(self, q: sql.MembershipQuery, window: sql.TimeWindow | None,
                         previous: list[Any]) -> dict[str, dict[str, int]]:
        """Snapshot: members, entered and exited since the previous snapshot's export. Events: per type."""
        counts: dict[str, dict[str, int]] = {a["id"]: {} for a in self.audiences}
        if window is not None:
            for audience_id, event, n in self.query_service.query_all(sql.event_counts_sql(q, window)):
                counts[audience_id][event] = int(n)
            return counts
        previous_export = next((lbl.export_batch_id for b in previous if (lbl := BatchLabel.parse(b.external_id))),
                               None)
        if previous_export == self.export_batch_id:
            previous_export = None
        rows = self.query_service.query_all(sql.change_counts_sql(q, previous_export))
        for audience_id, members, entered, exited in rows:
            counts[audience_id] = {"members": int(members), "entered": int(entered), "exited": int(exited)}
        for value in counts.values():
            value.setdefault("members", 0)
            value.setdefault("entered", 0)
            value.setdefault("exited", 0)
        if previous_export is None:
            self.log.info("No previous snapshot of this job: everyone counts as entered")
        return counts


def _checked_batch_id(batch_id: str) -> str:
    """A batch id from Batch Ingestion goes into URLs, XCom and the clean-up task's template."""
    try:
        return validation.batch_id(batch_id)
    except ValueError as exc:
        raise AepError(f"Batch Ingestion answered with a batch id that is not one: {exc}") from None


def _query_failed(message: str, exc: Exception) -> AirflowException:
    """A Query Service failure: retried unless retrying cannot fix it (authentication, a bad statement)."""
    return AirflowFailException(message) if getattr(exc, "permanent", False) else AirflowException(message)


# Airflow 3 reads a stored None XCom as "not pushed": publish_* and abort_open_batches template
# ``batch_id``/``external_id``, and would fail with XComNotFound. "No batch" is therefore "".
NO_BATCH = ""


def _push(context: Context, values: dict[str, Any]) -> None:
    for key, value in values.items():
        context["ti"].xcom_push(key=key, value=value)


def live_batches(ingestion: Any, dataset_id: str, label: BatchLabel) -> list[Any]:
    """Our successful batches in the dataset that hold the same slot as ``label`` (newest first)."""
    found = []
    for batch in ingestion.list_batches(dataset_id):
        other = BatchLabel.parse(batch.external_id)
        if other is not None and batch.is_success and label.same_slot(other):
            found.append(batch)
    return found


class LoadPartitionOperator(_MembershipQueryOperator):
    """Query one partition, transform its rows into CJA records, upload the files into the batch.

    A partition that turns out over Query Service's row limit is split in two and each half loaded
    (files are uploaded only after a partition's query completed, so a failed or split partition
    leaves nothing behind). File names are deterministic, so a retried task replaces its files.

    XCom (return value): ``{partition, rows, records, files, bytes, skipped_rows, splits}``.
    """

    template_fields = (*_TEMPLATE_FIELDS, "batch_id", "partition")

    def __init__(self, *, batch_id: str, partition: dict[str, int], max_split_depth: int = 6,
                 **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", False)  # mapped: downstream reads the list of results
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.partition = partition
        self.max_split_depth = max_split_depth

    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_unless_enabled()
        self._require_open_batch()
        from airflow_cja_audiences.transform import RecordSpec

        part = sql.Partition.from_dict(self.partition)
        spec = RecordSpec.from_job(self.job_config, tenant=self.tenant,
                                   audience_names={a["id"]: a["name"] for a in self.audiences},
                                   events=self.kind == "events")
        totals = {"partition": part.to_dict(), "rows": 0, "records": 0, "files": 0, "bytes": 0, "skipped_rows": 0,
                  "splits": 0}
        with tempfile.TemporaryDirectory(prefix="cja-load-") as tmp:
            self._load(part, spec, Path(tmp), totals, depth=0)
        self.log.info("Partition %s: %d rows -> %d records in %d files (%d bytes) uploaded to batch %s",
                      part.label, totals["rows"], totals["records"], totals["files"], totals["bytes"], self.batch_id)
        self.log_retries()
        return totals

    def _require_open_batch(self) -> None:
        """Files can only go into a batch that is still open: a load task cleared (on its own) after its
        run published or aborted the batch would otherwise retry an upload AEP refuses, for minutes."""
        batch = self.ingestion().get_batch(self.batch_id)
        if batch.status.lower() != "loading":
            raise AirflowFailException(
                f"batch {self.batch_id} of this run is '{batch.status}', no longer open for files: this load task "
                f"was probably cleared on its own after its run had published or aborted the batch. One partition "
                f"cannot be loaded again into it: clear the whole DAG run (all its tasks) or trigger a new run.")

    def _load(self, part: sql.Partition, spec: Any, tmp: Path, totals: dict[str, Any], depth: int) -> None:
        from airflow_cja_audiences.hooks.query_service import QueryServiceError
        from airflow_cja_audiences.transform import write_jsonl

        prefix = f"{self.kind}-part-{part.modulus:05d}-{part.remainder:05d}"
        reason = None
        try:
            # A transient failure re-runs the whole partition query; files keep their names, so the
            # next attempt overwrites what the failed one wrote, and only its own files are uploaded.
            summary = self.query_service.retrying(lambda: write_jsonl(
                self.query_service.stream(self.rows_sql(part)), spec, tmp, prefix,
                max_file_bytes=self.job_config.max_file_bytes))
            if summary.rows >= self.job_config.query_service_row_limit:
                # Query Service may cut an ad hoc result at the limit without an error: a full
                # result is indistinguishable from a truncated one, so never trust it.
                reason = f"it returned {summary.rows} rows, Query Service's limit (the result may be cut)"
                for written in summary.files:
                    written.path.unlink()
        except QueryServiceError as exc:
            if not exc.is_limit:
                raise _query_failed(f"partition {part.label}: {exc}", exc) from exc
            reason = str(exc)
        if reason is not None:
            if depth >= self.max_split_depth:
                raise AirflowException(f"partition {part.label} is still over the limit after {depth} splits: "
                                       f"{reason}; lower max_rows_per_query or check for a skewed person id")
            left, right = part.split()
            totals["splits"] += 1
            self.log.warning("Partition %s is too big: %s; splitting into %s and %s", part.label, reason,
                             left.label, right.label)
            for child in (left, right):
                self._load(child, spec, tmp, totals, depth + 1)
            return
        ingestion = self.ingestion()
        for written in summary.files:
            ingestion.upload_file(self.batch_id, self.dataset_id, f"{self.kind}/{written.path.name}", written.path)
            written.path.unlink()
        totals["rows"] += summary.rows
        totals["records"] += summary.records
        totals["files"] += len(summary.files)
        totals["bytes"] += summary.bytes
        totals["skipped_rows"] += summary.skipped_rows


