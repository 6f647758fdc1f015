"""The emulator's answers and the provider's requests, checked against Adobe's published API specs.

The pipeline's calls are driven through the real hooks (sync and async paths); a recorder wrapped
around the hooks' HTTP layer (``AdobePlatformHook._send`` / ``_asend``) keeps each exchange as it
left and came back. Every exchange is validated with :mod:`adobe_specs` against the operation of
Adobe's public spec (see :mod:`adobe_specs` for where the files come from). Mismatches matching a spec defect
documented in the specs' README are *doubts*: printed, and compared with :data:`KNOWN_DOUBTS`
(exactly: a new doubt or a vanished one both fail, so the list stays true). Any other mismatch fails.

Run: ``.venv/bin/python -m pytest tests/conformance -q -s`` (``-s`` shows the doubts).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_cja_audiences import DEFAULT_CONN_ID, xdm
from airflow_cja_audiences.config import AudienceSelector, OutputFields
from airflow_cja_audiences.errors import AepNotFoundError
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.cja import CjaHook
from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
from airflow_cja_audiences.hooks.platform import AdobePlatformHook, clear_token_cache
from airflow_cja_audiences.hooks.query_service import QueryServiceHook
from airflow_cja_audiences.hooks.schema_registry import SchemaRegistryHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import PROFILE_CLASS, PROFILE_UNION_ALT_ID, ExportJobRequest

from adobe_specs import DEFECTS, Finding, Recorded, SpecOracle, specs_dir
from polling import poll

ROOT = Path(__file__).resolve().parents[2]

# (defect, operation, side, where): every doubt the pipeline's calls raise today. Each defect is one
# the specs' README documents (Adobe's prose docs contradict the spec); see docs/ARCHITECTURE.md.
KNOWN_DOUBTS: set[tuple[str, str, str, str]] = {
    (
        "201-not-in-spec",
        "batch-ingestion.json POST /batches/{batchId}/datasets/{datasetId}/files/{filePath}",
        "response 201",
        "status",
    ),
    ("bare-200-batch-action", "batch-ingestion.json POST /batches/{batchId}", "response 200", "body"),
    (
        "bodiless-large-file-action",
        "batch-ingestion.json POST /batches/{batchId}/datasets/{datasetId}/files/{filePath}",
        "request",
        "header.Content-Type",
    ),
    (
        "boolean-batch-tags",
        "catalog.json GET /batches",
        "response 200",
        "$.{id}.tags.acp_enableErrorDiagnostics",
    ),
    (
        "boolean-batch-tags",
        "catalog.json GET /batches/{BATCH_ID}",
        "response 200",
        "$.{id}.tags.acp_enableErrorDiagnostics",
    ),
    (
        "cja-dimensions-paging-params",
        "cja.json GET /data/dataviews/{dataviewId}/dimensions",
        "request",
        "query.limit",
    ),
    (
        "cja-dimensions-paging-params",
        "cja.json GET /data/dataviews/{dataviewId}/dimensions",
        "request",
        "query.page",
    ),
    (
        "cja-lower-case-enum",
        "cja.json GET /data/dataviews/{dataViewId}",
        "response 200",
        "$.sessionDefinition[*].func",
    ),
    (
        "cja-lower-case-enum",
        "cja.json GET /data/dataviews/{dataViewId}",
        "response 200",
        "$.sessionDefinition[*].granularity",
    ),
    ("class-usage-object", "schema-registry.json GET /stats", "response 200", "$.classUsage"),
    ("create-batch-loading-status", "batch-ingestion.json POST /batches", "response 201", "$.status"),
    (
        "integer-source-version",
        "schema-registry.json GET /{CONTAINER_ID}/descriptors",
        "response 200",
        "$.xdm:descriptorIdentity[*].xdm:sourceVersion",
    ),
    (
        "integer-source-version",
        "schema-registry.json POST /tenant/descriptors",
        "request",
        "$.xdm:sourceVersion",
    ),
    (
        "integer-source-version",
        "schema-registry.json POST /tenant/descriptors",
        "response 201",
        "$.xdm:sourceVersion",
    ),
    ("lower-case-json-format", "batch-ingestion.json POST /batches", "request", "$.inputFormat.format"),
    (
        "null-page-next",
        "schema-registry.json GET /{CONTAINER_ID}/fieldgroups",
        "response 200",
        "$._page.next",
    ),
    ("null-page-next", "schema-registry.json GET /{CONTAINER_ID}/schemas", "response 200", "$._page.next"),
    (
        "octet-stream-patch",
        "batch-ingestion.json PATCH /batches/{batchId}/datasets/{datasetId}/files/{filePath}",
        "request",
        "content-type",
    ),
    ("oneOf-overlap", "segmentation.json GET /audiences", "response 200", "$.children[*]"),
    ("request-data-source-param", "catalog.json POST /dataSets", "request", "query.requestDataSource"),
    ("row-error-file-content", "data-access.json GET /batches/{batchId}/meta", "response 200", "body"),
}


@pytest.fixture(scope="session")
def oracle() -> SpecOracle:
    folder = specs_dir(ROOT)
    if not folder.is_dir():
        reason = (
            f"Adobe's specs are not at {folder} (../shared/adobe-specs from the repository root; "
            f"ADOBE_SPECS_DIR overrides)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the conformance check", pytrace=False)
        pytest.skip(reason)
    return SpecOracle(folder)


def _params(params: Any) -> tuple[tuple[str, str], ...]:
    """Query parameters as ``requests``/``aiohttp`` put them on the wire."""
    out: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                out.append((name, str(item)))
    return tuple(out)


def _header_names(kwargs: dict[str, Any]) -> frozenset[str]:
    return frozenset(k.lower() for k in (kwargs.get("headers") or {}))


def _request_side(kwargs: dict[str, Any]) -> tuple[str | None, Any]:
    headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
    data = kwargs.get("data")
    if kwargs.get("json") is not None:
        return headers.get("content-type", "application/json"), kwargs["json"]
    if isinstance(data, dict):
        return headers.get("content-type", "application/x-www-form-urlencoded"), dict(data)
    if data is not None:
        return headers.get("content-type"), "<file>"
    return headers.get("content-type"), None


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    """Every HTTP exchange the hooks make during the test (sync and async paths)."""
    calls: list[Recorded] = []
    send, asend = AdobePlatformHook._send, AdobePlatformHook._asend

    def recording_send(hook: AdobePlatformHook, method: str, url: str, **kwargs: Any):
        content_type, body = _request_side(kwargs)
        response = send(hook, method, url, **kwargs)
        calls.append(
            Recorded(
                method,
                url,
                _params(kwargs.get("params")),
                content_type,
                body,
                response.status_code,
                response.headers.get("Content-Type"),
                response.text,
                _header_names(kwargs),
            )
        )
        return response

    async def recording_asend(hook: AdobePlatformHook, method: str, url: str, **kwargs: Any):
        content_type, body = _request_side(kwargs)
        status, text, headers = await asend(hook, method, url, **kwargs)
        calls.append(
            Recorded(
                method,
                url,
                _params(kwargs.get("params")),
                content_type,
                body,
                status,
                headers.get("Content-Type"),
                text,
                _header_names(kwargs),
                "aiohttp",
            )
        )
        return status, text, headers

    monkeypatch.setattr(AdobePlatformHook, "_send", recording_send)
    monkeypatch.setattr(AdobePlatformHook, "_asend", recording_asend)
    return calls


def _jsonl(path: Path, n: int, extra: dict | None = None) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "_id": f"id-{i}",
                    "personID": f"p{i}@example.com",
                    "_demoemea": {
                        "audienceMembershipIds": "a",
                        "audienceMembershipNames": "A",
                        **(extra or {}),
                    },
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    return path


def _drive_pipeline(emu: Any, adobe_conn: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The calls the refresh pipeline makes (operators, triggers, CJA check), through the hooks."""
    audiences = emu.admin.state()["audiences"]
    cja_state = emu.admin.state()["cja"]
    clear_token_cache()  # the IMS token call is recorded too

    # Schema Registry: tenant, field group, schema, identity descriptor, the union schema.
    registry = SchemaRegistryHook()
    tenant = registry.get_tenant_id()
    group, _ = registry.ensure_field_group(
        xdm.profile_field_group("Conformance group", tenant, OutputFields()), tenant
    )
    registry.ensure_field_group(xdm.profile_field_group("Conformance group", tenant, OutputFields()), tenant)
    schema, _ = registry.ensure_schema(xdm.schema_body("Conformance schema", PROFILE_CLASS, [group.id]))
    registry.ensure_schema(xdm.schema_body("Conformance schema", PROFILE_CLASS, [group.id]))
    registry.ensure_identity_descriptor(schema.id, "/personID", "Email")
    registry.ensure_identity_descriptor(schema.id, "/personID", "Email")
    union = registry.get_profile_union_schema()

    # Catalog: the export dataset and the CJA profile dataset.
    catalog = CatalogHook()
    export_ds, _ = catalog.ensure_dataset("Conformance export", schema_id=PROFILE_UNION_ALT_ID)
    catalog.ensure_dataset("Conformance export", schema_id=PROFILE_UNION_ALT_ID)
    profile_ds, _ = catalog.ensure_dataset("Conformance profiles", schema_id=schema.id)
    catalog.get_dataset(profile_ds.id)

    # Segmentation: audiences by id and by name, a 404, export jobs (one succeeds, one fails, one cancelled).
    segmentation = SegmentationHook()
    resolved = segmentation.resolve_selection(
        [AudienceSelector(id=audiences[0]["id"]), AudienceSelector(name=audiences[1]["name"])]
    )
    with pytest.raises(AepNotFoundError):
        segmentation.get_audience("00000000-0000-0000-0000-000000000000")
    fields = ("_demoemea.identification.core.email",)
    segmentation.require_export_fields(union, fields)
    request = ExportJobRequest(
        dataset_id=export_ds.id, segment_ids=tuple(a.id for a in resolved.resolved), fields=fields
    )
    since = int(time.time() * 1000) - 60_000
    before = segmentation.export_job_ids(request, created_after_ms=since)
    job = segmentation.create_export_job(request, created_after_ms=since, exclude=before)
    done = poll(
        lambda: (j := segmentation.get_export_job(job.id)).is_terminal and j, timeout=30, what="export job"
    )
    assert done.status == "SUCCEEDED", done
    emu.admin.knobs(export_job_failures=1)
    failing = segmentation.create_export_job(request, created_after_ms=since, exclude={job.id} | before)
    poll(lambda: segmentation.get_export_job(failing.id).is_terminal, timeout=30, what="failing export job")
    cancelled = segmentation.create_export_job(
        request, created_after_ms=since, exclude={job.id, failing.id} | before
    )
    segmentation.cancel_export_job(cancelled.id)

    # Catalog: the export batch; Batch Ingestion: small and large uploads, complete, revert, abort.
    ingestion = BatchIngestionHook()
    ingestion.get_batch(done.destination.batch_id)
    ingestion.list_batches(export_ds.id, status="success")
    batch = ingestion.create_batch(profile_ds.id, external_id="conformance:1")
    ingestion.upload_file(batch.id, profile_ds.id, "part-00001.json", _jsonl(tmp_path / "a.json", 20))
    ingestion.upload_file(
        batch.id,
        profile_ds.id,
        "nested/part-00002.json",
        _jsonl(tmp_path / "b.json", 40),
        chunk_size=2048,
        small_file_limit=1024,
    )
    ingestion.complete_batch(batch.id)
    assert poll(
        lambda: (b := ingestion.get_batch(batch.id)).is_terminal and b, timeout=30, what="batch"
    ).is_success
    ingestion.find_batch(profile_ds.id, external_id="conformance:1", statuses=("success",))
    ingestion.revert_batch(batch.id)
    aborted = ingestion.create_batch(profile_ds.id, external_id="conformance:2")
    ingestion.abort_batch(aborted.id)
    bad = ingestion.create_batch(profile_ds.id, external_id="conformance:3")
    ingestion.upload_file(bad.id, profile_ds.id, "bad.json", _jsonl(tmp_path / "bad.json", 3, {"bogus": 1}))
    ingestion.complete_batch(bad.id)
    assert poll(
        lambda: (b := ingestion.get_batch(bad.id)).is_terminal and b, timeout=30, what="batch"
    ).is_failed
    ingestion.get_row_errors(bad.id)

    # The triggers' async calls (a job to cancel and a batch to abort made first, synchronously).
    late = segmentation.create_export_job(
        request, created_after_ms=since, exclude={job.id, failing.id, cancelled.id} | before
    )
    again = ingestion.create_batch(profile_ds.id, external_id="conformance:4")

    async def triggers() -> None:
        hook, seg = BatchIngestionHook(), SegmentationHook()
        async with hook.async_session():
            await hook.aget_batch(batch.id)
            await hook.abatch_action(again.id, "ABORT")
        async with seg.async_session():
            await seg.aget_export_job(job.id)
            await seg.acancel_export_job(late.id)

    asyncio.run(triggers())

    # Query Service: the REST connection parameters (a connection without host extras asks for them).
    extra = {k: v for k, v in adobe_conn["extra"].items() if not k.startswith("query_service_")}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "extra": extra}))
    assert QueryServiceHook()._endpoint[0]

    # CJA: the connection, the data view and its dimensions.
    connection_id, view_id = cja_state["connections"][0]["id"], cja_state["dataViews"][0]["id"]
    emu.admin.add_dataset_to_connection(connection_id, profile_ds.id, type="profile", visitorId="personID")
    CjaHook().check_setup(
        connection_id=connection_id,
        data_view_id=view_id,
        datasets={"profile": profile_ds.id},
        dimension_paths=[f"_{tenant}.audienceMembershipNames"],
    )


def _report(findings: list[Finding]) -> None:
    for finding in sorted(findings, key=lambda f: f.key):
        print(finding)
    met = {f.doubt for f in findings if f.doubt}
    for name, (source, why) in sorted(DEFECTS.items()):
        print(f"defect {name} [{source}]{'' if name in met else ' (not met by these calls)'}: {why}")


def test_known_doubts_name_documented_defects() -> None:
    assert {key[0] for key in KNOWN_DOUBTS} <= set(DEFECTS)


def test_pipeline_calls_conform_to_adobe_specs(
    oracle: SpecOracle,
    recorded: list[Recorded],
    emu,
    adobe_conn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _drive_pipeline(emu, adobe_conn, tmp_path, monkeypatch)
    operations = {
        f"{c.method} {oracle.operation(c.method, c.path).name}"
        if oracle.operation(c.method, c.path)
        else f"{c.method} {c.path} (no operation)"
        for c in recorded
    }
    assert {c.transport for c in recorded} == {"requests", "aiohttp"}, "both HTTP paths must be exercised"
    findings = [f for call in recorded for f in oracle.check(call)]
    print(f"\n{len(recorded)} calls, {len(operations)} operations, {len(findings)} findings")
    print("operations:\n  " + "\n  ".join(sorted(operations)))
    _report(findings)
    failures = sorted({str(f) for f in findings if f.doubt is None})
    assert not failures, "calls that contradict Adobe's specs:\n  " + "\n  ".join(failures)
    doubts = {f.key for f in findings if f.doubt}
    assert doubts == KNOWN_DOUBTS, (
        f"doubts changed: new {sorted(doubts - KNOWN_DOUBTS)}, gone {sorted(KNOWN_DOUBTS - doubts)}"
    )


# ---------------------------------------------------------------------------------------------------
# The oracle itself must be able to fail: exchanges that contradict the specs, built by hand.


def _call(
    method: str,
    path: str,
    *,
    status: int = 200,
    response: Any = None,
    body: Any = None,
    params: tuple[tuple[str, str], ...] = (),
    content_type: str | None = None,
) -> Recorded:
    return Recorded(
        method,
        f"https://platform.adobe.io{path}",
        params,
        content_type,
        body,
        status,
        "application/json",
        json.dumps(response) if response is not None else "",
        PLATFORM_HEADERS,
    )


PLATFORM_HEADERS = frozenset({"authorization", "x-api-key", "x-gw-ims-org-id", "x-sandbox-name", "accept"})


def _verdicts(oracle: SpecOracle, call: Recorded) -> set[tuple[str | None, str]]:
    return {(f.doubt, f.where) for f in oracle.check(call)}


DATASET = "5c8c3c555033b814b69f947f"


def test_oracle_fails_a_string_data_source_id(oracle: SpecOracle) -> None:
    good = {DATASET: {"name": "x", "dataSourceId": 12345}}
    bad = {DATASET: {"name": "x", "dataSourceId": "12345"}}
    assert (
        _verdicts(oracle, _call("GET", f"/data/foundation/catalog/dataSets/{DATASET}", response=good))
        == set()
    )
    assert _verdicts(oracle, _call("GET", f"/data/foundation/catalog/dataSets/{DATASET}", response=bad)) == {
        (None, "$.{id}.dataSourceId")
    }


def test_oracle_fails_a_null_call_stack_and_an_undeclared_status(oracle: SpecOracle) -> None:
    job = {"id": 24115, "status": "FAILED", "errors": [{"code": "0100000003", "msg": "x", "callStack": None}]}
    assert _verdicts(oracle, _call("GET", "/data/core/ups/export/jobs/24115", response=job)) == {
        (None, "$.errors[*].callStack")
    }
    assert _verdicts(oracle, _call("GET", "/data/core/ups/export/jobs/24115", status=202, response={})) == {
        (None, "status")
    }


def test_oracle_tells_the_documented_defect_from_a_real_mismatch(oracle: SpecOracle) -> None:
    def create(fmt: str) -> Recorded:
        return _call(
            "POST",
            "/data/foundation/import/batches",
            status=201,
            content_type="application/json",
            body={"datasetId": DATASET, "inputFormat": {"format": fmt}},
            response={"id": "b1"},
        )

    assert _verdicts(oracle, create("JSON")) == set()
    assert _verdicts(oracle, create("json")) == {("lower-case-json-format", "$.inputFormat.format")}
    assert _verdicts(oracle, create("xml")) == {(None, "$.inputFormat.format")}


def test_oracle_checks_query_parameters_and_paths(oracle: SpecOracle) -> None:
    assert (
        _verdicts(
            oracle,
            _call(
                "GET",
                "/data/foundation/catalog/dataSets",
                response={},
                params=(("limit", "10"), ("start", "0")),
            ),
        )
        == set()
    )
    assert _verdicts(
        oracle, _call("GET", "/data/foundation/catalog/dataSets", response={}, params=(("limit", "ten"),))
    ) == {(None, "query.limit")}
    assert _verdicts(
        oracle, _call("GET", "/data/foundation/catalog/dataSets", response={}, params=(("pageSize", "10"),))
    ) == {(None, "query.pageSize")}
    assert _verdicts(oracle, _call("GET", "/data/foundation/catalog/dataSetFiles", response={})) == {
        (None, "path")
    }


def test_oracle_checks_required_headers(oracle: SpecOracle) -> None:
    platform = PLATFORM_HEADERS
    call = _call("GET", "/data/core/ups/audiences/a1", response={"id": "a1"})
    assert _verdicts(oracle, Recorded(**{**call.__dict__, "header_names": platform})) == set()
    assert _verdicts(
        oracle, Recorded(**{**call.__dict__, "header_names": platform - {"x-sandbox-name"}})
    ) == {(None, "header.x-sandbox-name")}


def test_specs_folder_is_found_from_the_repository_root() -> None:
    assert (
        specs_dir(Path("/somewhere/repo")) == Path("/somewhere/shared/adobe-specs")
        or "ADOBE_SPECS_DIR" in os.environ
    )
