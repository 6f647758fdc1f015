"""Small stand-ins for the hooks the pipeline core calls through its protocols (no Airflow, no HTTP)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from airflow_cja_audiences.models import Batch, ExportJob, ExportJobRequest
from airflow_cja_audiences.runs import BatchLabel

EXPORT = "01EXPORTBATCH00000000000000"


def snapshot_label(job_id: str = "job", export_batch_id: str = EXPORT, run_id: str = "r1") -> BatchLabel:
    return BatchLabel.for_run(job_id=job_id, kind="snapshot", export_batch_id=export_batch_id, run_id=run_id)


def events_label(start: str, end: str, job_id: str = "job", run_id: str = "r1") -> BatchLabel:
    return BatchLabel.for_run(
        job_id=job_id,
        kind="events",
        export_batch_id=EXPORT,
        run_id=run_id,
        interval_start=start,
        interval_end=end,
    )


def batch(
    batch_id: str,
    status: str = "success",
    label: BatchLabel | None = None,
    records: int = 0,
    replay: list[str] | None = None,
    failed: int = 0,
) -> Batch:
    return Batch.model_validate(
        {
            "id": batch_id,
            "status": status,
            "externalId": label.external_id if label else None,
            "metrics": {"outputRecordCount": records, "failedRecordCount": failed},
            "replay": {"predecessors": replay, "reason": "replace"} if replay else None,
        }
    )


class Ingestion:
    """Batches by id; records what was reverted and aborted."""

    def __init__(self, *batches: Batch) -> None:
        self.batches = {b.id: b for b in batches}
        self.reverted: list[str] = []
        self.aborted: list[str] = []
        self.created: list[dict[str, Any]] = []
        self.refuse_replay = False

    def get_batch(self, batch_id: str) -> Batch:
        return self.batches[batch_id]

    def list_batches(self, dataset_id: str) -> list[Batch]:
        return list(self.batches.values())

    def revert_batch(self, batch_id: str) -> None:
        self.reverted.append(batch_id)
        self.batches[batch_id] = self.batches[batch_id].model_copy(update={"status": "inactive"})

    def abort_batch(self, batch_id: str) -> bool:
        self.aborted.append(batch_id)
        return True

    def get_row_errors(self, batch_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return [{"_errors": [{"message": "personID: missing"}]}][:limit]

    def create_batch(
        self, dataset_id: str, *, external_id: str, replay_predecessors: list[str] | None = None
    ) -> Batch:
        from airflow_cja_audiences.errors import AepBadRequestError

        if replay_predecessors and self.refuse_replay:
            raise AepBadRequestError(
                status=400, method="POST", url="/batches", code=None, message="replay refused"
            )
        self.created.append({"external_id": external_id, "replay": replay_predecessors})
        return batch(f"new-{len(self.created)}", "loading", replay=replay_predecessors)


def export_job(job_id: int, status: str = "SUCCEEDED", **extra: Any) -> ExportJob:
    return ExportJob.model_validate({"id": job_id, "status": status, **extra})


class Segmentation:
    """Export jobs, newest first; ``create_export_job`` appends one."""

    def __init__(self, *jobs: ExportJob) -> None:
        self.jobs = list(jobs)
        self.created: list[int] = []
        self.find_calls: list[tuple[int, frozenset[int]]] = []

    def get_export_job(self, job_id: int) -> ExportJob:
        return next(j for j in self.jobs if j.id == job_id)

    def iter_export_jobs(self, *, status: str | None = None) -> Iterator[ExportJob]:
        return iter([j for j in self.jobs if status is None or j.status == status])

    def export_job_ids(self, request: ExportJobRequest, *, created_after_ms: int) -> set[int]:
        return {j.id for j in self.jobs}

    def find_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ()
    ) -> ExportJob | None:
        self.find_calls.append((created_after_ms, frozenset(exclude)))
        return next((j for j in self.jobs if j.id not in exclude and not j.is_failed), None)

    def create_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ()
    ) -> ExportJob:
        job = export_job(100 + len(self.created), "NEW")
        self.created.append(job.id)
        self.jobs.insert(0, job)
        return job


class Store(dict):  # type: ignore[type-arg]
    """``task_state_store``: get/set/delete."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value

    def delete(self, key: str) -> None:
        self.pop(key, None)


class Query:
    """A Query Service batch query (the fields the pipeline reads)."""

    def __init__(self, query_id: str, state: str = "IN_PROGRESS", name: str | None = None, created: int = 0):
        self.id, self.state, self.name, self.created = query_id, state, name, created

    @property
    def is_success(self) -> bool:
        return self.state == "SUCCESS"

    @property
    def is_terminal(self) -> bool:
        return self.state in ("SUCCESS", "FAILED", "KILLED", "TIMEOUT")

    def created_ms(self) -> int | None:
        return self.created


class Queries:
    """Batch queries by id; ``recent_queries`` records how far back it was asked to look."""

    def __init__(self, *queries: Query) -> None:
        self.queries = {q.id: q for q in queries}
        self.asked_since: list[int] = []
        self.cancelled: list[str] = []

    def recent_queries(self, *, created_after_ms: int) -> list[Query]:
        self.asked_since.append(created_after_ms)
        return [q for q in self.queries.values() if q.created >= created_after_ms]

    def find_query(self, name: str, *, created_after_ms: int) -> Query | None:
        return next((q for q in self.queries.values() if q.name == name), None)

    def get_query(self, query_id: str) -> Query:
        return self.queries[query_id]

    def cancel_query(self, query_id: str) -> None:
        self.cancelled.append(query_id)
