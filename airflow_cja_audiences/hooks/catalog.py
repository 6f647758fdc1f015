"""Catalog Service: datasets (with their Query Service table name) and batches."""

from __future__ import annotations

import logging
from typing import Any

from airflow_cja_audiences.errors import AepConfigError, AepError
from airflow_cja_audiences.hooks.platform import AdobePlatformHook, path_segment
from airflow_cja_audiences.models import Batch, Dataset
from airflow_cja_audiences.xdm import schema_uri

log = logging.getLogger(__name__)

BASE = "/data/foundation/catalog"
PAGE = 100  # Catalog's maximum page size


def _id_keyed(payload: Any, model: type[Dataset] | type[Batch]) -> list[Any]:
    """Catalog answers ``{"<id>": {...}}`` maps rather than lists."""
    if not isinstance(payload, dict):
        return []
    return [
        model.model_validate({**obj, "id": obj_id})
        for obj_id, obj in payload.items()
        if isinstance(obj, dict)
    ]


def _one(payload: Any, model: type[Any], what: str, obj_id: str) -> Any:
    objects = _id_keyed(payload, model)
    if not objects:
        raise AepError(f"Catalog returned no object for {what} {obj_id}")
    return objects[0]


def _created_id(payload: Any) -> str:
    """Create answers ``["@/dataSets/<id>"]`` (case varies): take the last path segment."""
    if isinstance(payload, list) and payload and isinstance(payload[0], str):
        return payload[0].rsplit("/", 1)[-1]
    raise AepError(f"unexpected Catalog create answer: {payload!r}"[:300])


class CatalogHook(AdobePlatformHook):
    """Catalog Service API (datasets and batches)."""

    hook_name = "Adobe Experience Platform Catalog"

    # ------------------------------------------------------------------ datasets

    def get_dataset(self, dataset_id: str) -> Dataset:
        payload = self.request_json(
            "GET", f"{BASE}/dataSets/{path_segment(dataset_id)}", route="catalog.get_dataset"
        )
        return _one(payload, Dataset, "dataset", dataset_id)

    def find_datasets_by_name(self, name: str) -> list[Dataset]:
        """Datasets whose name is exactly ``name`` (names are not guaranteed unique)."""
        found: list[Dataset] = []
        start = 0
        guard = self.page_guard("catalog.list_datasets")
        while True:
            guard.next_page(start)
            payload = self.request_json(
                "GET",
                f"{BASE}/dataSets",
                route="catalog.list_datasets",
                params={"property": f"name=={name}", "limit": PAGE, "start": start},
            )
            page = _id_keyed(payload, Dataset)
            guard.seen(d.id for d in page)
            found += [d for d in page if d.name == name]  # the filter is a hint; compare exactly
            if len(page) < PAGE:
                return found
            start += PAGE

    def find_dataset(self, name: str) -> Dataset | None:
        matches = self.find_datasets_by_name(name)
        if len(matches) > 1:
            ids = ", ".join(sorted(d.id for d in matches))
            raise AepConfigError(
                f"{len(matches)} datasets are named {name!r} ({ids}); rename or delete "
                f"the extra ones, or configure another name"
            )
        return matches[0] if matches else None

    def create_dataset(
        self,
        name: str,
        *,
        schema_id: str,
        description: str = "",
        tags: dict[str, list[str]] | None = None,
        schema_content_type: str = "application/vnd.adobe.xed+json;version=1",
    ) -> Dataset:
        body: dict[str, Any] = {
            "name": name,
            "description": description,
            "schemaRef": {"id": schema_id, "contentType": schema_content_type},
            "fileDescription": {"persisted": True, "containerFormat": "parquet", "format": "parquet"},
        }
        if tags:
            body["tags"] = tags

        def create() -> Dataset:
            payload = self.request_json(
                "POST",
                f"{BASE}/dataSets",
                route="catalog.create_dataset",
                params={"requestDataSource": "true"},
                json=body,
            )
            return self.get_dataset(_created_id(payload))

        dataset = self.create_once(
            f"create dataset {name!r}",
            create,
            lambda: self.find_dataset(name),
            route="catalog.create_dataset",
        )
        log.info("Created dataset %r (%s)", name, dataset.id)
        return dataset

    def ensure_dataset(
        self,
        name: str,
        *,
        schema_id: str,
        accepted_schema_ids: tuple[str, ...] = (),
        description: str = "",
        tags: dict[str, list[str]] | None = None,
    ) -> tuple[Dataset, bool]:
        """Find the dataset by name or create it; returns (dataset, created).

        An existing dataset on another schema is an error rather than silently reused.
        """
        existing = self.find_dataset(name)
        if existing is None:
            return self.create_dataset(name, schema_id=schema_id, description=description, tags=tags), True
        actual = (existing.schema_ref or {}).get("id") or ""
        if schema_uri(actual) not in {schema_uri(s) for s in (schema_id, *accepted_schema_ids)}:
            raise AepConfigError(
                f"dataset {name!r} ({existing.id}) exists with schema {actual!r}, not "
                f"{schema_id!r}; configure another dataset name"
            )
        log.info("Using existing dataset %r (%s)", name, existing.id)
        return existing, False

    # ------------------------------------------------------------------ batches

    def get_batch(self, batch_id: str) -> Batch:
        payload = self.request_json(
            "GET", f"{BASE}/batches/{path_segment(batch_id)}", route="catalog.get_batch"
        )
        return _one(payload, Batch, "batch", batch_id)

    async def aget_batch(self, batch_id: str) -> Batch:
        payload = await self.arequest_json(
            "GET", f"{BASE}/batches/{path_segment(batch_id)}", route="catalog.get_batch"
        )
        return _one(payload, Batch, "batch", batch_id)

    def wait_for_batch(
        self, batch_id: str, *, deadline: float, poll_interval: float = 30.0, first: Batch | None = None
    ) -> Batch:
        """Poll the batch until it is terminal (see ``Batch.outcome``) and return it; the synchronous
        twin of ``BatchTrigger``. ``deadline`` (epoch seconds) is required: past it,
        :class:`~airflow_cja_audiences.errors.AepWaitTimeoutError`."""
        from airflow_cja_audiences.waits import wait_until_terminal

        return wait_until_terminal(
            lambda: self.get_batch(batch_id),
            status_type=Batch.STATUS,
            what=f"batch {batch_id}",
            deadline=deadline,
            poll_interval=poll_interval,
            first=first,
        )

    def list_batches(
        self,
        dataset_id: str,
        *,
        status: str | None = None,
        created_after_ms: int | None = None,
        max_items: int = 10_000,
    ) -> list[Batch]:
        """Batches of a dataset, newest first."""
        params: dict[str, Any] = {"dataSet": dataset_id, "orderBy": "desc:created", "limit": PAGE}
        if status:
            params["status"] = status
        if created_after_ms is not None:
            params["createdAfter"] = created_after_ms
        found: list[Batch] = []
        start = 0
        guard = self.page_guard("catalog.list_batches")
        while len(found) < max_items:
            guard.next_page(start)
            payload = self.request_json(
                "GET", f"{BASE}/batches", route="catalog.list_batches", params={**params, "start": start}
            )
            page = _id_keyed(payload, Batch)
            guard.seen(b.id for b in page)
            found += page
            if len(page) < PAGE:
                break
            start += PAGE
        found.sort(key=lambda b: b.created or 0, reverse=True)
        return found
