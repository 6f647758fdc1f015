"""An export task's job: re-attach to the one an earlier try of the same task instance started (pure).

A Segmentation export job is expensive (a full copy of the audiences) and AEP does not deduplicate
identical requests, so a retry after a crash, a kill or a lost answer must find the job its earlier try
created instead of starting a second one. What a try did is kept in Airflow's ``task_state_store``
(:class:`~.ports.StateStore`), which survives a killed worker. Export jobs API:
https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/export-jobs
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.models import ExportJob, ExportJobRequest
from airflow_cja_audiences.pipeline.ports import ExportJobs, StateStore

log = logging.getLogger(__name__)

# task_state_store keys: survive a killed worker, so a retry re-attaches to the job it started.
STATE_JOB_ID = "export_job_id"
STATE_STARTED_MS = "export_create_started_ms"
STATE_EARLIER_JOBS = "export_jobs_before_create"  # identical jobs that existed already: never ours
STATE_KEYS = (STATE_JOB_ID, STATE_STARTED_MS, STATE_EARLIER_JOBS)
CLOCK_SKEW_MS = 30 * 1000  # tolerated difference between our clock and AEP's


@dataclass(frozen=True)
class TryContext:
    """What the task instance knows about itself: its try and its run's start (epoch ms, None: unknown)."""

    try_number: int
    run_start_ms: int | None


def attach_or_create(
    jobs: ExportJobs,
    store: StateStore | None,
    request: ExportJobRequest,
    attempt: TryContext,
    *,
    now_ms: int,
) -> ExportJob:
    """Re-attach to the job an earlier try of *this task instance* started, else create one.

    The job id is stored right after the create; a try killed between the create and that store leaves
    only the "about to create" time, and the job is then found by what it asked for, created since then
    (less a clock-skew margin) - except the identical jobs that existed before the create (an earlier
    run's a few seconds ago), recorded before it. A first try never looks: a matching job of an earlier
    run is not ours. Without a store (some test harnesses) a retry looks from the run's start.
    """
    if store is not None and (job_id := store.get(STATE_JOB_ID)) is not None:
        job = jobs.get_export_job(int(job_id))
        if not job.is_failed:
            log.info("Re-attaching to export job %s (%s) started by an earlier try", job.id, job.status)
            return job
        log.info("Export job %s of an earlier try is %s; starting a new one", job.id, job.status)
    else:
        attempt_ms = store.get(STATE_STARTED_MS) if store is not None else None
        if attempt_ms is None and store is None and attempt.try_number > 1:
            attempt_ms = attempt.run_start_ms  # no store: the run's start
        if attempt_ms is not None:
            floor = max(int(attempt_ms), attempt.run_start_ms or 0)
            earlier = set(store.get(STATE_EARLIER_JOBS) or []) if store is not None else set()
            existing = jobs.find_export_job(request, created_after_ms=floor - CLOCK_SKEW_MS, exclude=earlier)
            if existing is not None:
                log.info(
                    "Re-attaching to export job %s (%s), created by an earlier try whose answer was lost",
                    existing.id,
                    existing.status,
                )
                if store is not None:
                    store.set(STATE_JOB_ID, existing.id)
                return existing
    earlier = jobs.export_job_ids(request, created_after_ms=now_ms - CLOCK_SKEW_MS)
    if store is not None:
        store.set(STATE_EARLIER_JOBS, sorted(earlier))
        store.set(STATE_STARTED_MS, now_ms)
    job = jobs.create_export_job(request, created_after_ms=now_ms - CLOCK_SKEW_MS, exclude=earlier)
    if store is not None:
        store.set(STATE_JOB_ID, job.id)
    return job


def job_of_batch(jobs: ExportJobs, store: StateStore | None, batch_id: str | None) -> ExportJob:
    """The job whose batch a trigger waited for, when the resume lost the defer's kwargs (``dag.test()``
    replaces them with the event): the id this try stored, else the SUCCEEDED job that names the batch."""
    if store is not None and (stored := store.get(STATE_JOB_ID)) is not None:
        return jobs.get_export_job(int(stored))
    for job in jobs.iter_export_jobs(status="SUCCEEDED"):  # newest first: ours is among the latest
        if batch_id and job.destination.batch_id == batch_id:
            return job
    raise AepError(
        f"no SUCCEEDED export job names batch {batch_id!r}, the batch this task waited "
        f"for; clear the task to export again"
    )


def forget(store: StateStore | None, keys: Iterable[str] = STATE_KEYS) -> None:
    """A finished job must not be re-attached by a later (cleared) run of this task."""
    if store is not None:
        for key in keys:
            store.delete(key)
