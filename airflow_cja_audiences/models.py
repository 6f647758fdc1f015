"""Pydantic models of the Adobe API objects the pipeline reads.

Pure module (no Airflow import). Models keep unknown fields (``extra="allow"``) because Adobe adds
fields over time; only what the pipeline relies on is typed. Timestamps stay as Adobe sends them
(epoch milliseconds) with helpers where needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

PQS_TABLE_TAG = "adobe/pqs/table"
PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_UNION_SCHEMA = "https://ns.adobe.com/xdm/context/profile__union"
PROFILE_UNION_ALT_ID = "_xdm.context.profile__union"


class AdobeModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------- connection settings


class AdobeConnectionSettings(BaseModel):
    """Everything a hook needs from the Airflow connection (validated; the secret never printed)."""

    model_config = ConfigDict(frozen=True)

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    org_id: str = Field(min_length=1)
    sandbox: str = "prod"
    scopes: str = "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext"
    ims_url: str = "https://ims-na1.adobelogin.com"
    platform_url: str = "https://platform.adobe.io"
    cja_url: str = "https://cja.adobe.io"
    # Base of the AEP UI links on task pages (the emulator serves the same paths under /emulator/ui).
    ui_url: str = "https://experience.adobe.com/#/platform"
    query_service_host: str | None = None
    query_service_port: int | None = None
    query_service_database: str | None = None
    ca_bundle: str | None = None
    # Per request: connect/read timeout (seconds; the whole exchange on the async path).
    timeout: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    # Per call: wall-clock bound on everything one call does (token fetch, retries, waits, body read).
    call_deadline: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    # Largest answer read into memory; a larger one fails the call instead of growing the process.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # Longest list a list call reads (pages); a list that never ends fails with a clear error.
    max_pages: int = Field(default=1000, ge=1)

    @field_validator("ims_url", "platform_url", "cja_url", "ui_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith("https://"):
            raise ValueError(f"{value!r} must be an https:// URL (TLS is never turned off)")
        return value

    @field_validator("org_id")
    @classmethod
    def _org(cls, value: str) -> str:
        if not value.endswith("@AdobeOrg"):
            raise ValueError(f"IMS org id {value!r} must end with '@AdobeOrg'")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        # IMS wants a comma-separated list without spaces (the console shows ", ").
        return ",".join(s.strip() for s in value.split(",") if s.strip())

    @property
    def verify(self) -> str | bool:
        """``requests``' verify value: the CA bundle when given, else the system trust store."""
        return self.ca_bundle or True


# --------------------------------------------------------------------------------------- Catalog


class Dataset(AdobeModel):
    id: str
    name: str | None = None
    tags: dict[str, list[str]] = Field(default_factory=dict)
    schema_ref: dict[str, Any] | None = Field(default=None, alias="schemaRef")
    created: int | None = None
    updated: int | None = None

    @property
    def table_name(self) -> str | None:
        """Query Service table name (``tags["adobe/pqs/table"][0]``), not the dataset name."""
        values = self.tags.get(PQS_TABLE_TAG) or []
        return values[0] if values else None


# ------------------------------------------------------------------------ waitable object statuses

#: How a wait for an AEP object ends: it succeeded, it failed, or it was reverted/deleted meanwhile.
Outcome = Literal["success", "failed", "gone"]
S = TypeVar("S", bound="_AdobeStatus")


class _AdobeStatus(str, Enum):
    """A status value as Adobe spells it (``str(status)`` is that spelling)."""

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class StatusType(Generic[S]):
    """The statuses of one kind of AEP object that is waited for, defined once for the synchronous wait
    (:mod:`airflow_cja_audiences.waits`), the trigger and the sensor: which end the wait, and how.

    Adobe's case varies and Adobe adds values over time: a status is matched case-insensitively, and
    one not listed in ``statuses`` reads as still running (the wait goes on until its deadline).
    """

    kind: str  # "export job", "batch": used in messages
    statuses: type[S]
    success: frozenset[S]
    failed: frozenset[S]
    gone: frozenset[S] = frozenset()  # ended without being a failure of its own (reverted, deleted)

    def parse(self, raw: str | None) -> S | None:
        """The known status ``raw`` spells (any case), or None for one this package does not know."""
        text = (raw or "").strip().lower()
        return next((s for s in self.statuses if s.value.lower() == text), None)

    def outcome(self, raw: str | None) -> Outcome | None:
        """How a wait that sees status ``raw`` ends; None while the object is still running."""
        status = self.parse(raw)
        if status in self.success:
            return "success"
        if status in self.failed:
            return "failed"
        if status in self.gone:
            return "gone"
        return None

    def values(self, *statuses: S) -> frozenset[str]:
        """Adobe's spellings (lower case) of ``statuses``, for comparing with ``raw.lower()``."""
        return frozenset(s.value.lower() for s in statuses)


class ExportJobStatus(_AdobeStatus):
    """``status`` of a Segmentation export job (Segmentation API spec, ``ExportJobResponse.status``;
    https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/export-jobs)."""

    NEW = "NEW"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    # Guess: not documented for export jobs (segment jobs have CANCELLING/CANCELLED); what a job is
    # after DELETE /export/jobs/{id} is unconfirmed. Treated as a failure if it ever appears.
    CANCELLED = "CANCELLED"


class BatchStatus(_AdobeStatus):
    """``status`` of a Catalog batch (Catalog API spec's enum; lifecycle in
    https://experienceleague.adobe.com/en/docs/experience-platform/ingestion/batch-ingestion/troubleshooting).
    ``success``/``active`` and ``failed``/``failure`` are synonyms."""

    LOADING = "loading"
    LOADED = "loaded"
    QUEUED = "queued"
    STAGING = "staging"
    STAGED = "staged"
    PROCESSING = "processing"
    RETRYING = "retrying"
    SUCCESS = "success"
    ACTIVE = "active"
    FAILED = "failed"
    FAILURE = "failure"
    ABORTED = "aborted"
    ABANDONED = "abandoned"  # never completed in time
    STALLED = "stalled"  # retries exhausted
    INACTIVE = "inactive"  # reverted (or expired)
    DELETED = "deleted"  # an inactive batch, garbage-collected


class BatchQueryState(_AdobeStatus):
    """``state`` of a Query Service query (Query Service API spec, ``query.state``;
    https://experienceleague.adobe.com/en/docs/experience-platform/query/api/queries): a batch query
    (Data Distiller ``INSERT INTO``) goes SUBMITTED -> IN_PROGRESS -> SUCCESS, or ends FAILED, KILLED
    (cancelled) or TIMEOUT."""

    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    KILLED = "KILLED"
    TIMEOUT = "TIMEOUT"


EXPORT_JOB_STATUS: StatusType[ExportJobStatus] = StatusType(
    "export job",
    ExportJobStatus,
    success=frozenset({ExportJobStatus.SUCCEEDED}),
    failed=frozenset({ExportJobStatus.FAILED, ExportJobStatus.CANCELLED}),
)

BATCH_STATUS: StatusType[BatchStatus] = StatusType(
    "batch",
    BatchStatus,
    success=frozenset({BatchStatus.SUCCESS, BatchStatus.ACTIVE}),
    failed=frozenset(
        {
            BatchStatus.FAILED,
            BatchStatus.FAILURE,
            BatchStatus.ABORTED,
            BatchStatus.ABANDONED,
            BatchStatus.STALLED,
        }
    ),
    gone=frozenset({BatchStatus.INACTIVE, BatchStatus.DELETED}),
)


BATCH_QUERY_STATUS: StatusType[BatchQueryState] = StatusType(
    "batch query",
    BatchQueryState,
    success=frozenset({BatchQueryState.SUCCESS}),
    failed=frozenset({BatchQueryState.FAILED, BatchQueryState.KILLED, BatchQueryState.TIMEOUT}),
)


class WaitableModel(AdobeModel):
    """An AEP object a pipeline waits for: its ``status`` read through its :class:`StatusType` (one
    definition of which statuses end a wait, and how, for the wait, the trigger and the sensor)."""

    STATUS: ClassVar[StatusType[Any]]

    if TYPE_CHECKING:  # a field of each model (a property of BatchQuery's ``state``)

        @property
        def status(self) -> str: ...

    @property
    def outcome(self) -> Outcome | None:
        return self.STATUS.outcome(self.status)

    @property
    def is_success(self) -> bool:
        return self.outcome == "success"

    @property
    def is_failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def is_terminal(self) -> bool:
        return self.outcome is not None


class Batch(WaitableModel):
    id: str
    status: str  # a BatchStatus, or a value Adobe added since (read as still running)
    created: int | None = None
    updated: int | None = None
    completed: int | None = None
    external_id: str | None = Field(default=None, alias="externalId")
    related_objects: list[dict[str, Any]] = Field(default_factory=list, alias="relatedObjects")
    errors: list[dict[str, Any]] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    replay: dict[str, Any] | None = None
    tags: dict[str, Any] = Field(default_factory=dict)

    STATUS: ClassVar[StatusType[BatchStatus]] = BATCH_STATUS
    # Lower-case spellings, for comparing with ``status.lower()`` (derived from BATCH_STATUS).
    SUCCESS: ClassVar[frozenset[str]] = BATCH_STATUS.values(*BATCH_STATUS.success)
    FAILED: ClassVar[frozenset[str]] = BATCH_STATUS.values(*BATCH_STATUS.failed)
    GONE: ClassVar[frozenset[str]] = BATCH_STATUS.values(*BATCH_STATUS.gone)

    @property
    def dataset_id(self) -> str | None:
        for obj in self.related_objects:
            if obj.get("type") == "dataSet":
                return obj.get("id")
        return None

    @property
    def is_gone(self) -> bool:
        """Reverted (``inactive``) or garbage-collected (``deleted``)."""
        return self.outcome == "gone"

    @property
    def is_open(self) -> bool:
        """Still ``loading``: files can be uploaded, and it can be completed or aborted."""
        return BATCH_STATUS.parse(self.status) is BatchStatus.LOADING

    @property
    def failed_record_count(self) -> int:
        return int(
            self.metrics.get("failedRecordCount") or (self.model_extra or {}).get("failedRecordCount") or 0
        )

    @property
    def record_count(self) -> int:
        return int(self.metrics.get("outputRecordCount") or (self.model_extra or {}).get("recordCount") or 0)

    def error_summary(self, limit: int = 5) -> str:
        parts = []
        for err in self.errors[:limit]:
            count = f" ({err['recordCount']} records)" if err.get("recordCount") else ""
            parts.append(f"{err.get('code', '?')}: {err.get('description') or err.get('message', '')}{count}")
        return "; ".join(parts) or "no error details"


# ---------------------------------------------------------------------------------- Segmentation


class Audience(AdobeModel):
    id: str
    audience_id: str | None = Field(default=None, alias="audienceId")
    name: str
    description: str | None = None
    namespace: str | None = None
    lifecycle_state: str | None = Field(default=None, alias="lifecycleState")
    merge_policy_id: str | None = Field(default=None, alias="mergePolicyId")
    update_time: int | None = Field(default=None, alias="updateTime")  # epoch ms (renames move it)


class ExportJobDestination(AdobeModel):
    # Adobe's examples spell it both ways (Experience League, "Export jobs endpoint":
    # https://experienceleague.adobe.com/en/docs/experience-platform/profile/api/export-jobs).
    dataset_id: str | None = Field(default=None, validation_alias=AliasChoices("datasetId", "dataSetId"))
    segment_per_batch: bool | None = Field(default=None, alias="segmentPerBatch")
    batch_id: str | None = Field(default=None, alias="batchId")


class ExportJob(WaitableModel):
    id: int
    status: str
    destination: ExportJobDestination = Field(default_factory=ExportJobDestination)
    filter: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    errors: list[dict[str, Any]] = Field(default_factory=list)
    creation_time: int | None = Field(default=None, alias="creationTime")
    update_time: int | None = Field(default=None, alias="updateTime")
    request_id: str | None = Field(default=None, alias="requestId")

    STATUS: ClassVar[StatusType[ExportJobStatus]] = EXPORT_JOB_STATUS

    @property
    def exported_profiles(self) -> int | None:
        value = self.metrics.get("totalExportedProfileCounter")
        return int(value) if value is not None else None

    @property
    def segment_ids(self) -> list[str]:
        return [s.get("segmentId") for s in self.filter.get("segments", []) if s.get("segmentId")]

    def error_summary(self) -> str:
        return (
            "; ".join(f"{e.get('code', '?')}: {e.get('msg') or e.get('message', '')}" for e in self.errors)
            or "no error details"
        )


# ------------------------------------------------------------------------------- Schema Registry


class XdmResource(AdobeModel):
    """A schema, field group or class as listed or returned by Schema Registry."""

    id: str = Field(alias="$id")
    alt_id: str | None = Field(default=None, alias="meta:altId")
    title: str | None = None
    version: str | None = None


class IdentityDescriptor(AdobeModel):
    id: str | None = Field(default=None, alias="@id")
    type: str = Field(alias="@type")
    source_schema: str = Field(alias="xdm:sourceSchema")
    source_property: str = Field(alias="xdm:sourceProperty")
    namespace: str | None = Field(default=None, alias="xdm:namespace")
    is_primary: bool | None = Field(default=None, alias="xdm:isPrimary")


# ------------------------------------------------------------------------------------------- CJA


class CjaConnectionDataset(AdobeModel):
    id: str = Field(validation_alias=AliasChoices("dataSetId", "id"))
    type: str | None = None
    name: str | None = None
    visitor_id: str | None = Field(default=None, alias="visitorId")
    identity_namespace: str | None = Field(default=None, alias="identityNamespace")


class CjaConnection(AdobeModel):
    id: str
    name: str | None = None
    datasets: list[CjaConnectionDataset] = Field(default_factory=list, alias="dataSets")


class CjaDataView(AdobeModel):
    id: str
    name: str | None = None
    parent_data_group_id: str | None = Field(default=None, alias="parentDataGroupId")


class CjaComponent(AdobeModel):
    id: str
    name: str | None = None
    schema_path: str | None = Field(default=None, alias="schemaPath")
    dataset_type: str | None = Field(default=None, alias="datasetType")


# ------------------------------------------------------------------------------ request bodies


class ExportJobRequest(BaseModel):
    """Body of ``POST /data/core/ups/export/jobs``: one filter entry per audience.

    (Adobe's recipe repeats ``segmentId`` keys inside one object; JSON keeps only the last, so
    only one audience would be exported.)
    """

    model_config = ConfigDict(frozen=True)

    dataset_id: str
    segment_ids: tuple[str, ...] = Field(min_length=1)
    statuses: tuple[Literal["realized", "existing", "exited"], ...] = ("realized", "existing")
    fields: tuple[str, ...] = ()
    merge_policy_id: str | None = None
    qualification_start: str | None = None  # RFC 3339, with qualification_end
    qualification_end: str | None = None

    def to_body(self) -> dict[str, Any]:
        segment_filter: dict[str, Any] = {
            "segments": [
                {"segmentId": sid, "segmentNs": "ups", "status": list(self.statuses)}
                for sid in self.segment_ids
            ]
        }
        if self.qualification_start or self.qualification_end:
            segment_filter["segmentQualificationTime"] = {
                "startTime": self.qualification_start,
                "endTime": self.qualification_end,
            }
        body: dict[str, Any] = {
            "filter": segment_filter,
            "destination": {"datasetId": self.dataset_id, "segmentPerBatch": False},
            "schema": {"name": "_xdm.context.profile"},
        }
        if self.fields:
            body["fields"] = ",".join(self.fields)
        if self.merge_policy_id:
            body["mergePolicy"] = {"id": self.merge_policy_id}
        return body

    def matches(self, job: ExportJob) -> bool:
        """Whether an existing job was created from this request (used to re-attach on retry)."""
        return (
            job.destination.dataset_id == self.dataset_id
            and sorted(job.segment_ids) == sorted(self.segment_ids)
            and (job.filter.get("segmentQualificationTime") or {}).get("startTime")
            == self.qualification_start
        )
