"""Catalog model: datasets and batches of one sandbox (shared by Catalog, Ingestion and exports)."""

from __future__ import annotations

import re
import secrets
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Catalog batch statuses this emulator produces (a subset of the documented enum).
LOADING, PROCESSING, SUCCESS, FAILED, ABORTED, INACTIVE = (
    "loading",
    "processing",
    "success",
    "failed",
    "aborted",
    "inactive",
)
LOADED, STAGING = (
    "loaded",
    "staging",
)  # realistic mode's intermediate statuses (settings.intermediate_statuses)
IN_PROGRESS = frozenset({LOADED, PROCESSING, STAGING})  # after COMPLETE, before success/failed


def new_object_id() -> str:
    """Catalog ids look like 24-hex Mongo object ids."""
    return secrets.token_hex(12)


def new_batch_id() -> str:
    return secrets.token_hex(16)


def table_name_for(name: str, taken: set[str]) -> str:
    """Query Service table name of a dataset (tag ``adobe/pqs/table``).

    Guess: lower case, runs of non-alphanumerics become one ``_``, ``_1``, ``_2``... on collision.
    The documented example ``Segment Export Job Dataset for CJA`` -> ``segment_export_job_dataset_for_cja``
    holds; the collision rule is not documented.
    """
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "dataset"
    if base[0].isdigit():
        base = f"t_{base}"
    candidate, n = base, 1
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


@dataclass
class Dataset:
    id: str
    sandbox: str
    name: str
    schema_id: str
    content_type: str
    table: str
    has_table: bool  # profile-union datasets get a DuckDB table (export destinations)
    created: int
    updated: int
    description: str = ""
    tags: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # other accepted request fields, echoed
    view_id: str = field(default_factory=new_object_id)
    data_source_id: int | None = None  # Catalog's spec types it integer (dataSetResponse.dataSourceId)
    data_behavior: str = "record"  # of the schema's class: "record" | "time-series" | "adhoc"

    def to_json(self, org_id: str, client_id: str, last_batch: Batch | None) -> dict:
        body: dict[str, Any] = dict(self.extra)
        body.update(
            {
                "name": self.name,
                "description": self.description,
                "imsOrg": org_id,
                "version": "1.0.0",
                "tags": {**self.tags, "adobe/pqs/table": [self.table]},
                "schemaRef": {"id": self.schema_id, "contentType": self.content_type},
                "files": f"@/dataSetFiles?dataSetId={self.id}",
                "viewId": self.view_id,
                "created": self.created,
                "updated": self.updated,
                "createdClient": client_id,
                "createdUser": f"{client_id}@AdobeID",
                "updatedUser": f"{client_id}@AdobeID",
                # Always present in Catalog's answers (not in the pruned spec; seen in real responses);
                # clients read it to tell profile from event datasets. managedBy for system datasets:
                # not modelled (guess: every dataset a client creates is CUSTOMER).
                "classification": {"dataBehavior": self.data_behavior, "managedBy": "CUSTOMER"},
            }
        )
        if self.data_source_id is not None:
            body["dataSourceId"] = self.data_source_id
        if last_batch is not None:
            body["lastBatchId"], body["lastBatchStatus"] = last_batch.id, last_batch.status
        return body


@dataclass
class UploadedFile:
    path: str
    disk: Path
    large: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive byte ranges (large files)
    complete: bool = True
    size: int = 0


@dataclass
class Batch:
    id: str
    sandbox: str
    dataset_id: str
    origin: str  # "ingestion" | "export" | "query" (written by a batch query)
    status: str
    created: int
    updated: int
    created_client: str
    input_format: dict = field(default_factory=lambda: {"format": "json"})
    external_id: str | None = None
    replay: dict | None = None
    related: list[dict] = field(default_factory=list)  # relatedObjects besides the dataset
    tags: dict[str, Any] = field(default_factory=dict)
    partial_percent: float | None = None
    diagnostics: bool = False
    started: int | None = None
    completed: int | None = None
    files: dict[str, UploadedFile] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    records_path: Path | None = None  # accepted records (JSON Lines) of an ingestion batch
    row_errors_dir: Path | None = None
    work: Future | None = None  # processing in the executor
    due: float | None = None  # monotonic time when processing may finish
    stages: list[tuple[float, str]] = field(
        default_factory=list
    )  # (monotonic time, in-progress status) ahead
    version: int = 0
    updated_client: str | None = None  # who changed it last (a REVERT's caller; a replay's creator)
    # Emulator bookkeeping, never in Catalog's answers: monotonic seconds when the batch's records
    # became visible (success) and stopped being visible (reverted or replaced), for measuring how
    # long two snapshots were live at once (admin state only).
    live_since: float | None = None
    live_until: float | None = None

    def to_json(self, org_id: str) -> dict:
        body: dict[str, Any] = {
            "id": self.id,
            "imsOrg": org_id,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "createdClient": self.created_client,
            "createdUser": f"{self.created_client}@AdobeID",
            # Guess: Catalog's updatedUser names whoever changed the batch last (a REVERT's caller).
            "updatedUser": f"{self.updated_client or self.created_client}@AdobeID",
            "relatedObjects": [{"type": "dataSet", "id": self.dataset_id}, *(dict(r) for r in self.related)],
            "inputFormat": dict(self.input_format),
            "tags": dict(self.tags),
            "version": f"1.0.{self.version}",
        }
        if self.external_id is not None:
            body["externalId"] = self.external_id
        if self.replay is not None:
            body["replay"] = self.replay
        for key in ("started", "completed"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.metrics:
            body["metrics"] = dict(self.metrics)
            body["recordCount"] = self.metrics.get("outputRecordCount", 0)
            body["failedRecordCount"] = self.metrics.get("failedRecordCount", 0)
            if "inputByteSize" in self.metrics:
                body["size"] = self.metrics["inputByteSize"]
        if self.errors:
            body["errors"] = [dict(e) for e in self.errors]
        return body

    def touch(self, now_ms: int) -> None:
        self.updated = now_ms
        self.version += 1


@dataclass
class Catalog:
    """Datasets and batches of one sandbox."""

    datasets: dict[str, Dataset] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)

    def last_batch(self, dataset_id: str, status: str | None = None) -> Batch | None:
        candidates = [
            b
            for b in self.batches.values()
            if b.dataset_id == dataset_id and (status is None or b.status == status)
        ]
        return max(candidates, key=lambda b: (b.created, b.id)) if candidates else None

    def dataset_batches(self, dataset_id: str) -> list[Batch]:
        return sorted(
            (b for b in self.batches.values() if b.dataset_id == dataset_id), key=lambda b: (b.created, b.id)
        )
