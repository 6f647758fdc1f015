"""Segmentation Service (https://developer.adobe.com/experience-platform-apis/references/segmentation/) under ``/data/core/ups``: audiences, segment
definitions, export jobs."""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlencode

from starlette.responses import Response

from aep_emulator import exports, lifecycle, synthetic, xdm
from aep_emulator.errors import ServiceError
from aep_emulator.filters import FilterError, apply_property_filters, sort_items
from aep_emulator.memberships import DAY
from aep_emulator.rest.common import Body, Call, Endpoint, ok
from aep_emulator.rest.errors import HttpError
from aep_emulator.settings import AudienceSpec

log = logging.getLogger("aep_emulator.segmentation")
PREFIX = "/data/core/ups"


def error(status: int, number: int, detail: str, title: str = "Bad request") -> ServiceError:
    # Guess: Segmentation's problem-details code numbers are not in the sources read.
    return ServiceError(status, f"UPS-{number}-{status}", title, detail)


def audience_json(call: Call, aud: AudienceSpec) -> dict:
    """An audience as ``GET /audiences`` shows it (also the segment definition's fields)."""
    sandbox, settings = call.sandbox, call.state.settings
    created_ms = (call.state.timeline.anchor - 200 * DAY) * 1000
    updated_ms = call.state.audience_updated_ms(aud.id) or created_ms
    # The emulator's memberships are synthetic timelines, not evaluated rules; the PQL says so.
    pql = f'_{settings.tenant}.emulator.syntheticAudience = "{aud.id}"'
    return {
        "id": aud.id,
        "audienceId": aud.id,
        "name": aud.name,
        "description": aud.description,
        "namespace": "AEPSegments",
        "imsOrgId": settings.org_id,
        "sandbox": sandbox.info(),
        "isSystem": False,
        "type": "SegmentDefinition",
        "originName": "REAL_TIME_CUSTOMER_PROFILE",
        "lifecycleState": "published",
        "profileInstanceId": "ups",
        "schema": {"name": "_xdm.context.profile"},
        "expression": {"type": "PQL", "format": "pql/text", "value": pql},
        "mergePolicyId": sandbox.merge_policy_id,
        "evaluationInfo": {
            "batch": {"enabled": True},
            "continuous": {"enabled": False},
            "synchronous": {"enabled": False},
        },
        "dataGovernancePolicy": {"excludeOptOut": True},
        "definedOn": [{"meta:resourceType": "unions", "meta:containerId": "tenant", "$ref": xdm.UNION_ID}],
        "labels": [],
        "dependents": [],
        "dependencies": [],
        "ttlInDays": 30,
        "creationTime": created_ms,
        "updateTime": updated_ms,
        "createEpoch": created_ms // 1000,
        "updateEpoch": updated_ms // 1000,
        "_etag": '"' + hashlib.sha1(f"{aud.id}{aud.name}".encode()).hexdigest()[:16] + '"',
    }


def audience_not_found(call: Call, audience_id: str) -> HttpError:
    """``GET /audiences/{id}`` of an unknown *or deleted* audience: the spec's own 404 example
    (segmentation.json, "Audience not found"). AEP answers a deleted audience exactly like one that
    never existed (DELETE 204, then GET 404), so a client cannot tell them apart from this answer alone
    (https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/audiences)."""
    message = f"The audience entity {audience_id} is not found. Use a valid entity and try again."
    return HttpError(
        404,
        {
            "requestId": call.request_id,
            "errors": {"404": [{"code": 404, "message": message}]},
            "type": "https://ns.adobe.com/aep/errors/UPAPI-113430-404",
            "title": message,
            "status": 404,
        },
    )


def _audience(call: Call, audience_id: str, what: str = "Audience") -> AudienceSpec:
    # Deleted audiences are gone from every Segmentation answer (list, get, segment definition).
    aud = call.state.live_audience(audience_id)
    if aud is not None:
        return aud
    if what == "Audience":
        raise audience_not_found(call, audience_id)
    raise error(404, 1404, f"{what} {audience_id} was not found", "Not found")


def list_audiences(call: Call) -> Response:
    start = call.int_param("start", 0, service="UPS")
    limit = call.int_param("limit", 20, minimum=1, maximum=100, service="UPS")
    items = [audience_json(call, a) for a in call.state.live_audiences()]
    try:
        items = apply_property_filters(items, call.query.getlist("property"))
        for key in ("name", "description"):
            needle = call.param(key)
            if needle:  # contains, case-insensitive (documented)
                items = [a for a in items if needle.lower() in str(a[key]).lower()]
        if call.param("entityType"):
            items = [a for a in items if a["schema"]["name"] == call.param("entityType")]
        sort = call.param("sort")
        if sort:
            key, _, direction = sort.partition(":")
            items = sort_items(items, f"{direction or 'asc'}:{key}")
    except FilterError as exc:
        raise error(400, 1400, str(exc)) from None
    total = len(items)
    page = items[start : start + limit]
    body: dict = {"children": page, "_page": {"totalCount": total, "pageSize": len(page)}, "_links": {}}
    if start + limit < total:
        body["_page"]["next"] = str(start + limit)
        query = {k: v for k, v in call.query.items() if k not in ("start", "limit")}
        body["_links"]["next"] = {
            "href": "@/audiences?"
            + urlencode({**query, "start": start + limit, "limit": limit, "totalCount": total})
        }
    return ok(body)


def get_audience(call: Call) -> Response:
    return ok(audience_json(call, _audience(call, call.path_params["id"])))


def get_segment_definition(call: Call) -> Response:
    aud = _audience(call, call.path_params["id"], "Segment definition")
    full = audience_json(call, aud)
    keys = (
        "id",
        "imsOrgId",
        "sandbox",
        "name",
        "description",
        "mergePolicyId",
        "profileInstanceId",
        "schema",
        "expression",
        "evaluationInfo",
        "dataGovernancePolicy",
        "creationTime",
        "updateTime",
        "updateEpoch",
    )
    return ok({k: full[k] for k in keys})


# -- export jobs ----------------------------------------------------------------------------
def _dataset_kind(call: Call):
    def kind(dataset_id: str) -> bool | None:
        dataset = call.sandbox.catalog.datasets.get(dataset_id)
        return None if dataset is None else dataset.has_table

    return kind


def create_export_job(call: Call) -> Response:
    # A new job naming a deleted audience fails like one naming an id that never existed (400 naming
    # filter.segments[i].segmentId). Guess: Adobe's documentation does not say what AEP answers here; the
    # other plausible answer, a job that SUCCEEDS with no rows for that segment, would hide the problem.
    request = exports.validate_request(
        call.json(),
        audience_ids={a.id for a in call.state.live_audiences()},
        dataset_kind=_dataset_kind(call),
        tree=synthetic.profile_field_tree(call.state.settings.tenant),
        merge_policy_id=call.sandbox.merge_policy_id,
    )
    job = lifecycle.create_export_job(call.state, call.sandbox, request, call.request_id)
    log.info(
        "export job %s created in %s for %d segment(s) into dataset %s",
        job.id,
        call.sandbox.name,
        len(request.segments),
        request.dataset_id,
    )
    return ok(
        job.to_json(call.state.settings.org_id, call.sandbox.info()),
        200,
        {"X-Location": f"{PREFIX}/export/jobs/{job.id}"},
    )


def _job(call: Call) -> exports.ExportJob:
    raw = call.path_params["id"]
    job = call.sandbox.export_jobs.get(int(raw)) if raw.isdigit() else None
    if job is None:
        raise error(404, 1404, f"Export job {raw} was not found in sandbox {call.sandbox.name}", "Not found")
    return job


def get_export_job(call: Call) -> Response:
    return ok(_job(call).to_json(call.state.settings.org_id, call.sandbox.info()))


def list_export_jobs(call: Call) -> Response:
    limit = call.int_param("limit", 20, minimum=1, maximum=100, service="UPS")
    status = call.param("status")
    if status is not None and status not in (
        exports.NEW,
        exports.PROCESSING,
        exports.SUCCEEDED,
        exports.FAILED,
    ):
        raise error(400, 1400, f"status must be NEW, PROCESSING, SUCCEEDED or FAILED, got {status!r}")
    jobs = sorted(call.sandbox.export_jobs.values(), key=lambda j: (j.created_ms, j.id), reverse=True)
    if status:
        jobs = [j for j in jobs if j.status == status]
    offset = call.param("offset")
    if offset:
        try:
            ms, _, job_id = offset.partition("_")
            cursor = (int(ms), int(job_id))
        except ValueError:
            raise error(400, 1400, f"offset {offset!r} is not a page offset from link.next") from None
        jobs = [j for j in jobs if (j.created_ms, j.id) < cursor]
    page = jobs[:limit]
    body: dict = {
        "records": [j.to_json(call.state.settings.org_id, call.sandbox.info()) for j in page],
        "page": {"sortField": "createdTime", "sort": "desc", "pageSize": len(page)},
        "link": {},
    }
    if page:
        body["page"]["pageOffset"] = f"{page[-1].created_ms}_{page[-1].id}"
    if len(jobs) > limit:
        extra = f"&status={status}" if status else ""
        body["link"]["next"] = f"/export/jobs/?limit={limit}&offset={body['page']['pageOffset']}{extra}"
    return ok(body)


def cancel_export_job(call: Call) -> Response:
    job = _job(call)
    lifecycle.cancel_export_job(call.state, call.sandbox, job)
    return ok({"status": True, "message": "Export job has been marked for cancelling"})


ENDPOINTS = [
    Endpoint("GET", "/audiences", "segmentation.list_audiences", list_audiences),
    Endpoint("GET", "/audiences/{id}", "segmentation.get_audience", get_audience),
    Endpoint(
        "GET", "/segment/definitions/{id}", "segmentation.get_segment_definition", get_segment_definition
    ),
    Endpoint(
        "POST",
        "/export/jobs",
        "segmentation.create_export_job",
        create_export_job,
        body=Body.BYTES,
        content_types=("application/json",),
    ),
    Endpoint("GET", "/export/jobs", "segmentation.list_export_jobs", list_export_jobs),
    # link.next of the listing is documented with a trailing slash.
    Endpoint("GET", "/export/jobs/", "segmentation.list_export_jobs", list_export_jobs),
    Endpoint("GET", "/export/jobs/{id}", "segmentation.get_export_job", get_export_job),
    Endpoint("DELETE", "/export/jobs/{id}", "segmentation.cancel_export_job", cancel_export_job),
]
