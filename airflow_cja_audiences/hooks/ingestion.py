"""Batch Ingestion: create a batch, upload JSON Lines files (small or chunked), complete, abort, revert."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from airflow_cja_audiences.errors import AepBadRequestError, AepConfigError
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.platform import path_segment
from airflow_cja_audiences.models import Batch, BatchStatus

log = logging.getLogger(__name__)

BASE = "/data/foundation/import"
SMALL_FILE_LIMIT = 256 * 1024 * 1024  # larger files must use the chunked (large file) upload
DEFAULT_CHUNK = 64 * 1024 * 1024
OCTET = "application/octet-stream"
BatchAction = Literal["COMPLETE", "ABORT", "REVERT", "FAIL"]


def _file_path(name: str) -> str:
    # The file path inside the batch may contain '/' (partitions); quote each segment on its own.
    return "/".join(path_segment(part) for part in name.split("/"))


class BatchIngestionHook(CatalogHook):
    """Batch Ingestion API (with Catalog look-ups, since batches are read back through Catalog)."""

    hook_name = "Adobe Experience Platform Batch Ingestion"

    def create_batch(
        self,
        dataset_id: str,
        *,
        external_id: str,
        replay_predecessors: list[str] | None = None,
        partial_ingestion_percent: int | None = None,
    ) -> Batch:
        """Create a JSON Lines batch; ``external_id`` makes a lost create answer recoverable."""
        # Error diagnostics: without them AEP only says INGEST-1211-400, not which record failed or why.
        body: dict[str, Any] = {
            "datasetId": dataset_id,
            "inputFormat": {"format": "json", "isMultiLineJson": False},
            "externalId": external_id,
            "enableErrorDiagnostics": True,
        }
        if replay_predecessors:
            body["replay"] = {"predecessors": replay_predecessors, "reason": "replace"}
        if partial_ingestion_percent is not None:
            body["partialIngestionPercent"] = partial_ingestion_percent
        started_ms = int(time.time() * 1000) - 60_000

        def create() -> Batch:
            return Batch.model_validate(
                self.request_json("POST", f"{BASE}/batches", route="ingestion.create_batch", json=body)
            )

        def find() -> Batch | None:
            return self.find_batch(dataset_id, external_id=external_id, created_after_ms=started_ms)

        batch = self.create_once(
            f"create batch {external_id!r}", create, find, route="ingestion.create_batch"
        )
        log.info("Created batch %s in dataset %s (externalId %s)", batch.id, dataset_id, external_id)
        return batch

    def find_batch(
        self,
        dataset_id: str,
        *,
        external_id: str,
        created_after_ms: int | None = None,
        statuses: tuple[BatchStatus | str, ...] = (BatchStatus.LOADING,),
    ) -> Batch | None:
        """The newest batch of the dataset with this ``externalId`` in one of ``statuses`` (any case)."""
        wanted = {str(s).lower() for s in statuses}
        for batch in self.list_batches(dataset_id, created_after_ms=created_after_ms):
            if batch.external_id == external_id and batch.status.lower() in wanted:
                return batch
        return None

    def upload_file(
        self,
        batch_id: str,
        dataset_id: str,
        name: str,
        local_path: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        small_file_limit: int = SMALL_FILE_LIMIT,
    ) -> int:
        """Upload one file into the batch under ``name``; same name replaces (safe to retry).

        Files up to ``small_file_limit`` go in one PUT, larger ones in ``chunk_size`` parts.
        """
        size = local_path.stat().st_size
        url = f"{BASE}/batches/{path_segment(batch_id)}/datasets/{path_segment(dataset_id)}/files/{_file_path(name)}"
        if size == 0:
            raise AepConfigError(f"{local_path}: refusing to upload an empty file (AEP fails the batch)")
        if size <= small_file_limit:
            self.request("PUT", url, route="ingestion.put_file", data=local_path, content_type=OCTET)
        else:
            self._upload_large(url, local_path, size, chunk_size)
        log.info("Uploaded %s (%d bytes) to batch %s", name, size, batch_id)
        return size

    def _upload_large(self, url: str, local_path: Path, size: int, chunk_size: int) -> None:
        self.request(
            "POST", url, route="ingestion.initialize_file", params={"action": "INITIALIZE"}, idempotent=True
        )
        with local_path.open("rb") as handle:
            for start in range(0, size, chunk_size):
                handle.seek(start)
                chunk = handle.read(chunk_size)
                end = start + len(chunk) - 1  # inclusive, as in HTTP Content-Range
                self.request(
                    "PATCH",
                    url,
                    route="ingestion.patch_file",
                    data=chunk,
                    content_type=OCTET,
                    headers={"Content-Range": f"bytes {start}-{end}"},
                    idempotent=True,
                )
        self.request(
            "POST", url, route="ingestion.complete_file", params={"action": "COMPLETE"}, idempotent=True
        )

    def batch_action(self, batch_id: str, action: BatchAction) -> None:
        # COMPLETE is documented as safe to repeat; ABORT/REVERT converge to the same state.
        self.request(
            "POST",
            f"{BASE}/batches/{path_segment(batch_id)}",
            route=f"ingestion.{action.lower()}_batch",
            params={"action": action},
            idempotent=True,
        )
        log.info("Batch %s: %s sent", batch_id, action)

    async def abatch_action(self, batch_id: str, action: BatchAction) -> None:
        """Async twin of :meth:`batch_action` (inside ``async with hook.async_session()``)."""
        await self.arequest_json(
            "POST",
            f"{BASE}/batches/{path_segment(batch_id)}",
            route=f"ingestion.{action.lower()}_batch",
            params={"action": action},
            idempotent=True,
        )

    def complete_batch(self, batch_id: str) -> None:
        self.batch_action(batch_id, "COMPLETE")

    def abort_batch(self, batch_id: str) -> bool:
        """Abort a batch still in progress; False when it had already finished (nothing to abort)."""
        try:
            self.batch_action(batch_id, "ABORT")
            return True
        except AepBadRequestError as exc:
            log.warning("Batch %s could not be aborted: %s", batch_id, exc)
            return False

    def revert_batch(self, batch_id: str) -> None:
        """Remove a successful batch's data from its dataset (status becomes ``inactive``)."""
        self.batch_action(batch_id, "REVERT")

    def get_row_errors(self, batch_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Up to ``limit`` failed-record reasons from the batch's error diagnostics (may be empty)."""
        meta = f"/data/foundation/export/batches/{path_segment(batch_id)}/meta"
        try:
            listing = self.request_json("GET", meta, route="export.batch_meta", params={"path": "row_errors"})
        except AepBadRequestError:
            return []
        errors: list[dict[str, Any]] = []
        for entry in (listing or {}).get("data", []):
            name = entry.get("name")
            if not name or len(errors) >= limit:
                continue
            text = self.request(
                "GET", meta, route="export.batch_meta", params={"path": f"row_errors/{name}"}
            ).text
            import json

            for line in text.splitlines()[: limit - len(errors)]:
                try:
                    errors.append(json.loads(line))
                except ValueError:
                    errors.append({"_corrupt_record": line[:200]})
        return errors
