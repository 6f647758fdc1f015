"""Export retention: revert this job's export batches that nothing needs any more (after a publish).

Each run's export job writes a full copy of its audiences into the job's export dataset. After the
run published, ``PruneExportsOperator`` reverts the export batches older than the job's
``export_retention_days`` that no live batch may need again; what is kept, and why, is decided by
:func:`airflow_cja_audiences.runs.exports_to_prune` (pure, unit-tested) from AEP's own listings.

Failure policy: pruning is its own task, after the publish tasks. A publish that succeeded stays
succeeded whatever happens here (its task is green, the snapshot and events are live). Pruning that
cannot finish fails *this* task (after its retries), so the run shows it instead of a warning nobody
reads while copies of personal data pile up; nothing is lost by failing, because the next run's
prune decides again from AEP's state. When a listing it needs is incomplete, it reverts nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_cja_audiences import hooks, runs
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.operators.base import AdobeBaseOperator
from airflow_cja_audiences.runs import BatchLabel

#: A dataset listing this long may be cut (CatalogHook.list_batches' default cap): prune nothing then,
#: and fail, since a decision on a partial listing could revert an export a batch not listed needs.
LISTING_CAP = 10_000


class PruneExportsOperator(AdobeBaseOperator):
    """Revert the job's export batches older than its retention that no live batch needs.

    :param job: the job (``RefreshJob`` as a dict): its id, ``export_retention_days`` and naming.
    :param export_dataset_id: the job's export dataset.
    :param dataset_ids: the job's CJA datasets (profile, events) whose batches name the exports they
        were made from.

    XCom (return value): ``{"reverted": [ids], "kept": n, "failed": [ids]}``.
    """

    template_fields = ("sandbox", "export_dataset_id", "dataset_ids")

    def __init__(
        self, *, job: dict[str, Any], export_dataset_id: str, dataset_ids: Any = (), **kwargs: Any
    ) -> None:
        kwargs.setdefault("sandbox", job.get("sandbox"))
        kwargs.setdefault("adobe_conn_id", job.get("conn_id") or "adobe_experience_platform_default")
        kwargs.setdefault("trigger_rule", "none_failed_min_one_success")
        super().__init__(**kwargs)
        self.job = job
        self.export_dataset_id = export_dataset_id
        self.dataset_ids = dataset_ids

    def execute(self, context: Context) -> dict[str, Any]:
        job = RefreshJob.model_validate(self.job)
        if job.export_retention_days is None:
            raise AirflowSkipException("export_retention_days is null: every export of this job is kept")
        if "{job_id}" not in job.naming.export_dataset:
            # Another job may write into the same export dataset; its live batches are not ours to read.
            self.log.warning(
                "The export dataset %r may be shared with other jobs (its name has no {job_id}): "
                "export batches are not pruned",
                job.names.export_dataset,
            )
            raise AirflowSkipException("shared export dataset: not pruned")
        retention = timedelta(days=job.export_retention_days)
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        exports = self._exports(ingestion)
        holders = self._holders(ingestion, job.job_id)
        # Ages on AEP's clock: from the newest export (this run's, made minutes ago), so a skewed worker
        # clock can never make every export look old.
        newest_ms = max((e.ref.at_ms for e in exports), default=None)
        now = (
            datetime.fromtimestamp(newest_ms / 1000, tz=timezone.utc)
            if newest_ms
            else datetime.now(timezone.utc)
        )
        decision = runs.exports_to_prune(exports, holders, now=now, retention=retention)
        self.log.info(
            "Export retention %s days: %d export batches of dataset %s; %s",
            f"{job.export_retention_days:g}",
            len(exports),
            self.export_dataset_id,
            decision.summary(),
        )
        for batch_id, reason in sorted(decision.keep.items()):
            self.log.info("Keeping export batch %s: %s", batch_id, reason)
        reverted, failed = [], []
        for batch_id, reason in sorted(decision.revert.items()):
            try:
                ingestion.revert_batch(batch_id)
            except AepError as exc:  # one failure must not stop the others; reported below
                self.log.warning("Could not revert export batch %s (%s): %s", batch_id, reason, exc)
                failed.append(batch_id)
                continue
            self.log.info("Reverted export batch %s: %s", batch_id, reason)
            reverted.append(batch_id)
        self.log_retries()
        if failed:
            raise AirflowException(
                f"{len(failed)} of {len(decision.revert)} old export batches could not be reverted ({failed}); "
                f"the publish of this run is not affected. A retry, or the next run, prunes them again."
            )
        return {"reverted": reverted, "kept": len(decision.keep), "failed": failed}

    # -- what AEP says -----------------------------------------------------------------------------

    def _exports(self, ingestion: Any) -> list[runs.ExportBatch]:
        """The export dataset's successful batches, each with the instant its export reflects."""
        listing = ingestion.list_batches(self.export_dataset_id, max_items=LISTING_CAP)
        if len(listing) >= LISTING_CAP:
            raise AirflowFailException(
                f"export dataset {self.export_dataset_id} lists {len(listing)}+ batches; "
                f"the listing may be cut, so nothing is pruned"
            )
        live = [b for b in listing if b.is_success]
        jobs: dict[str, Any] = {}
        wanted = {b.id for b in live}
        for job in self.hook(hooks.segmentation.SegmentationHook).iter_export_jobs(status="SUCCEEDED"):
            batch_id = job.destination.batch_id
            if batch_id in wanted and job.destination.dataset_id == self.export_dataset_id:
                jobs[batch_id] = job
                if len(jobs) == len(wanted):
                    break
        exports = []
        for batch in live:
            job = jobs.get(batch.id)
            if job is not None and job.creation_time:
                ref = runs.ExportRef(
                    batch_id=batch.id,
                    at_ms=int(job.creation_time),
                    filtered=any("segmentQualificationTime" in s for s in job.filter.get("segments", [])),
                    segment_ids=tuple(job.segment_ids),
                )
            else:  # its export job is no longer listed: the batch's creation is a few seconds later
                ref = runs.ExportRef(batch_id=batch.id, at_ms=int(batch.created or 0))
            exports.append(runs.ExportBatch(ref=ref, created_ms=int(batch.created or 0)))
        return exports

    def _holders(self, ingestion: Any, job_id: str) -> list[runs.Holder]:
        """The job's snapshot and events batches that are live or still being published."""
        ids = self.dataset_ids
        if isinstance(ids, dict):
            ids = list(ids.values())
        holders = []
        for dataset_id in [d for d in (ids or []) if d]:
            listing = ingestion.list_batches(dataset_id, max_items=LISTING_CAP)
            if len(listing) >= LISTING_CAP:
                raise AirflowFailException(
                    f"dataset {dataset_id} lists {len(listing)}+ batches; the listing may "
                    f"be cut, so nothing is pruned"
                )
            for batch in listing:
                label = BatchLabel.parse(batch.external_id)
                if (
                    label is None
                    or label.job_id != job_id
                    or batch.is_failed
                    or batch.status.lower() in batch.GONE
                ):
                    continue
                holders.append(runs.Holder(batch.id, label.kind, label.export_batch_id, label.interval))
        return holders
