"""Batch Ingestion (https://developer.adobe.com/experience-platform-apis/references/batch-ingestion/) under ``/data/foundation/import``, and the row-error
diagnostics of Data Access (``/data/foundation/export/batches/{id}/meta``).

State machine: ``loading`` (uploads open) -> COMPLETE -> ``processing`` -> ``success`` | ``failed``;
ABORT while loading/processing -> ``aborted``; FAIL while loading -> ``failed``; REVERT of a
``success`` batch -> ``inactive`` (its records leave the dataset).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path, PurePosixPath

from starlette.responses import Response

from aep_emulator import catalog as cat
from aep_emulator import lifecycle, xdm
from aep_emulator.catalog import Batch, UploadedFile
from aep_emulator.errors import NotModelled, ServiceError
from aep_emulator.rest.common import Body, Call, Endpoint, empty, ok

log = logging.getLogger("aep_emulator.ingestion")
PREFIX = "/data/foundation/import"
OCTET = ("application/octet-stream",)
FILES = "/batches/{batch}/datasets/{dataset}/files/{path:path}"
RANGE = re.compile(r"bytes\s+(\d+)-(\d+)(?:/(\d+|\*))?$")


def error(status: int, number: int, detail: str, title: str = "Bad request") -> ServiceError:
    # Guess: Batch Ingestion's problem-details code numbers are not in the sources read.
    return ServiceError(status, f"INGEST-{number}-{status}", title, detail)


def _batch(call: Call, batch_id: str) -> Batch:
    batch = call.sandbox.catalog.batches.get(batch_id)
    # Guess: a batch a Query Service batch query wrote can be acted on (REVERTed) like an ingested one;
    # Adobe documents REVERT for a dataset's batches without excluding them. Export batches stay out.
    if batch is None or batch.origin not in ("ingestion", "query"):
        raise error(404, 1404, f"Batch {batch_id} was not found in sandbox {call.sandbox.name}", "Not found")
    return batch


def _open_batch(call: Call) -> Batch:
    """The batch of a file route; it must be loading and belong to the dataset in the path."""
    batch = _batch(call, call.path_params["batch"])
    if batch.origin != "ingestion":
        raise error(
            400, 1426, f"Batch {batch.id} was written by a Query Service batch query; it takes no files"
        )  # guess
    if batch.dataset_id != call.path_params["dataset"]:
        raise error(
            404,
            1405,
            f"Batch {batch.id} does not belong to dataset {call.path_params['dataset']}",
            "Not found",
        )
    if batch.status != cat.LOADING:
        raise error(
            400, 1410, f"Batch {batch.id} is {batch.status}; files can only be uploaded while loading"
        )
    return batch


def _file_path(call: Call) -> str:
    raw = call.path_params["path"]
    parts = PurePosixPath(raw).parts
    if not raw or raw.startswith("/") or any(p in ("..", ".") for p in parts):
        raise error(400, 1411, f"invalid file path {raw!r}")
    return raw


def _disk(call: Call, batch: Batch, path: str) -> Path:
    return call.state.files_dir / batch.id / "files" / path


# -- batches ------------------------------------------------------------------------------------
def _batch_rate(call: Call) -> None:
    """Batch ingestion allows 138 new batches per minute per user (reference 7.6); the emulator's
    limit is ``knobs.batch_create_rate_limit`` (0 = none). Guess: the code and Retry-After of the 429."""
    limit = call.state.knobs.batch_create_rate_limit
    limiter = call.state.batch_create_limiter
    if limit > 0 and not limiter.allow(call.client_id, limit):
        retry_after = limiter.retry_after(call.client_id, limit)
        call.state.count_throttled("ingestion.create_batch")
        raise ServiceError(
            429,
            "INGEST-1429-429",
            "Too many requests",
            f"more than {limit} batches created in the last minute by this client; retry later",
            headers={"Retry-After": str(retry_after)},
        )


def create_batch(call: Call) -> Response:
    body = call.json()
    if not isinstance(body, dict):
        raise error(400, 1400, "the request body must be a JSON object")
    dataset_id = body.get("datasetId")
    if not isinstance(dataset_id, str) or dataset_id not in call.sandbox.catalog.datasets:
        raise error(400, 1401, f"datasetId {dataset_id!r} is not a dataset of sandbox {call.sandbox.name}")
    fmt = body.get("inputFormat")
    if not isinstance(fmt, dict) or not isinstance(fmt.get("format"), str):
        raise error(400, 1402, "inputFormat.format is required (json)")
    if fmt["format"].lower() != "json":
        raise NotModelled(f"batch ingestion of {fmt['format']} files (only json is modelled)")
    # The docs say partialIngestionPercent; aepp sends partialIngestionPercentage (both honoured: guess).
    partial = body.get("partialIngestionPercent", body.get("partialIngestionPercentage"))
    if partial is not None and (not isinstance(partial, (int, float)) or not 0 <= partial <= 100):
        raise error(400, 1403, "partialIngestionPercent must be a number within [0, 100]")
    diagnostics = bool(body.get("enableErrorDiagnostics", False))
    tags = dict(body.get("tags") or {})
    if diagnostics:
        tags["acp_enableErrorDiagnostics"] = True
    if partial is not None:
        tags["acp_partialIngestionPercent"] = partial
    replay = body.get("replay")
    if replay is not None:
        replay = _replay(call, replay, dataset_id)
    _batch_rate(call)  # a valid request counts against the rate
    now_ms = call.state.now_ms()
    batch = Batch(
        id=cat.new_batch_id(),
        sandbox=call.sandbox.name,
        dataset_id=dataset_id,
        origin="ingestion",
        status=cat.LOADING,
        created=now_ms,
        updated=now_ms,
        created_client=call.client_id,
        input_format={"format": "json", **{k: v for k, v in fmt.items() if k != "format"}},
        external_id=body.get("externalId"),
        replay=replay,
        tags=tags,
        partial_percent=None if partial is None else float(partial),
        diagnostics=diagnostics,
    )
    call.sandbox.catalog.batches[batch.id] = batch
    log.info("batch %s created for dataset %s", batch.id, dataset_id)
    return ok(batch.to_json(call.state.settings.org_id), 201)


def _replay(call: Call, replay: object, dataset_id: str) -> dict:
    """Check a create's ``replay`` section: the batches it replaces (batch ingestion API guide, "Replay a
    batch"; the docs write ids parameterised as ``"${id}"`` and the answer echoes them bare).

    Guess (not documented): every predecessor must be a batch of the same dataset whose records are
    live (``success``); anything else (unknown, another dataset's, still loading, failed, already
    inactive) is refused with 400 when the batch is created, rather than ignored, because replaying
    "nothing" would silently leave two snapshots live. The error code and wording are guesses too.
    ``predecessorsByExternalId`` (in Catalog's spec) is not modelled: 501.
    """
    if (
        not isinstance(replay, dict)
        or not isinstance(replay.get("predecessors"), list)
        or not replay["predecessors"]
        or not all(isinstance(p, str) and p for p in replay["predecessors"])
    ):
        if isinstance(replay, dict) and "predecessorsByExternalId" in replay:
            raise NotModelled("replay.predecessorsByExternalId (replay.predecessors is modelled)")
        raise error(
            400, 1406, 'replay must be {"predecessors": [one or more batch ids], "reason": "replace"}'
        )
    ids = [p[2:-1] if p.startswith("${") and p.endswith("}") else p for p in replay["predecessors"]]
    for old_id in ids:
        old = call.sandbox.catalog.batches.get(old_id)
        if old is None:
            raise error(
                400, 1407, f"replay predecessor {old_id} is not a batch of sandbox {call.sandbox.name}"
            )
        if old.dataset_id != dataset_id:
            raise error(
                400,
                1408,
                f"replay predecessor {old_id} belongs to dataset {old.dataset_id}, not {dataset_id}",
            )
        if old.status != cat.SUCCESS:
            raise error(
                400,
                1409,
                f"replay predecessor {old_id} is {old.status}; only a successful batch can be replaced",
            )
    return {"predecessors": ids, "reason": replay.get("reason", "replace")}


def batch_action(call: Call) -> Response:
    action = (call.param("action") or "").upper()
    if action == "REVERT":
        return _revert(call)
    batch = _batch(call, call.path_params["batch"])
    if action == "COMPLETE":
        if batch.status == cat.LOADING:
            incomplete = [p for p, f in batch.files.items() if not f.complete]
            if incomplete:
                raise error(400, 1420, f"large file(s) {incomplete} were initialized but not completed")
            dataset = call.sandbox.catalog.datasets[batch.dataset_id]
            schema = _record_schema(call, dataset.schema_id)
            lifecycle.complete_batch(call.state, call.sandbox, batch, schema)
            log.info("batch %s COMPLETE: %d file(s) queued for processing", batch.id, len(batch.files))
        elif batch.status not in cat.IN_PROGRESS | {cat.SUCCESS}:  # completing again is a no-op success
            raise error(400, 1421, f"Batch {batch.id} is {batch.status} and cannot be completed")
    elif action == "ABORT":
        if batch.status == cat.ABORTED:
            pass  # Guess: repeating ABORT converges (a retry after a lost answer must not fail)
        elif batch.status not in cat.IN_PROGRESS | {cat.LOADING}:
            raise error(
                400, 1422, f"Batch {batch.id} is {batch.status}; ABORT is only possible while in progress"
            )
        else:
            batch.status, batch.work = cat.ABORTED, None
            batch.touch(call.state.now_ms())
            log.info("batch %s aborted", batch.id)
    elif action == "FAIL":
        if batch.status != cat.LOADING:
            raise error(400, 1423, f"Batch {batch.id} is {batch.status}; FAIL is only possible while loading")
        batch.status = cat.FAILED
        batch.errors = [{"code": "INGEST-1000-400", "description": "Batch marked failed by the client"}]
        batch.touch(call.state.now_ms())
    else:
        raise error(400, 1425, f"action must be COMPLETE, ABORT, FAIL or REVERT, got {action or 'nothing'!r}")
    return empty(200)


def _revert(call: Call) -> Response:
    """REVERT: a successful batch becomes ``inactive`` and its records leave the dataset.

    Also for the batches an export job wrote into a profile-union dataset (guess: the docs describe
    REVERT as deleting any mastered batch, and the UI deletes export batches like any other; Catalog
    answers for them in the emulator are otherwise read-only). Repeating it converges (guess, like
    COMPLETE).
    """
    batch = call.sandbox.catalog.batches.get(call.path_params["batch"])
    if batch is None:
        raise error(
            404,
            1404,
            f"Batch {call.path_params['batch']} was not found in sandbox {call.sandbox.name}",
            "Not found",
        )
    if batch.status == cat.INACTIVE:
        return empty(200)
    if batch.status != cat.SUCCESS:
        raise error(400, 1424, f"Batch {batch.id} is {batch.status}; only a successful batch can be reverted")
    lifecycle.revert_batch(call.state, call.sandbox, batch, by_client=call.client_id)
    return empty(200)


def _record_schema(call: Call, schema_id: str) -> xdm.RecordSchema:
    if schema_id == xdm.UNION_ID:
        union = xdm.union_schema(call.state.settings.tenant, call.state.settings.org_id)
        return xdm.RecordSchema(
            properties=union["properties"], required=(), tenant=call.state.settings.tenant
        )
    return call.sandbox.registry.record_schema(schema_id)


# -- files --------------------------------------------------------------------------------------
def put_file(call: Call) -> Response:
    batch, path = _open_batch(call), _file_path(call)
    disk = _disk(call, batch, path)
    disk.parent.mkdir(parents=True, exist_ok=True)
    existed = path in batch.files
    shutil.move(str(call.body_file), disk)
    call.body_file = None
    batch.files[path] = UploadedFile(path=path, disk=disk, size=disk.stat().st_size)
    batch.touch(call.state.now_ms())
    log.debug("batch %s: file %s uploaded (%d bytes)", batch.id, path, batch.files[path].size)
    return empty(200 if existed else 201)


def file_action(call: Call) -> Response:
    batch, path = _open_batch(call), _file_path(call)
    action = (call.param("action") or "").upper()
    if action == "INITIALIZE":
        disk = _disk(call, batch, path)
        disk.parent.mkdir(parents=True, exist_ok=True)
        disk.write_bytes(b"")
        batch.files[path] = UploadedFile(path=path, disk=disk, large=True, complete=False)
        return empty(201)
    if action == "COMPLETE":
        entry = batch.files.get(path)
        if entry is None or not entry.large:
            raise error(
                404, 1430, f"file {path} was not initialized as a large file in batch {batch.id}", "Not found"
            )
        expected = 0
        for start, end in sorted(entry.ranges):
            if start != expected:
                what = "gap" if start > expected else "overlap"
                raise error(
                    400,
                    1431,
                    f"file {path}: the uploaded ranges have a {what} at byte {min(start, expected)} "
                    f"(expected the next chunk to start at {expected}, got {start})",
                )
            expected = end + 1
        if expected == 0:
            raise error(400, 1432, f"file {path}: no chunk was uploaded")
        entry.complete, entry.size = True, expected
        return empty(201)  # Guess: the spec lists 200 and 201; the file now exists
    raise error(400, 1433, f"action must be INITIALIZE or COMPLETE, got {action or 'nothing'!r}")


def patch_file(call: Call) -> Response:
    batch, path = _open_batch(call), _file_path(call)
    entry = batch.files.get(path)
    if entry is None or not entry.large or entry.complete:
        raise error(
            400, 1434, f"file {path} is not an initialized, incomplete large file of batch {batch.id}"
        )
    match = RANGE.match(call.headers.get("content-range", "").strip())
    if not match:
        raise error(400, 1435, "Content-Range must be 'bytes {start}-{end}' (inclusive)")
    start, end = int(match.group(1)), int(match.group(2))
    size = call.body_file.stat().st_size
    if end < start or end - start + 1 != size:
        raise error(400, 1436, f"Content-Range bytes {start}-{end} does not match the body size {size}")
    with entry.disk.open("r+b") as out, call.body_file.open("rb") as chunk:
        out.seek(start)
        shutil.copyfileobj(chunk, out)
    if (start, end) not in entry.ranges:  # a retried chunk rewrites the same bytes: not an overlap
        entry.ranges.append((start, end))
    return ok({"name": path, "sizeInBytes": size})


def head_file(call: Call) -> Response:
    batch = _batch(call, call.path_params["batch"])
    entry = batch.files.get(_file_path(call))
    if entry is None:
        return empty(404)
    received = sum(e - s + 1 for s, e in entry.ranges) if entry.large else entry.size
    # Guess: the status headers of HEAD are not documented beyond "upload status".
    return empty(200, {"Content-Length": str(received), "x-upload-complete": str(entry.complete).lower()})


# -- Data Access: diagnostics ---------------------------------------------------------------------
def batch_meta(call: Call) -> Response:
    batch = call.sandbox.catalog.batches.get(call.path_params["batch"])
    if batch is None:
        raise error(404, 1404, f"Batch {call.path_params['batch']} was not found", "Not found")
    path = (call.param("path") or "").strip("/")
    base = f"https://{call.headers.get('host', 'platform.adobe.io')}/data/foundation/export/batches/{batch.id}/meta"
    if path == "input_files":
        files = [
            {"name": p, "length": str(f.size), "_links": {"self": {"href": f"{base}?path=input_files/{p}"}}}
            for p, f in sorted(batch.files.items())
        ]
        return ok({"data": files, "_page": {"limit": 100, "count": len(files)}})
    if path == "row_errors":
        directory = batch.row_errors_dir
        names = sorted(p.name for p in directory.iterdir()) if directory and directory.exists() else []
        data = [
            {
                "name": n,
                "length": str((directory / n).stat().st_size),
                "_links": {"self": {"href": f"{base}?path=row_errors%2F{n}"}},
            }
            for n in names
        ]
        return ok({"data": data, "_page": {"limit": 100, "count": len(data)}})
    if path.startswith("row_errors/"):
        name = path.split("/", 1)[1]
        target = batch.row_errors_dir / name if batch.row_errors_dir else None
        if target is None or "/" in name or not target.is_file():
            raise error(404, 1440, f"no diagnostics file {name} for batch {batch.id}", "Not found")
        return Response(target.read_bytes(), media_type="application/json")
    raise NotModelled(
        f"batch meta path {path!r} (input_files, row_errors and row_errors/<file> are modelled)"
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/batches",
        "ingestion.create_batch",
        create_batch,
        body=Body.BYTES,
        content_types=("application/json",),
    ),
    Endpoint("POST", "/batches/{batch}", "ingestion.batch_action", batch_action),
    Endpoint("PUT", FILES, "ingestion.put_file", put_file, body=Body.FILE, content_types=OCTET),
    Endpoint("POST", FILES, "ingestion.file_action", file_action),
    Endpoint("PATCH", FILES, "ingestion.patch_file", patch_file, body=Body.FILE, content_types=OCTET),
    Endpoint("HEAD", FILES, "ingestion.head_file", head_file),
]
EXPORT_PREFIX = "/data/foundation/export"
EXPORT_ENDPOINTS = [
    Endpoint("GET", "/batches/{batch}/meta", "export.batch_meta", batch_meta),
]
