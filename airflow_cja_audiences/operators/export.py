"""Export audiences with a Segmentation export job and wait for it deferrably (pipeline step 3).

An adapter: re-attaching a retry to its job is :mod:`airflow_cja_audiences.pipeline.reattach`, the job's
and its batch's verdicts :mod:`airflow_cja_audiences.pipeline.exported`; this module waits (deferred or
not) and keeps the task's state."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from airflow_cja_audiences import hooks, triggers
from airflow_cja_audiences.links import (
    AepDatasetLink,
    AepExportJobLink,
    push_dataset_link,
    push_export_job_link,
)
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, AdobeBaseOperator, validate_event
from airflow_cja_audiences.pipeline import exported, reattach

if TYPE_CHECKING:
    from airflow_cja_audiences.hooks.segmentation import SegmentationHook
    from airflow_cja_audiences.models import ExportJob, ExportJobRequest


class ExportAudiencesOperator(AdobeBaseOperator):
    """Export the members of audiences into a profile-union dataset and wait for the job.

    One filter entry per audience; the job is created once per task instance: a retry (after a
    crash, a kill or a lost answer) re-attaches to the job already started instead of starting a
    second one. After the job SUCCEEDED, the batch it wrote is checked in Catalog (a job can
    succeed while its batch fails).

    :param dataset_id: destination dataset (profile union schema).
    :param audience_ids: audiences (segment definition ids) to export.
    :param fields: dot paths to export besides ``segmentMembership`` (e.g. the identity field).
    :param statuses: membership statuses that select a profile (``exited`` only for change events).
    :param qualification_start/qualification_end: RFC 3339 window on ``lastQualificationTime``.
    :param poll_interval: seconds between two looks at the job (and its batch).
    :param wait_timeout: longest wait for the job, and then for the batch it wrote; past it the task
        fails and is retried (a retry re-attaches to the same job).
    :param deferrable: wait in the triggerer (no worker slot held) instead of polling in the worker.

    XCom (keys): ``export_job_id``, ``export_batch_id``, ``export_dataset_id``, ``exported_profiles``.
    """

    template_fields = (
        "sandbox",
        "dataset_id",
        "audience_ids",
        "fields",
        "statuses",
        "merge_policy_id",
        "qualification_start",
        "qualification_end",
    )
    operator_extra_links = (AepExportJobLink(), AepDatasetLink())

    def __init__(
        self,
        *,
        dataset_id: str,
        audience_ids: Sequence[str] | str,
        fields: Sequence[str] = (),
        statuses: Sequence[str] = ("realized", "existing"),
        merge_policy_id: str | None = None,
        qualification_start: str | None = None,
        qualification_end: str | None = None,
        poll_interval: float = 30.0,
        wait_timeout: timedelta = timedelta(hours=3),
        deferrable: bool = DEFAULT_DEFERRABLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_id = dataset_id
        self.audience_ids = audience_ids
        self.fields = fields
        self.statuses = statuses
        self.merge_policy_id = merge_policy_id
        self.qualification_start = qualification_start
        self.qualification_end = qualification_end
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable
        self._job_id: int | None = None

    # ------------------------------------------------------------------ helpers

    def _request(self) -> ExportJobRequest:
        from airflow_cja_audiences.models import ExportJobRequest

        ids = self.audience_ids
        if isinstance(ids, str):
            ids = [i for i in ids.split(",") if i]
        return ExportJobRequest(
            dataset_id=self.dataset_id,
            segment_ids=tuple(ids),
            statuses=tuple(self.statuses),
            fields=tuple(self.fields),
            merge_policy_id=self.merge_policy_id,
            qualification_start=self.qualification_start or None,
            qualification_end=self.qualification_end or None,
        )

    @staticmethod
    def _store(context: Context) -> Any:
        return context.get("task_state_store")  # absent in some test harnesses

    def _attach_or_create(
        self, context: Context, hook: SegmentationHook, request: ExportJobRequest
    ) -> ExportJob:
        """Re-attach to the job an earlier try of this task instance started, else create one
        (:func:`airflow_cja_audiences.pipeline.reattach.attach_or_create`)."""
        run_start = context["dag_run"].start_date
        attempt = reattach.TryContext(
            try_number=context["ti"].try_number,
            run_start_ms=int(run_start.timestamp() * 1000) if run_start else None,
        )
        return reattach.attach_or_create(
            hook, self._store(context), request, attempt, now_ms=int(time.time() * 1000)
        )

    # ------------------------------------------------------------------ execution

    def execute(self, context: Context) -> dict[str, Any] | None:
        hook = self.hook(hooks.segmentation.SegmentationHook)
        job = self._attach_or_create(context, hook, self._request())
        self._job_id = job.id
        push_export_job_link(context, hook.settings, job.id)
        push_dataset_link(context, hook.settings, self.dataset_id)
        if job.is_terminal:
            return self._job_done(context, job)
        deadline = time.time() + self.wait_timeout.total_seconds()
        if self.deferrable:
            trigger = triggers.aep.ExportJobTrigger(
                job_id=job.id, **self.trigger_kwargs(self.poll_interval, deadline)
            )
            self.defer(trigger=trigger, method_name="execute_complete")
        job = hook.wait_for_export_job(job.id, deadline=deadline, poll_interval=self.poll_interval, first=job)
        return self._job_done(context, job)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        event = validate_event(event, what="export job", accept=("success", "failed"))
        self._job_id = int(event["job_id"])
        return self._job_done(
            context, self.hook(hooks.segmentation.SegmentationHook).get_export_job(self._job_id)
        )

    def _job_done(self, context: Context, job: ExportJob) -> dict[str, Any] | None:
        if not job.is_success:
            self._forget(context)  # so a retry starts a new export job
        batch_id = exported.destination_batch_id(job)
        catalog = self.hook(hooks.catalog.CatalogHook)
        batch = catalog.get_batch(batch_id)
        if not batch.is_terminal:
            deadline = time.time() + self.wait_timeout.total_seconds()
            if self.deferrable:
                trigger = triggers.aep.BatchTrigger(
                    batch_id=batch_id, **self.trigger_kwargs(self.poll_interval, deadline)
                )
                self.defer(trigger=trigger, method_name="batch_complete", kwargs={"job_id": job.id})
            batch = catalog.wait_for_batch(
                batch_id, deadline=deadline, poll_interval=self.poll_interval, first=batch
            )
        return self._finish(context, job, batch.is_success, batch.status, batch.error_summary())

    def batch_complete(
        self, context: Context, event: dict[str, Any] | None = None, job_id: int | None = None
    ) -> dict[str, Any]:
        event = validate_event(event, what="export batch", accept=("success", "failed"))
        hook = self.hook(hooks.segmentation.SegmentationHook)
        job = hook.get_export_job(job_id) if job_id is not None else self._job_of_batch(context, hook, event)
        return self._finish(
            context,
            job,
            event["status"] == "success",
            event.get("batch_status", "?"),
            event.get("message", ""),
        )

    def _job_of_batch(self, context: Context, hook: SegmentationHook, event: dict[str, Any]) -> ExportJob:
        """The job whose batch the trigger waited for, when the resume lost the defer's kwargs."""
        return reattach.job_of_batch(hook, self._store(context), event.get("batch_id"))

    def _finish(
        self, context: Context, job: ExportJob, ok: bool, batch_status: str, errors: str
    ) -> dict[str, Any]:
        self._forget(context)  # done, or failed: either way a retry starts a new export job
        result = exported.export_result(
            job, batch_ok=ok, batch_status=batch_status, errors=errors, dataset_id=self.dataset_id
        )
        self.log.info(
            "Export job %s %s: %s profiles in batch %s",
            job.id,
            job.status,
            job.exported_profiles,
            job.destination.batch_id,
        )
        self.log_retries()
        return result

    def _forget(self, context: Context) -> None:
        """A finished job must not be re-attached by a later (cleared) run of this task."""
        reattach.forget(self._store(context))

    def on_kill(self) -> None:
        if self._job_id is not None:
            self.log.info("Cancelling export job %s", self._job_id)
            self.hook(hooks.segmentation.SegmentationHook).cancel_export_job(self._job_id)
