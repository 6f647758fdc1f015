"""What a finished export job yields: its verdict, the batch it wrote, the export task's result (pure).

A job can succeed while the batch it wrote fails, so the export counts only once Catalog says the
batch succeeded too (export jobs: https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/export-jobs;
Catalog batches: https://developer.adobe.com/experience-platform-apis/references/catalog/).
"""

from __future__ import annotations

from typing import Any

from airflow_cja_audiences import validation
from airflow_cja_audiences.errors import AepError, AepObjectFailedError, AepResponseError
from airflow_cja_audiences.models import ExportJob


def destination_batch_id(job: ExportJob) -> str:
    """The batch a SUCCEEDED job wrote, checked: it is read back with SQL that filters on it.

    Raises the job's failure (retried: the retry starts a new job) when it did not succeed."""
    if not job.is_success:
        raise AepObjectFailedError(
            f"export job {job.id} ended {job.status}: {job.error_summary()} "
            f"(request id {job.request_id or 'n/a'}). Check the audiences and the "
            f"dataset in AEP, then clear this task to start a new export (a task retry "
            f"starts one too).",
            what=f"export job {job.id}",
            state=job.status,
        )
    batch_id = job.destination.batch_id
    if not batch_id:
        raise AepResponseError(f"export job {job.id} is {job.status} without a destination batch id")
    try:
        return validation.batch_id(batch_id)
    except ValueError as exc:
        raise AepError(f"export job {job.id} names a destination batch id that is not one: {exc}") from None


def export_result(
    job: ExportJob, *, batch_ok: bool, batch_status: str, errors: str, dataset_id: str
) -> dict[str, Any]:
    """The export task's result (XCom keys ``export_job_id``, ``export_batch_id``, ``export_dataset_id``,
    ``exported_profiles``), or the batch's failure (retried: the retry starts a new job)."""
    if not batch_ok:
        raise AepObjectFailedError(
            f"export job {job.id} {job.status} but its batch {job.destination.batch_id} "
            f"is {batch_status}: {errors}. See Monitoring > Batches in AEP.",
            what=f"batch {job.destination.batch_id}",
            state=batch_status,
        )
    return {
        "export_job_id": job.id,
        "export_batch_id": job.destination.batch_id,
        "export_dataset_id": job.destination.dataset_id or dataset_id,
        "exported_profiles": job.exported_profiles,
    }
