"""Catalog Service (https://developer.adobe.com/experience-platform-apis/references/catalog/): datasets and
batches under ``/data/foundation/catalog``."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from starlette.responses import Response

from aep_emulator import xdm
from aep_emulator.catalog import Batch, Dataset
from aep_emulator.errors import ServiceError
from aep_emulator.filters import (
    FilterError,
    PatchError,
    apply_json_patch,
    apply_property_filters,
    sort_items,
)
from aep_emulator.rest.common import Body, Call, Endpoint, ok

log = logging.getLogger("aep_emulator.catalog")
PREFIX = "/data/foundation/catalog"
JSON = ("application/json",)
# Query parameters that steer a listing rather than filter on a property of the same name.
RESERVED = {"limit", "start", "orderBy", "properties", "property", "tags", "requestDataSource"}


def error(status: int, number: int, detail: str, title: str = "Bad request") -> ServiceError:
    # Guess: Catalog's problem-details code numbers are not in the sources read.
    return ServiceError(status, f"CAT-{number}-{status}", title, detail)


def _dataset(call: Call, dataset_id: str) -> Dataset:
    dataset = call.sandbox.catalog.datasets.get(dataset_id)
    if dataset is None:
        raise error(
            404, 1404, f"Dataset {dataset_id} was not found in sandbox {call.sandbox.name}", "Not found"
        )
    return dataset


def dataset_json(call: Call, dataset: Dataset) -> dict:
    return dataset.to_json(
        call.state.settings.org_id, call.client_id, call.sandbox.catalog.last_batch(dataset.id)
    )


def _project(call: Call, body: dict) -> dict:
    """``properties=a,b``: only those top-level keys."""
    wanted = call.param("properties")
    if not wanted:
        return body
    keys = [k.strip() for k in wanted.split(",") if k.strip()]
    return {k: body[k] for k in keys if k in body}


def _simple_filter(value: Any, spec: str) -> bool:
    """``name=a,b`` (any of) and ``name=!a`` (not a)."""
    options = [o.strip() for o in spec.split(",")]
    negated = [o[1:] for o in options if o.startswith("!")]
    positive = [o for o in options if not o.startswith("!")]
    text = str(value)
    if negated and text in negated:
        return False
    return not positive or text in positive


def _tags_filter(tags: dict, spec: str) -> bool:
    """``tags=k:v,k2:*``: every term must match (AND)."""
    for term in spec.split(","):
        key, _, value = term.partition(":")
        values = tags.get(key.strip())
        if values is None or (value.strip() not in ("", "*") and value.strip() not in values):
            return False
    return True


def _listing(call: Call, items: list[tuple[str, dict]], special: dict[str, Any] | None = None) -> Response:
    """Filter, sort, page and key by id (Catalog lists have no envelope)."""
    limit = call.int_param("limit", 20, minimum=1, maximum=100, service="CAT")
    start = call.int_param("start", 0, service="CAT")
    special = special or {}
    try:
        rows = [dict(body, _id=oid) for oid, body in items]
        rows = apply_property_filters(rows, call.query.getlist("property"))
        for key, spec in call.query.multi_items():
            if key in RESERVED:
                continue
            if key in special:
                rows = [r for r in rows if special[key](r, spec)]
            else:
                rows = [r for r in rows if key in r and _simple_filter(r[key], spec)]
        if call.param("tags"):
            rows = [r for r in rows if _tags_filter(r.get("tags") or {}, call.param("tags"))]
        rows = sort_items(rows, call.param("orderBy"))
    except FilterError as exc:
        raise error(400, 1400, str(exc)) from None
    page = rows[start : start + limit]
    return ok({r.pop("_id"): _project(call, r) for r in page})


# -- datasets ------------------------------------------------------------------------------
def _data_behavior(schema: dict[str, Any]) -> str:
    """A dataset's ``classification.dataBehavior``: the behaviour its schema's class extends."""
    extends = schema.get("meta:extends") or []
    if xdm.TIME_SERIES_BEHAVIOR in extends:
        return "time-series"
    return "record" if xdm.RECORD_BEHAVIOR in extends else "adhoc"


def create_dataset(call: Call) -> Response:
    body = call.json()
    if not isinstance(body, dict):
        raise error(400, 1400, "the request body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise error(400, 1401, "'name' is required")
    ref = body.get("schemaRef")
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
        raise error(400, 1402, "'schemaRef.id' is required (schema $id or meta:altId)")
    registry = call.sandbox.registry
    if ref["id"] in (xdm.UNION_ID, xdm.UNION_ALT_ID):
        schema_id, union, behavior = xdm.UNION_ID, True, "record"
    else:
        schema = registry.find("schemas", ref["id"])
        if schema is None:
            raise error(400, 1403, f"schemaRef.id {ref['id']} is not a schema of sandbox {call.sandbox.name}")
        schema_id, union, behavior = schema.id, False, _data_behavior(schema.body)
    tags = body.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
        raise error(400, 1405, "'tags' must map tag names to arrays of strings")
    if any(k.startswith("adobe") for k in tags):
        raise error(400, 1406, "tags starting with 'adobe' are reserved for Adobe")
    extra = {
        k: v for k, v in body.items() if k not in ("name", "description", "schemaRef", "tags", "dataSourceId")
    }
    data_source = body.get("dataSourceId")
    if data_source is not None and (isinstance(data_source, bool) or not isinstance(data_source, int)):
        # Guess at the code: Catalog's spec types dataSourceId integer; the answer to another type is
        # not documented.
        raise error(400, 1409, f"'dataSourceId' must be an integer, got {data_source!r}")
    if call.param("requestDataSource", "").lower() == "true" and data_source is None:
        data_source = secrets.randbelow(900_000) + 100_000  # an integer, as Catalog's spec types it
    dataset = call.state.create_dataset(
        call.sandbox,
        name=name,
        schema_id=schema_id,
        content_type=ref.get("contentType") or "application/vnd.adobe.xed+json;version=1",
        has_table=union,
        now_ms=call.state.now_ms(),
        description=str(body.get("description") or ""),
        tags=tags,
        extra=extra,
        data_source_id=data_source,
        data_behavior=behavior,
    )
    log.info("dataset %s %r created in %s (table %s)", dataset.id, name, call.sandbox.name, dataset.table)
    return ok([f"@/dataSets/{dataset.id}"], 201, {"Location": f"{PREFIX}/dataSets/{dataset.id}"})


def get_dataset(call: Call) -> Response:
    dataset = _dataset(call, call.path_params["id"])
    return ok({dataset.id: _project(call, dataset_json(call, dataset))})


def list_datasets(call: Call) -> Response:
    return _listing(call, [(d.id, dataset_json(call, d)) for d in call.sandbox.catalog.datasets.values()])


def patch_dataset(call: Call) -> Response:
    dataset = _dataset(call, call.path_params["id"])
    editable = {"name": dataset.name, "description": dataset.description, "tags": dict(dataset.tags)}

    def allowed(path: str) -> bool:
        return path in ("/name", "/description") or (
            path.startswith("/tags/") and not path.startswith("/tags/adobe")
        )

    try:
        patched = apply_json_patch(editable, call.json(), allowed)
    except PatchError as exc:
        raise error(400, 1407, f"invalid JSON Patch: {exc}") from None
    tags = patched.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
        raise error(400, 1405, "'tags' must map tag names to arrays of strings")
    dataset.name, dataset.description, dataset.tags = str(patched["name"]), str(patched["description"]), tags
    dataset.updated = call.state.now_ms()
    log.info("dataset %s patched", dataset.id)
    return ok([f"@/dataSets/{dataset.id}"])


def delete_dataset(call: Call) -> Response:
    dataset = _dataset(call, call.path_params["id"])
    call.state.delete_dataset(call.sandbox, dataset)
    log.info("dataset %s deleted", dataset.id)
    return ok([f"@/dataSets/{dataset.id}"])


# -- batches -------------------------------------------------------------------------------
def _batch(call: Call, batch_id: str) -> Batch:
    batch = call.sandbox.catalog.batches.get(batch_id)
    if batch is None:
        raise error(404, 1404, f"Batch {batch_id} was not found in sandbox {call.sandbox.name}", "Not found")
    return batch


def get_batch(call: Call) -> Response:
    batch = _batch(call, call.path_params["id"])
    return ok({batch.id: _project(call, batch.to_json(call.state.settings.org_id))})


def _time_bound(op: str) -> Any:
    def check(row: dict, spec: str) -> bool:
        try:
            bound = int(spec)
        except ValueError:
            raise FilterError(
                f"createdAfter/createdBefore must be epoch milliseconds, got {spec!r}"
            ) from None
        return row["created"] > bound if op == ">" else row["created"] < bound

    return check


def list_batches(call: Call) -> Response:
    org = call.state.settings.org_id
    special = {
        "dataSet": lambda row, spec: any(o["id"] in spec.split(",") for o in row["relatedObjects"]),
        "createdAfter": _time_bound(">"),
        "createdBefore": _time_bound("<"),
    }
    return _listing(call, [(b.id, b.to_json(org)) for b in call.sandbox.catalog.batches.values()], special)


def last_batches(call: Call) -> Response:
    dataset_id = call.param("dataSetId")
    if not dataset_id:
        raise error(400, 1408, "query parameter dataSetId is required")
    catalog = call.sandbox.catalog
    _dataset(call, dataset_id)
    last, ok_batch, bad = (
        catalog.last_batch(dataset_id),
        catalog.last_batch(dataset_id, "success"),
        catalog.last_batch(dataset_id, "failed"),
    )
    # Guess: shape of the lastBatches answer (id-keyed like other Catalog reads).
    return ok(
        {
            dataset_id: {
                "lastBatchId": last.id if last else None,
                "lastBatchStatus": last.status if last else None,
                "lastSuccessfulBatchId": ok_batch.id if ok_batch else None,
                "lastFailedBatchId": bad.id if bad else None,
            }
        }
    )


ENDPOINTS = [
    Endpoint(
        "POST", "/dataSets", "catalog.create_dataset", create_dataset, body=Body.BYTES, content_types=JSON
    ),
    Endpoint("GET", "/dataSets", "catalog.list_datasets", list_datasets),
    Endpoint("GET", "/dataSets/{id}", "catalog.get_dataset", get_dataset),
    Endpoint(
        "PATCH",
        "/dataSets/{id}",
        "catalog.patch_dataset",
        patch_dataset,
        body=Body.BYTES,
        content_types=("application/json-patch+json", "application/json"),
    ),
    Endpoint("DELETE", "/dataSets/{id}", "catalog.delete_dataset", delete_dataset),
    Endpoint("GET", "/batches", "catalog.list_batches", list_batches),
    Endpoint("GET", "/batches/{id}", "catalog.get_batch", get_batch),
    Endpoint("GET", "/lastBatches", "catalog.last_batches", last_batches),
]
