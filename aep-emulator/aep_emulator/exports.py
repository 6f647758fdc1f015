"""Segmentation export jobs: request validation, the export SQL, and the job's lifecycle fields.

An export at time T (the emulator clock when the job is created) writes one row per profile that has
at least one membership of the filter's segments with a status in that segment's list (and, with
``segmentQualificationTime``, a lastQualificationTime in [startTime, endTime)); each row carries
**all** of the profile's memberships at T. Fields not named in ``fields`` are NULL.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aep_emulator import synthetic
from aep_emulator.clock import parse_instant
from aep_emulator.errors import NotModelled, ServiceError
from aep_emulator.memberships import STATUSES, Timeline

NEW, PROCESSING, SUCCEEDED, FAILED = "NEW", "PROCESSING", "SUCCEEDED", "FAILED"
SYSTEM_COLUMNS = ("_acp_batchid", "_acp_system_metadata")


def invalid(field_name: str, detail: str) -> ServiceError:
    # Guess: Segmentation's validation code number; the shape (problem details naming the field)
    # follows the Platform convention.
    return ServiceError(
        400, "UPS-1002-400", "Bad request", f"{field_name}: {detail}", extra={"field": field_name}
    )


@dataclass
class ExportRequest:
    """A validated export job request."""

    dataset_id: str
    fields: list[str] | None  # None = all fields
    segments: list[dict]  # [{segmentId, segmentNs, status: [...]}]
    qualification_start: int | None
    qualification_end: int | None
    merge_policy: dict
    echo: dict  # the request as the job shows it (defaults filled in)
    # Paths of ``fields`` the profile union schema lacks: the job is created and SUCCEEDS, and its
    # batch fails (https://experienceleague.adobe.com/en/docs/analytics-platform/using/cja-usecases/data-ingestion/ingest-aep-segments).
    unknown_fields: list[str] = field(default_factory=list)


def _time(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise invalid(where, "must be an RFC 3339 date-time string")
    try:
        return int(parse_instant(value).timestamp())
    except ValueError:
        raise invalid(where, f"{value!r} is not an RFC 3339 date-time") from None


def validate_request(
    body: Any, *, audience_ids: set[str], dataset_kind: Any, tree: synthetic.FieldTree, merge_policy_id: str
) -> ExportRequest:
    """Check an export job body. ``dataset_kind(id)`` returns None (unknown), or whether it is union-based."""
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    schema = body.get("schema")
    if not isinstance(schema, dict) or not schema.get("name"):
        raise invalid("schema.name", "is required (use _xdm.context.profile)")
    if schema["name"] != "_xdm.context.profile":
        raise invalid("schema.name", f"only _xdm.context.profile is supported, got {schema['name']!r}")
    destination = body.get("destination")
    if not isinstance(destination, dict):
        raise invalid("destination", "is required with a datasetId")
    dataset_id = destination.get("datasetId", destination.get("dataSetId"))
    if not isinstance(dataset_id, str) or not dataset_id:
        raise invalid("destination.datasetId", "is required")
    kind = dataset_kind(dataset_id)
    if kind is None:
        raise invalid("destination.datasetId", f"dataset {dataset_id} does not exist in this sandbox")
    if kind is False:
        raise invalid(
            "destination.datasetId",
            f"dataset {dataset_id} is not based on the profile union schema (_xdm.context.profile__union)",
        )
    if destination.get("segmentPerBatch"):
        raise NotModelled("export jobs with destination.segmentPerBatch=true")
    if "additionalFields" in body:
        raise NotModelled("export jobs with additionalFields (ExperienceEvents)")
    if (body.get("evaluationInfo") or {}).get("segmentation"):
        raise NotModelled("export jobs with evaluationInfo.segmentation=true")

    fields = None
    unknown_fields: list[str] = []
    if body.get("fields") is not None:
        if not isinstance(body["fields"], str):
            raise invalid("fields", "must be a comma-separated string of field paths")
        fields = []
        for path in (f.strip() for f in body["fields"].split(",")):
            if not path:
                continue
            if (
                path != "segmentMembership"
                and not path.startswith("segmentMembership.")
                and not synthetic.resolve_field_path(tree, path)
            ):
                unknown_fields.append(path)  # not a 400: the job's batch fails (see ExportRequest)
            else:
                fields.append(path)

    filt = body.get("filter") or {}
    if not isinstance(filt, dict):
        raise invalid("filter", "must be an object")
    if "fromIngestTimestamp" in filt:
        raise NotModelled("export filter fromIngestTimestamp (synthetic profiles have no ingest time)")
    segments = []
    raw_segments = filt.get("segments")
    if raw_segments is not None:
        if not isinstance(raw_segments, list) or not raw_segments:
            raise invalid("filter.segments", "must be a non-empty array of {segmentId, segmentNs, status}")
        for i, seg in enumerate(raw_segments):
            where = f"filter.segments[{i}]"
            if not isinstance(seg, dict) or not isinstance(seg.get("segmentId"), str):
                raise invalid(f"{where}.segmentId", "is required")
            if seg["segmentId"] not in audience_ids:
                raise invalid(f"{where}.segmentId", f"segment {seg['segmentId']} does not exist")
            ns = seg.get("segmentNs", "ups")
            if ns != "ups":
                raise invalid(f"{where}.segmentNs", f"only 'ups' segments are modelled, got {ns!r}")
            statuses = seg.get("status", ["realized", "existing"])
            if not isinstance(statuses, list) or not statuses or any(s not in STATUSES for s in statuses):
                raise invalid(
                    f"{where}.status", f"must be a non-empty subset of {list(STATUSES)}, got {statuses!r}"
                )
            segments.append({"segmentId": seg["segmentId"], "segmentNs": "ups", "status": list(statuses)})
    start = end = None
    sqt = filt.get("segmentQualificationTime")
    if sqt is not None:
        if not isinstance(sqt, dict):
            raise invalid("filter.segmentQualificationTime", "must be {startTime, endTime}")
        if "startTime" in sqt:
            start = _time(sqt["startTime"], "filter.segmentQualificationTime.startTime")
        if "endTime" in sqt:
            end = _time(sqt["endTime"], "filter.segmentQualificationTime.endTime")
        if start is not None and end is not None and start > end:
            raise invalid("filter.segmentQualificationTime", "startTime is after endTime")
    merge = body.get("mergePolicy") or {"id": merge_policy_id, "version": 1}
    if not isinstance(merge, dict) or merge.get("id") != merge_policy_id:
        raise invalid(
            "mergePolicy.id",
            f"merge policy {merge.get('id') if isinstance(merge, dict) else merge!r} does not exist",
        )
    echo_filter = dict(filt)
    if segments:
        echo_filter["segments"] = segments
    echo = {
        "fields": body.get("fields"),
        "schema": {"name": schema["name"]},
        "mergePolicy": {"id": merge_policy_id, "version": merge.get("version", 1)},
        "filter": echo_filter,
    }
    if echo["fields"] is None:
        del echo["fields"]
    return ExportRequest(
        dataset_id=dataset_id,
        fields=fields,
        segments=segments,
        qualification_start=start,
        qualification_end=end,
        merge_policy=echo["mergePolicy"],
        echo=echo,
        unknown_fields=unknown_fields,
    )


def export_sql(
    timeline: Timeline,
    seed: int,
    tenant: str,
    at: int,
    request: ExportRequest,
    batch_id: str,
    physical_batch_id: str | None = None,
) -> str:
    """SELECT producing the export's rows in the dataset table's columns (system columns included).

    ``batch_id`` is the logical batch (the job's ``destination.batchId``, the Catalog batch): rows carry
    it as ``_acp_system_metadata.acp_sourceBatchId``. ``_acp_batchid`` is the physical data-lake batch,
    ``physical_batch_id`` (default: the same id). Adobe documents that the two need not match; that
    ``commitBatchId`` is the physical one is a guess."""
    tree = synthetic.profile_field_tree(tenant)
    if request.segments:
        predicate = " OR ".join(
            timeline.condition(
                s["segmentId"], s["status"], request.qualification_start, request.qualification_end
            )
            for s in request.segments
        )
    elif request.qualification_start is not None or request.qualification_end is not None:
        predicate = (
            " OR ".join(
                timeline.condition(
                    a.id, list(STATUSES), request.qualification_start, request.qualification_end
                )
                for a in timeline.audiences
            )
            or "false"
        )
    else:
        predicate = "true"
    attributes = ", ".join(
        f"{expr} AS {name}" for name, expr in synthetic.profile_attribute_columns(seed).items()
    )
    columns = ", ".join(
        f'{synthetic.select_expression(node, name, request.fields)} AS "{name}"'
        for name, node in tree.items()
    )
    quoted = batch_id.replace("'", "''")
    physical = (physical_batch_id or batch_id).replace("'", "''")
    return (
        f"{timeline.chain(at)} SELECT {columns}, "
        f"{timeline.segment_membership()}::{synthetic.SEGMENT_MEMBERSHIP_TYPE} AS segmentMembership, "
        f"'{physical}' AS _acp_batchid, "
        f"{{'acp_sourceBatchId': '{quoted}', 'commitBatchId': '{physical}', 'ingestTime': {at * 1000}}}"
        f"::{synthetic.SYSTEM_METADATA_TYPE} AS _acp_system_metadata "
        f"FROM (SELECT status.*, {attributes} FROM status WHERE {predicate})"
    )


def table_ddl(tenant: str) -> str:
    """Column list of an export (profile union) dataset table."""
    tree = synthetic.profile_field_tree(tenant)
    cols = [
        f'"{name}" {node.sql_type if isinstance(node, synthetic.Leaf) else synthetic.sql_type(node)}'
        for name, node in tree.items()
    ]
    cols += [
        f'"segmentMembership" {synthetic.SEGMENT_MEMBERSHIP_TYPE}',
        '"_acp_batchid" VARCHAR',
        f'"_acp_system_metadata" {synthetic.SYSTEM_METADATA_TYPE}',
    ]
    return ", ".join(cols)


@dataclass
class ExportJob:
    id: int
    sandbox: str
    request: ExportRequest
    at: int  # epoch seconds (emulator clock) the export reflects
    created_ms: int
    updated_ms: int
    processing_at: float  # monotonic
    done_at: float  # monotonic
    batch_id: str  # logical: destination.batchId, the Catalog batch, the rows' acp_sourceBatchId
    request_id: str
    physical_batch_id: str | None = None  # the rows' _acp_batchid when it differs (distinct_batch_ids)
    failure_mode: str | None = None  # None | "job" | "batch"
    status: str = NEW
    batch_created: bool = False
    work: Future | None = None  # computes the rows into a staging table
    exported: int | None = None
    errors: list[dict] = field(default_factory=list)
    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in (SUCCEEDED, FAILED)

    def to_json(self, org_id: str, sandbox: dict) -> dict:
        destination: dict[str, Any] = {"datasetId": self.request.dataset_id, "segmentPerBatch": False}
        if self.batch_created:
            destination["batchId"] = self.batch_id
        elif self.status == FAILED:
            destination["batchId"] = ""
        body: dict[str, Any] = {
            "id": self.id,
            "jobType": "BATCH",
            "status": self.status,
            "profileInstanceId": "ups",
            "destination": destination,
            "imsOrgId": org_id,
            "sandbox": sandbox,
            "creationTime": self.created_ms,
            "updateTime": self.updated_ms,
            "requestId": self.request_id,
            **self.request.echo,
        }
        metrics: dict[str, Any] = {}
        if self.start_ms is not None:
            end = self.end_ms or self.updated_ms
            metrics["totalTime"] = {
                "startTimeInMs": self.start_ms,
                "endTimeInMs": end,
                "totalTimeInMs": end - self.start_ms,
            }
        if self.exported is not None:
            metrics["totalExportedProfileCounter"] = self.exported
            metrics["exportedProfileByNamespaceCounter"] = {"Email": self.exported}
        if metrics:
            body["metrics"] = metrics
        if self.errors:
            body["errors"] = list(self.errors)
        return body


def progress_times(now_mono: float, seconds: float) -> tuple[float, float]:
    """(processing_at, done_at): NEW for the first quarter of the duration, then PROCESSING."""
    seconds = max(0.0, seconds)
    return now_mono + seconds / 4.0, now_mono + seconds
