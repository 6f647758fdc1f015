"""The few hook methods the pipeline's decisions call, as protocols (pure).

The real hooks (``airflow_cja_audiences.hooks``) satisfy them structurally; tests pass small fakes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, Protocol

from airflow_cja_audiences.models import Batch, Dataset, ExportJob, ExportJobRequest


class BatchReader(Protocol):
    """Catalog's view of one batch (``CatalogHook``, ``BatchIngestionHook``)."""

    def get_batch(self, batch_id: str) -> Batch: ...


class BatchLister(Protocol):
    def list_batches(self, dataset_id: str) -> list[Batch]: ...


class BatchActions(BatchReader, Protocol):
    """What publishing does to batches (``BatchIngestionHook``)."""

    def list_batches(self, dataset_id: str) -> list[Batch]: ...

    def revert_batch(self, batch_id: str) -> None: ...

    def abort_batch(self, batch_id: str) -> bool: ...

    def get_row_errors(self, batch_id: str, limit: int = 20) -> list[dict[str, Any]]: ...


class BatchAborter(Protocol):
    """Batch Ingestion's abort of an open batch (``BatchIngestionHook.abort_batch``)."""

    def abort_batch(self, batch_id: str) -> bool: ...


class BatchCreator(Protocol):
    """Batch Ingestion's create (``BatchIngestionHook.create_batch``)."""

    def create_batch(
        self, dataset_id: str, *, external_id: str, replay_predecessors: list[str] | None = None
    ) -> Batch: ...


class DatasetBatches(Protocol):
    """A dataset found by name and its batches, bounded (``CatalogHook``)."""

    def find_dataset(self, name: str) -> Dataset | None: ...

    def list_batches(
        self, dataset_id: str, *, created_after_ms: int | None = None, max_items: int = 10_000
    ) -> list[Batch]: ...


class ExportJobs(Protocol):
    """Segmentation export jobs (``SegmentationHook``)."""

    def get_export_job(self, job_id: int) -> ExportJob: ...

    def iter_export_jobs(self, *, status: str | None = None) -> Iterator[ExportJob]: ...

    def export_job_ids(self, request: ExportJobRequest, *, created_after_ms: int) -> set[int]: ...

    def find_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ...
    ) -> ExportJob | None: ...

    def create_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ...
    ) -> ExportJob: ...


class BatchQueryState(Protocol):
    """A Query Service batch query as the pipeline reads it (``hooks.batch_query.BatchQuery``)."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    @property
    def is_success(self) -> bool: ...

    @property
    def is_terminal(self) -> bool: ...

    def created_ms(self) -> int | None: ...


class QueryLister(Protocol):
    """Recent batch queries, newest first (``BatchQueryHook.recent_queries``)."""

    def recent_queries(self, *, created_after_ms: int) -> Sequence[BatchQueryState]: ...


class BatchQueries(QueryLister, Protocol):
    """Query Service batch queries: find one by name, read, cancel (``BatchQueryHook``)."""

    def find_query(self, name: str, *, created_after_ms: int) -> BatchQueryState | None: ...

    def get_query(self, query_id: str) -> BatchQueryState: ...

    def cancel_query(self, query_id: str) -> None: ...


class StateStore(Protocol):
    """Airflow's ``task_state_store``: values that survive a killed worker (get/set/delete by key)."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any) -> Any: ...

    def delete(self, key: str) -> Any: ...
