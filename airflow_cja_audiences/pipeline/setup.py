"""Decisions of the read-only resolve step and the find-or-create steps (pure).

* which audiences this job's earlier snapshots exported (evidence that an audience AEP no longer has
  was deleted or renamed, not mistyped: :mod:`airflow_cja_audiences.missing`);
* a CJA dataset another job publishes into is refused;
* what AEP answered (audience ids, the tenant) is checked before it goes into SQL and records;
* what a run publishes, from its type, data interval and trigger form (:func:`airflow_cja_audiences.runs.plan_run`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from airflow_cja_audiences import validation
from airflow_cja_audiences.errors import AepApiError, AepConfigError, AepError
from airflow_cja_audiences.missing import PreviousExports
from airflow_cja_audiences.models import ExportJobStatus
from airflow_cja_audiences.pipeline.ports import DatasetBatches, ExportJobs
from airflow_cja_audiences.pipeline.refusals import SharedDatasetError
from airflow_cja_audiences.runs import BatchLabel, RunPlan, plan_run

# How far back the resolve step looks for this job's earlier snapshots, and how much earlier than a
# snapshot batch the export job that fed it may have been created.
PREVIOUS_SNAPSHOT_DAYS = 30
EXPORT_BEFORE_SNAPSHOT_MS = 2 * 86_400_000
MAX_SNAPSHOT_BATCHES = 500


def previous_exports(
    catalog: DatasetBatches,
    segmentation: ExportJobs,
    *,
    dataset_name: str,
    job_id: str,
    now_ms: int,
    days: int = PREVIOUS_SNAPSHOT_DAYS,
) -> PreviousExports:
    """What the snapshots this job published in the last ``days`` exported, read from AEP only.

    Each snapshot batch we publish carries a label in ``externalId`` naming the export batch it was
    made from (:class:`~airflow_cja_audiences.runs.BatchLabel`); replaced snapshots stay in Catalog as
    ``inactive`` (later ``deleted``). The export job whose ``destination.batchId`` is that export
    batch lists the audience ids in ``filter.segments``. Airflow's metadata (which a user may clear)
    is not used.
    """
    dataset = catalog.find_dataset(dataset_name)
    if dataset is None:
        return PreviousExports()
    since = now_ms - days * 86_400_000
    created: dict[str, int] = {}  # export batch id -> creation of the earliest snapshot batch made from it
    for batch in catalog.list_batches(dataset.id, created_after_ms=since, max_items=MAX_SNAPSHOT_BATCHES):
        label = BatchLabel.parse(batch.external_id)
        # Live, or replaced by a later run (REVERT -> inactive, later garbage-collected to deleted).
        published = batch.is_success or batch.is_gone
        if label is None or label.job_id != job_id or label.kind != "snapshot" or not published:
            continue
        when = batch.created or now_ms
        created[label.export_batch_id] = min(when, created.get(label.export_batch_id, when))
    if not created:
        return PreviousExports()
    audience_ids: dict[str, int] = {}
    first: dict[str, int] = {}
    oldest = min(created.values()) - EXPORT_BEFORE_SNAPSHOT_MS
    wanted = dict(created)
    for job in segmentation.iter_export_jobs(status=ExportJobStatus.SUCCEEDED.value):  # newest first
        if job.creation_time is not None and job.creation_time < oldest:
            break
        snapshot_ms = wanted.pop(job.destination.batch_id or "", None)
        if snapshot_ms is None:
            continue
        for audience_id in job.segment_ids:
            audience_ids.setdefault(audience_id, job.id)  # newest first: the latest export that listed it
            first[audience_id] = min(snapshot_ms, first.get(audience_id, snapshot_ms))
        if not wanted:
            break
    return PreviousExports(audience_ids=audience_ids, first_exported_ms=first, snapshots=len(created))


def refuse_other_jobs(catalog: DatasetBatches, dataset_id: str, dataset_name: str, job_id: str) -> None:
    """Refuse a dataset that holds live batches another job wrote (their label names the job): each
    job replaces only its own batches, so both jobs' snapshots (or events) would stay live in it."""
    others = sorted(
        {
            label.job_id
            for batch in catalog.list_batches(dataset_id, max_items=MAX_SNAPSHOT_BATCHES)
            if batch.is_success
            and (label := BatchLabel.parse(batch.external_id)) is not None
            and label.job_id != job_id
        }
    )
    if others:
        raise SharedDatasetError(
            f"dataset {dataset_name!r} ({dataset_id}) holds live batches of job(s) {', '.join(others)}: two jobs "
            f"must not share a CJA dataset (each replaces only its own batches, so both would stay live). "
            f"Give job {job_id!r} its own dataset (naming.*_dataset with {{job_id}}), or revert the other job's "
            f"batches if it no longer exists",
            advice="give each job its own CJA dataset",
        )


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


def check_resolved(resolved: Sequence[_HasId]) -> None:
    """What AEP answered goes into the export job and into SQL: each id must be a well-formed audience
    id (that a look-up by id answers with that id is checked by the hook)."""
    for audience in resolved:
        try:
            validation.audience_id(audience.id)
        except ValueError as exc:
            raise AepError(f"AEP answered an audience look-up with an id that is not one: {exc}") from None


class TenantSource(Protocol):
    """Schema Registry's tenant of the sandbox (``SchemaRegistryHook``)."""

    sandbox: str

    def get_tenant_id(self) -> str: ...


def check_tenant(registry: TenantSource, tenant: str) -> None:
    """A configured tenant must be the sandbox's: a wrong one would otherwise surface later, as the
    identity field missing from the schema or records written under a namespace nobody reads."""
    try:
        actual = registry.get_tenant_id()
    except AepApiError:
        raise
    except AepError:
        return  # Schema Registry names no tenant: the configured one is all there is to go by
    if actual != tenant:
        raise AepConfigError(
            f"tenant: {tenant!r} is not the tenant of sandbox {registry.sandbox!r} (Schema "
            f"Registry says {actual!r}); set tenant to {actual!r} or leave it out"
        )


def instant(value: Any, name: str) -> datetime:
    """An ISO 8601 date-time from a trigger form (UTC when it names no zone); ValueError naming ``name``."""
    if not value:
        raise ValueError(f"{name} is required when the other bound is given")
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def run_type_name(run_type: Any) -> str:
    """Airflow's DagRunType as its value (``DagRunType.SCHEDULED`` and ``"scheduled"`` alike)."""
    return str(run_type).rsplit(".", 1)[-1].lower()


def plan_this_run(
    *,
    params: Mapping[str, Any],
    data_interval: tuple[datetime | None, datetime | None],
    run_type: str,
    publish_events: bool,
    now: datetime,
) -> RunPlan:
    """What a run publishes, from its trigger form (``params``), data interval and type.

    ValueError (naming the field) when the form's events interval is incomplete or not a date-time, or
    when :func:`~airflow_cja_audiences.runs.plan_run` finds the combination impossible."""
    start, end = data_interval
    interval = (start, end) if start is not None and end is not None and end > start else None
    manual = None
    if params.get("events_interval_start") or params.get("events_interval_end"):
        manual = (
            instant(params.get("events_interval_start"), "events_interval_start"),
            instant(params.get("events_interval_end"), "events_interval_end"),
        )
    snapshot_param = params.get("publish_snapshot")
    try:
        return plan_run(
            run_type=run_type,
            interval=interval,
            publish_events=publish_events,
            now=now,
            manual_interval=manual,
            force_snapshot=None if snapshot_param in (None, True) else bool(snapshot_param),
        )
    except ValueError as exc:
        raise ValueError(f"cannot plan this run: {exc}") from exc
